"""Value types of the ledger: budgets, usage, reservations, balances, usage totals and audit events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidBudget, InvalidUsage
from ..validation import check_tokens
from .windows import parse_window

__all__ = ["MAX_TOKENS", "Balance", "Budget", "Event", "EventKind", "Reservation", "Usage", "UsageTotals"]

#: Largest token amount accepted in one budget, reservation or commit (keeps every store's arithmetic exact).
MAX_TOKENS = 10**12

EventKind = Literal["reserve", "commit", "release", "expire", "set_budget", "remove_budget", "reset"]


def _bounded(field: str, value: Any, *, minimum: int, error: type[InvalidBudget] | type[InvalidUsage]) -> int:
    tokens = check_tokens(field, value, minimum=minimum, error=error)
    if tokens > MAX_TOKENS:
        raise error(field, value, f"must be <= {MAX_TOKENS}")
    return tokens


@dataclass(frozen=True, slots=True)
class Budget:
    """A token limit on one account.

    ``tokens`` is the limit (an int >= 0). ``window`` (``"30s"``, ``"15m"``, ``"1h"``, ``"1d"``, ``"7d"``,
    ``"30d"``, ...) makes the limit apply per fixed window aligned to the Unix epoch in UTC; None means one
    limit for the account's whole life. ``mode="hard"`` refuses reservations beyond the limit; ``"soft"``
    grants them and reports the overage (:attr:`Balance.over`, the ``over`` field of events).
    """

    tokens: int
    window: str | None = None
    mode: Literal["hard", "soft"] = "hard"

    def __post_init__(self) -> None:
        # amounts are normalised to plain ints (a numpy integer would reach SQLite as a BLOB)
        object.__setattr__(self, "tokens", _bounded("budget.tokens", self.tokens, minimum=0, error=InvalidBudget))
        if self.window is not None:
            parse_window(self.window, "budget.window")
            object.__setattr__(self, "window", str(self.window))
        if not isinstance(self.mode, str) or self.mode not in ("hard", "soft"):
            raise InvalidBudget("budget.mode", self.mode, "must be 'hard' or 'soft'")
        object.__setattr__(self, "mode", str(self.mode))

    @property
    def window_seconds(self) -> int:
        """The window length in seconds, 0 when the budget has no window."""
        return 0 if self.window is None else parse_window(self.window, "budget.window")


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call used, as the provider reported them (or as estimated, with ``estimated=True``).

    ``reasoning`` is a detail of ``completion`` (as OpenAI and LangChain report it), so it must not exceed
    it. The ledger charges :attr:`total` = ``prompt + completion``.
    """

    prompt: int = 0
    completion: int = 0
    reasoning: int = 0
    estimated: bool = False

    def __post_init__(self) -> None:
        prompt, completion, reasoning = self.prompt, self.completion, self.reasoning
        if (  # the common case, checked in one go: plain ints in range (a usage is made on every call)
            type(prompt) is int
            and type(completion) is int
            and type(reasoning) is int
            and 0 <= reasoning <= completion
            and prompt >= 0
            and prompt + completion <= MAX_TOKENS
            and type(self.estimated) is bool
        ):
            return
        for field in ("prompt", "completion", "reasoning"):  # plain ints, whatever integer type was given
            tokens = _bounded(f"usage.{field}", getattr(self, field), minimum=0, error=InvalidUsage)
            object.__setattr__(self, field, tokens)
        if self.reasoning > self.completion:
            raise InvalidUsage("usage.reasoning", self.reasoning, "reasoning tokens are part of completion")
        if not isinstance(self.estimated, bool):
            raise InvalidUsage("usage.estimated", self.estimated, "must be a bool")
        if self.prompt + self.completion > MAX_TOKENS:
            raise InvalidUsage("usage", self, f"total must be <= {MAX_TOKENS}")

    @property
    def total(self) -> int:
        """The tokens charged against budgets: ``prompt + completion``."""
        return self.prompt + self.completion

    def __add__(self, other: Usage) -> Usage:
        """The usage of two calls together (estimated if either was)."""
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.prompt + other.prompt,
            self.completion + other.completion,
            self.reasoning + other.reasoning,
            self.estimated or other.estimated,
        )


@dataclass(frozen=True, slots=True)
class Reservation:
    """Tokens held on every account of ``account``'s path until committed, released or expired.

    ``tokens`` were granted out of ``requested``; the lease runs out at ``expires_at`` (Unix seconds).
    ``limited`` is True when a hard budget on the path bounds the grant: the call must then stay within
    ``tokens`` (what it uses beyond them is charged as overage past the limit).
    """

    id: str
    account: str
    tokens: int
    requested: int
    created_at: float
    expires_at: float
    limited: bool = True

    @property
    def tenant(self) -> str:
        """The tenant the reservation belongs to."""
        return self.account.partition("/")[0]


@dataclass(frozen=True, slots=True)
class Balance:
    """An account's state in its current window.

    ``limit`` is None (and ``remaining`` None) when the account has no budget. ``remaining`` is
    ``max(0, limit - spent - held)``; ``over`` is ``max(0, spent + held - limit)``, the overage of a soft
    budget or of usage committed beyond its reservation. ``window_start``/``window_end`` are Unix seconds,
    None without a window.
    """

    account: str
    limit: int | None
    spent: int
    held: int
    remaining: int | None
    over: int
    window_start: float | None
    window_end: float | None
    mode: Literal["hard", "soft"] | None = None


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Sums of committed usage: tokens by kind, ``total`` charged, ``calls`` committed, ``estimated_calls``."""

    prompt: int = 0
    completion: int = 0
    reasoning: int = 0
    total: int = 0
    calls: int = 0
    estimated_calls: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the append-only audit log.

    ``tokens`` is, by ``kind``: the tokens granted (reserve), charged (commit), given back (release,
    expire), the new limit (set_budget), 0 otherwise. ``returned`` is what a commit gave back. ``over`` is
    the part of a commit beyond its reservation, or the part of a soft reservation beyond the limit.
    ``late`` marks a commit after the lease expired. ``seq`` increases with time within a tenant.
    """

    seq: int
    ts: float
    kind: EventKind
    account: str
    reservation_id: str | None = None
    tokens: int = 0
    returned: int = 0
    prompt: int = 0
    completion: int = 0
    reasoning: int = 0
    estimated: bool = False
    late: bool = False
    over: int = 0
    note: str = ""

    @property
    def tenant(self) -> str:
        """The tenant of the event's account."""
        return self.account.partition("/")[0]
