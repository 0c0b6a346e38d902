"""The settings and the status of a fail-open ledger (:mod:`clear_integrations.ledger.failover`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidInput, InvalidLedgerURL
from ..validation import check_rate
from .accounts import parse_scope
from .checks import check_budget
from .model import Budget
from .urls import LedgerURL, parse_ledger_url

__all__ = ["FailOpen", "FailoverStatus"]


@dataclass(frozen=True, slots=True)
class FailOpen:
    """Fail-open settings: the ``fallback`` URL (``memory://`` or ``sqlite:///path.db``), the ``share`` in (0, 1]
    of each last-read remaining budget it may spend, ``retry_after`` seconds between probes, ``refresh`` seconds
    between budget snapshots of an account, and ``budgets`` (e.g. :func:`load_budgets`) for tenants never read
    from the primary. Checked when made: a bad value raises ``InvalidInput`` naming it."""

    fallback: str = "memory://"
    share: float = 1.0
    retry_after: float = 5.0
    refresh: float = 10.0
    budgets: Mapping[str, Budget] | None = None

    def __post_init__(self) -> None:
        self.location()
        share = check_rate("share", self.share, error=InvalidInput)
        if not 0 < share <= 1:
            raise InvalidInput("share", self.share, "must be a fraction in (0, 1]")
        object.__setattr__(self, "share", share)
        for field in ("retry_after", "refresh"):
            seconds = check_rate(field, getattr(self, field), error=InvalidInput)
            object.__setattr__(self, field, seconds)
        if self.budgets is not None:
            if not isinstance(self.budgets, Mapping):
                raise InvalidInput("budgets", self.budgets, "must be a mapping of account to Budget, or None")
            checked = {
                parse_scope(account, "budgets").name: check_budget(budget, f"budgets.{account}")
                for account, budget in self.budgets.items()
            }
            object.__setattr__(self, "budgets", checked)

    def location(self) -> LedgerURL:
        """The parsed fallback URL (a local one)."""
        try:
            location = parse_ledger_url(self.fallback)
        except InvalidLedgerURL as exc:
            raise InvalidInput("fallback", self.fallback, exc.reason) from None
        if location.kind == "redis":
            raise InvalidInput("fallback", self.fallback, "must be local: memory:// or sqlite:///path.db")
        return location


@dataclass(frozen=True, slots=True)
class FailoverStatus:
    """Where a failover ledger stands: its ``mode``, the ``active`` side, the journal's ``pending`` entries and
    their ``pending_tokens``, entries ``replayed`` by this process, when it ``failed_at``, the ``next_probe``
    time and the ``last_error``."""

    mode: Literal["closed", "open"]
    active: Literal["primary", "fallback"]
    pending: int
    pending_tokens: int
    replayed: int
    failed_at: float | None
    next_probe: float | None
    last_error: str | None
