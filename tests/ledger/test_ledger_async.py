"""The async twin on every backend: each method once, with the same results as the sync ledger."""

from __future__ import annotations

import pytest

from clear_integrations.errors import BudgetExceeded, InvalidAccount, ReservationClosed, UnknownReservation
from clear_integrations.ledger import Budget, Usage

from .conftest import Backend, FakeClock

pytestmark = pytest.mark.anyio


async def test_every_async_method(backend: Backend, clock: FakeClock) -> None:
    async with backend.open_async(clock) as ledger:
        assert await ledger.apply_budgets({"acme": Budget(1000, "1d"), "acme/s": Budget(300)}) == 2
        assert await ledger.get_budget("acme") == Budget(1000, "1d")
        r = await ledger.reserve("acme/s", 200, lease=10)
        with pytest.raises(BudgetExceeded) as refused:
            await ledger.reserve("acme/s", 101)
        assert refused.value.remaining == {"acme": 800, "acme/s": 100}
        up_to = await ledger.reserve_up_to("acme/s", 500)
        assert up_to.tokens == 100
        assert await ledger.commit(r, Usage(prompt=50, completion=100, reasoning=40)) == 50
        assert await ledger.commit(r.id, 1) == 50
        assert await ledger.release(up_to) == 100
        with pytest.raises(ReservationClosed):
            await ledger.commit(up_to, 1)
        with pytest.raises(UnknownReservation):
            await ledger.release("acme#missing")
        with pytest.raises(InvalidAccount):
            await ledger.balance("bad id")
        b = await ledger.balance("acme")
        assert (b.spent, b.held, b.remaining, b.mode) == (150, 0, 850, "hard")
        totals = await ledger.usage("acme")
        assert (totals.prompt, totals.completion, totals.reasoning, totals.total, totals.calls) == (50, 100, 40, 150, 1)
        assert (await ledger.usage("acme", since=clock.now + 1)).calls == 0
        kinds = [e.kind for e in await ledger.events("acme")]
        assert kinds == ["set_budget", "set_budget", "reserve", "reserve", "commit", "release"]
        assert len(await ledger.events(limit=2)) == 2
        await ledger.reserve("beta", 5, lease=1)
        clock.advance(2)
        assert await ledger.expire() == 1
        assert await ledger.set_state("default", {"price": 1.5}, expected_version=0)
        assert not await ledger.set_state("default", {"price": 2.5}, expected_version=0)
        assert await ledger.get_state("default") == ({"price": 1.5}, 1)
        await ledger.reset("acme")
        assert (await ledger.balance("acme")).spent == 0
        await ledger.remove_budget("acme/s")
        assert await ledger.get_budget("acme/s") is None
    sync = backend.open(clock)
    assert sync.balance("acme/s").spent == 150
    assert [e.kind for e in sync.events("beta")] == ["reserve", "expire"]
