"""Usage that was never reserved is charged in full, on every backend, even past a hard limit."""

from __future__ import annotations

import pytest

from clear_integrations.ledger import Budget, Ledger, Usage

from .conftest import Backend


def test_charge_records_unreserved_usage_in_full(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(tokens=100))
    ledger.charge("acme/s1", Usage(prompt=30, completion=40, estimated=True))
    balance = ledger.balance("acme")
    assert (balance.spent, balance.held, balance.remaining) == (70, 0, 30)
    ledger.charge("acme/s1", 80)  # past the hard limit: recorded, never dropped
    balance = ledger.balance("acme")
    assert balance.spent == 150 and balance.held == 0 and balance.remaining == 0
    usage = ledger.usage("acme")
    assert usage.total == 150 and usage.calls == 2 and usage.estimated_calls == 1


def test_reserve_up_to_with_minimum_zero_never_refuses(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(tokens=10))
    ledger.commit(ledger.reserve("acme", 10), 10)
    nothing = ledger.reserve_up_to("acme", 5, minimum=0)
    assert nothing.tokens == 0
    assert ledger.commit(nothing, 0) == 0
    assert ledger.balance("acme").spent == 10


@pytest.mark.anyio
async def test_async_charge(backend: Backend) -> None:
    ledger = backend.open_async()
    await ledger.set_budget("acme", Budget(tokens=5))
    await ledger.charge("acme", 9)
    balance = await ledger.balance("acme")
    assert balance.spent == 9 and balance.held == 0
