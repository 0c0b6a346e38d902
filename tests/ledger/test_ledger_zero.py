"""A reservation of 0 tokens (``reserve_up_to(..., minimum=0)`` when nothing is left, as ``charge`` and the
failover replay make) never bricks its tenant: after its lease runs out every operation still works, on every
backend, and the ``expire()`` sweep goes on past a tenant whose keys are damaged (Redis)."""

from __future__ import annotations

import pytest

from clear_integrations.errors import LedgerUnavailable
from clear_integrations.ledger import Budget, Ledger

from .conftest import REDIS_URL, Backend, FakeClock


def _spend_everything(ledger: Ledger, tenant: str) -> None:
    ledger.set_budget(tenant, Budget(10))
    ledger.commit(ledger.reserve(tenant, 10), 10)


def test_a_zero_grant_expires_and_the_tenant_lives_on(ledger: Ledger, clock: FakeClock) -> None:
    _spend_everything(ledger, "acme")
    nothing = ledger.reserve_up_to("acme/s", 5, minimum=0, lease=10.0)
    assert nothing.tokens == 0
    clock.advance(11)  # the lease ran out: the next step on the tenant expires it (0 tokens back)
    balance = ledger.balance("acme")
    assert (balance.spent, balance.held) == (10, 0)
    assert ledger.expire() == 0  # already expired by the balance above
    assert [e.tokens for e in ledger.events("acme") if e.kind == "expire"] == [0]
    ledger.set_budget("acme", Budget(100))
    held = ledger.reserve("acme/s", 20)
    assert ledger.commit(held, 5) == 15
    assert ledger.release(ledger.reserve("acme", 7)) == 7
    assert ledger.commit(nothing, 3) == 0  # a late commit still charges
    assert ledger.balance("acme").spent == 10 + 5 + 3


def test_the_expire_sweep_releases_zero_grants(ledger: Ledger, clock: FakeClock) -> None:
    for tenant in ("a1", "a2", "a3"):
        _spend_everything(ledger, tenant)
        ledger.reserve_up_to(tenant, 5, minimum=0, lease=10.0)
    ledger.set_budget("zz", Budget(50))
    ledger.reserve("zz", 20, lease=10.0)  # a tenant swept after the zero grants
    clock.advance(11)
    assert ledger.expire() == 4
    assert ledger.balance("zz").held == 0
    for tenant in ("a1", "a2", "a3"):
        assert ledger.balance(tenant).held == 0
        assert ledger.reserve_up_to(tenant, 5, minimum=0).tokens == 0


def test_releasing_a_zero_grant(ledger: Ledger) -> None:
    _spend_everything(ledger, "acme")
    nothing = ledger.reserve_up_to("acme", 5, minimum=0)
    assert ledger.release(nothing) == 0
    assert ledger.release(nothing) == 0
    assert ledger.balance("acme").held == 0
    ledger.charge("acme", 4)  # usage never reserved, nothing left: a 0-token reservation then a commit
    assert ledger.balance("acme").spent == 14


@pytest.mark.anyio
async def test_the_async_twin_expires_a_zero_grant(backend: Backend, clock: FakeClock) -> None:
    ledger = backend.open_async(clock)
    await ledger.set_budget("acme", Budget(10))
    await ledger.commit(await ledger.reserve("acme", 10), 10)
    nothing = await ledger.reserve_up_to("acme", 5, minimum=0, lease=10.0)
    clock.advance(11)
    assert await ledger.expire() == 1
    assert (await ledger.balance("acme")).held == 0
    assert await ledger.release(nothing) == 0
    await ledger.charge("acme", 3)
    assert (await ledger.balance("acme")).spent == 13
    await ledger.close()


@pytest.mark.redis
def test_the_redis_sweep_goes_on_past_a_damaged_tenant(redis_backend: Backend, clock: FakeClock) -> None:
    import redis

    backend = redis_backend
    ledger = backend.open(clock)
    for tenant in ("a1", "b2", "c3"):
        ledger.set_budget(tenant, Budget(100))
        ledger.reserve(tenant, 10, lease=10.0)
    client = redis.Redis.from_url(REDIS_URL)
    client.hset(f"{backend.prefix}{{b2}}:res", "b2#broken", "not json")  # damaged by hand
    client.zadd(f"{backend.prefix}{{b2}}:lease", {"b2#broken": 0})
    client.close()
    clock.advance(11)
    with pytest.raises(LedgerUnavailable, match="b2"):
        ledger.expire()
    assert ledger.balance("a1").held == 0 and ledger.balance("c3").held == 0  # swept all the same
