"""Windows and leases with an injected clock: nothing sleeps."""

from __future__ import annotations

import math

import pytest

from clear_integrations.errors import BudgetExceeded
from clear_integrations.ledger import Budget, Ledger

from .conftest import Backend, FakeClock


@pytest.mark.parametrize(("window", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86_400)])
def test_usage_resets_at_the_window_boundary_never_before(
    ledger: Ledger, clock: FakeClock, window: str, seconds: int
) -> None:
    ledger.set_budget("acme", Budget(1000, window=window))
    boundary = (math.floor(clock.now / seconds) + 1) * seconds
    clock.now = boundary - seconds / 2
    ledger.commit(ledger.reserve("acme/s", 800), 700)
    before = ledger.balance("acme")
    assert (before.spent, before.window_start, before.window_end) == (700, boundary - seconds, boundary)
    clock.now = boundary - 0.001
    assert ledger.balance("acme").spent == 700
    with pytest.raises(BudgetExceeded):
        ledger.reserve("acme", 301)
    clock.now = boundary
    after = ledger.balance("acme")
    assert (after.spent, after.remaining, after.window_start) == (0, 1000, boundary)
    assert ledger.reserve("acme", 1000).tokens == 1000
    assert ledger.usage("acme").total == 700  # usage totals are not windowed; balances are


def test_day_window_is_aligned_to_utc_midnight(ledger: Ledger, clock: FakeClock) -> None:
    ledger.set_budget("acme", Budget(10, window="1d"))
    b = ledger.balance("acme")
    assert b.window_start is not None
    assert b.window_end == b.window_start + 86_400
    assert b.window_start % 86_400 == 0
    assert b.window_start <= clock.now < b.window_end


def test_held_tokens_carry_across_the_boundary(ledger: Ledger, clock: FakeClock) -> None:
    ledger.set_budget("acme", Budget(1000, window="1h"))
    r = ledger.reserve("acme", 400, lease=7200)
    clock.now = (math.floor(clock.now / 3600) + 1) * 3600
    b = ledger.balance("acme")
    assert (b.spent, b.held, b.remaining) == (0, 400, 600)
    ledger.commit(r, 300)  # charged to the window in which it is committed
    assert ledger.balance("acme").spent == 300


def test_a_lease_expires_lazily(ledger: Ledger, clock: FakeClock) -> None:
    ledger.set_budget("acme", Budget(1000))
    r = ledger.reserve("acme/s", 600, lease=10)
    assert r.expires_at == clock.now + 10
    clock.advance(9.999)
    assert ledger.balance("acme").held == 600
    clock.advance(0.001)
    b = ledger.balance("acme")
    assert (b.held, b.remaining) == (0, 1000)
    assert ledger.balance("acme/s").held == 0
    expired = [e for e in ledger.events("acme") if e.kind == "expire"]
    assert [(e.reservation_id, e.tokens) for e in expired] == [(r.id, 600)]
    assert ledger.release(r) == 0


def test_reserve_sees_expired_leases(ledger: Ledger, clock: FakeClock) -> None:
    ledger.set_budget("acme", Budget(1000))
    ledger.reserve("acme/a", 1000, lease=5)
    with pytest.raises(BudgetExceeded):
        ledger.reserve("acme/b", 1)
    clock.advance(5)
    assert ledger.reserve("acme/b", 1000).tokens == 1000


def test_commit_after_expiry_still_charges_and_is_late(ledger: Ledger, clock: FakeClock) -> None:
    ledger.set_budget("acme", Budget(1000))
    r = ledger.reserve("acme/s", 500, lease=1)
    clock.advance(2)
    assert ledger.commit(r, 320) == 0
    assert ledger.commit(r, 320) == 0
    b = ledger.balance("acme")
    assert (b.spent, b.held) == (320, 0)
    commit = ledger.events("acme")[-1]
    assert (commit.kind, commit.late, commit.tokens, commit.returned) == ("commit", True, 320, 0)
    assert ledger.usage("acme/s").total == 320


def test_expire_sweeps_every_tenant(ledger: Ledger, clock: FakeClock) -> None:
    ledger.reserve("acme/s", 5, lease=1)
    ledger.reserve("beta", 7, lease=1)
    kept = ledger.reserve("gamma", 9, lease=100)
    clock.advance(1)
    assert ledger.expire() == 2
    assert ledger.expire() == 0
    assert ledger.balance("gamma").held == 9
    assert ledger.release(kept) == 9


def test_closed_reservations_are_purged_after_the_retention(backend: Backend, clock: FakeClock) -> None:
    from clear_integrations.ledger import open_ledger

    ledger = open_ledger(backend.url, clock=clock, prefix=backend.prefix, retention=60)
    backend.opened.append(ledger)
    r = ledger.reserve("acme", 5)
    ledger.commit(r, 5)
    clock.advance(59)
    ledger.expire()
    assert ledger.commit(r, 5) == 0
    clock.advance(2)
    ledger.expire()
    from clear_integrations.errors import UnknownReservation

    with pytest.raises(UnknownReservation):
        ledger.commit(r, 5)
