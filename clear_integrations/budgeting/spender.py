"""``Spender``: what every budgeted model of one wrapper shares, whatever the framework.

The ledger's controllers (sync, and async: the async ledger given, or the sync one served from worker threads),
the default payer and what an abandoned call gives back. :meth:`Spender.open` checks the arguments once, at
construction, so a wrapper with a bad tenant id or an async ledger on another store fails when it is built, not
at its first call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from ..estimators.base import Estimator
from ..ledger import AsyncLedger, Ledger
from .abandon import Abandon, check_abandon
from .controller import AsyncBudgetController, BudgetController
from .payer import Payer
from .policy import BudgetPolicy

__all__ = ["Spender"]


@dataclass(frozen=True)
class Spender:
    """Controllers, default payer and abandonment rule of one wrapper (see the module docstring)."""

    sync: BudgetController
    asynchronous: AsyncBudgetController
    payer: Payer
    on_abandon: Abandon = "message"

    @property
    def policy(self) -> BudgetPolicy:
        return self.sync.policy

    @property
    def ledger(self) -> Ledger:
        return self.sync.ledger

    @classmethod
    def open(
        cls,
        ledger: Ledger,
        *,
        tenant: str,
        session: str | None = None,
        policy: BudgetPolicy | None = None,
        estimator: Estimator | None = None,
        on_abandon: Any = "message",
        async_ledger: AsyncLedger | None = None,
    ) -> Spender:
        """Check the arguments and build the controllers. ``estimator`` is a shortcut for
        ``BudgetPolicy(estimator=...)`` (it replaces the policy's own). ``async_ledger`` must be on the same store as
        ``ledger`` (an unnamed ``memory://`` store is private to each open): else :class:`InvalidInput`."""
        if not isinstance(ledger, Ledger):
            raise InvalidInput(
                "ledger", ledger, "must be a Ledger (open_ledger(url)); pass an AsyncLedger as async_ledger"
            )
        if policy is None:
            policy = BudgetPolicy(estimator=estimator)
        elif estimator is not None:
            policy = dataclasses.replace(policy, estimator=estimator)
        if async_ledger is not None and not async_ledger.shares_store_with(ledger):
            raise InvalidInput(
                "async_ledger",
                async_ledger.url,
                f"is not the same store as ledger {ledger.url!r} (an unnamed memory:// store belongs to one open "
                "only): leave async_ledger out, the async paths then use the ledger from worker threads",
            )
        return cls(
            sync=BudgetController(ledger, policy),
            asynchronous=AsyncBudgetController(async_ledger or ledger, policy),
            payer=Payer(tenant, session).checked(),
            on_abandon=check_abandon(on_abandon),
        )
