"""The invariants every concurrency test checks: no overspend, and every granted token accounted for."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from clear_integrations.ledger import Balance, Ledger

LIMIT = 5_000
SESSION_LIMIT = 1_500


@dataclass(frozen=True)
class Settled:
    """One reservation as a worker saw it: granted, then charged ``used`` and got ``returned`` back."""

    granted: int
    used: int
    returned: int
    committed: bool


def within_limit(balance: Balance, limit: int) -> bool:
    """Committed + held never exceeds a hard limit."""
    return balance.spent + balance.held <= limit


def check_accounting(ledger: Ledger, settled: Iterable[Settled], *, tenant: str = "acme") -> None:
    """After the run: the books balance exactly."""
    settled = list(settled)
    for one in settled:
        # sum of what was charged within the reservation and what came back = what was granted
        assert one.used + one.returned == one.granted, one
    final = ledger.balance(tenant)
    spent = sum(one.used for one in settled if one.committed)
    assert final.held == 0
    assert final.spent == spent
    assert final.spent <= LIMIT
    assert ledger.balance(f"{tenant}/s0").spent <= SESSION_LIMIT
    events = ledger.events(tenant)
    assert sum(e.tokens for e in events if e.kind == "commit") == spent
    assert sum(e.tokens for e in events if e.kind == "reserve") == sum(one.granted for one in settled)
    assert sum(1 for e in events if e.kind == "reserve") == len(settled)
    assert ledger.usage(tenant).total == spent
    assert spent > LIMIT // 2  # the run really competed for the budget
