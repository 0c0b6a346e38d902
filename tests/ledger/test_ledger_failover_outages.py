"""Fail-open ledgers across outages: nothing journaled is left behind by the switch back, repeated outages start
from fresh snapshots, long windows survive, retried steps answer the same, and a primary that is loading its data
is taken back as soon as it answers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from clear_integrations.errors import BudgetExceeded, ReservationClosed
from clear_integrations.ledger import Budget, Ledger, open_ledger
from clear_integrations.ledger.failover import FailoverLedger
from clear_integrations.ledger.failover_journal import Entry
from clear_integrations.ledger.failover_store import LOADING_RETRY

from .conftest import FakeClock
from .faults import Flaky


@pytest.fixture
def flaky(clock: FakeClock, tmp_path: Path) -> tuple[Ledger, Flaky]:
    store = Flaky(open_ledger(f"sqlite:///{tmp_path / 'primary.db'}").store)
    primary = Ledger(store, clock=clock)
    primary.set_budget("acme", Budget(1000))
    return primary, store


def test_entries_journaled_during_the_replay_reach_the_primary(flaky: tuple[Ledger, Flaky], clock: FakeClock) -> None:
    primary, store = flaky
    ledger = FailoverLedger(primary, mode="open", clock=clock, retry_after=1.0)
    before = ledger.reserve("acme", 100)  # on the primary; committed during the outage, while the probe replays
    store.down = True
    ledger.commit(ledger.reserve("acme", 50), 40)  # on the fallback, journaled
    late = ledger.reserve("acme/s", 30)  # on the fallback, committed while the probe replays
    store.down = False
    clock.advance(1)
    entered, go_on = threading.Event(), threading.Event()

    def hold_the_replay(name: str) -> None:
        if name == "reserve" and not entered.is_set():  # the replay's first step (a charge)
            entered.set()
            assert go_on.wait(5)

    store.gate = hold_the_replay
    prober = threading.Thread(target=ledger.balance, args=("acme",))
    prober.start()
    assert entered.wait(5)
    assert ledger.status().active == "fallback"
    assert ledger.commit(before, 60) == 40  # journaled: the probe holds the lock, the fallback answers
    assert ledger.commit(late, 25) == 5
    go_on.set()
    prober.join()
    status = ledger.status()
    assert (status.active, status.pending) == ("primary", 0)
    assert primary.balance("acme").spent == 40 + 60 + 25  # no reconcile() needed
    assert primary.usage("acme").calls == 3


def test_a_commit_journaled_just_after_the_switch_is_replayed(
    flaky: tuple[Ledger, Flaky], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, store = flaky
    ledger = FailoverLedger(primary, mode="open", clock=clock, retry_after=100.0)
    before = ledger.reserve("acme", 100)
    store.down = True
    local = ledger.reserve("acme/s", 20)  # fails over; the next probe is far away
    store.down = False
    journal = ledger.store._journal
    add = journal.add

    def switch_first(entry: Entry, now: float) -> tuple[Entry, bool]:
        ledger.reconcile()  # the switch back and its replay run between this call's routing and its entry
        return add(entry, now)

    monkeypatch.setattr(journal, "add", switch_first)
    assert ledger.commit(before, 70) == 30
    assert ledger.status().pending == 0 and primary.balance("acme").spent == 70
    ledger.store._active = "fallback"  # a fallback reservation committed just as the switch happens
    assert ledger.commit(local, 15) == 5
    assert ledger.status().pending == 0 and primary.balance("acme").spent == 85


def test_repeated_outages_start_from_fresh_snapshots(flaky: tuple[Ledger, Flaky], clock: FakeClock) -> None:
    primary, store = flaky
    ledger = FailoverLedger(primary, mode="open", clock=clock, retry_after=1.0, refresh=3600.0)
    ledger.balance("acme")  # the snapshot: 1000 left
    granted = 0
    for _ in range(3):  # three outages within `refresh`
        store.down = True
        reservation = ledger.reserve_up_to("acme", 10_000, minimum=0)
        granted += reservation.tokens
        ledger.commit(reservation, reservation.tokens)
        store.down = False
        clock.advance(1)
        ledger.get_state()  # any call probes: replay, switch back (no balance read: the snapshot is not re-read)
        assert ledger.status().active == "primary"
    assert granted == 1000
    assert primary.balance("acme").spent == 1000
    with pytest.raises(BudgetExceeded):
        ledger.reserve("acme", 1)


@pytest.mark.parametrize("window", ["365d", "52w", "9999999s", "1w", "30d", "90m"])
def test_long_windows_survive_fail_open(flaky: tuple[Ledger, Flaky], clock: FakeClock, window: str) -> None:
    primary, store = flaky
    primary.set_budget("acme", Budget(1000, window))
    ledger = FailoverLedger(primary, mode="open", share=0.5, clock=clock)
    ledger.commit(ledger.reserve("acme", 100), 100)
    store.down = True
    assert ledger.reserve_up_to("acme", 10_000).tokens == 450
    budget = ledger.get_budget("acme")
    assert budget is not None and budget.window_seconds == Budget(1, window).window_seconds


def test_a_retried_commit_or_release_during_an_outage_answers_the_same(
    flaky: tuple[Ledger, Flaky], clock: FakeClock
) -> None:
    primary, store = flaky
    ledger = FailoverLedger(primary, mode="open", clock=clock)
    committed, released = ledger.reserve("acme", 100), ledger.reserve("acme", 50)
    store.down = True
    assert ledger.commit(committed, 60) == 40
    assert ledger.commit(committed, 70) == 40  # the first result, as on the primary
    assert ledger.release(committed) == 0  # after a commit nothing comes back
    assert ledger.release(released) == 50
    assert ledger.release(released) == 50
    with pytest.raises(ReservationClosed):
        ledger.commit(released, 10)
    assert ledger.status().pending_tokens == 60
    store.down = False
    assert ledger.reconcile() == 2
    assert (primary.balance("acme").spent, primary.balance("acme").held) == (60, 0)
    assert ledger.commit(committed, 80) == 40  # and the primary agrees afterwards
    store.down = True  # a retry during a later outage still answers what the primary answered
    assert ledger.commit(committed, 90) == 40
    assert ledger.release(released) == 50
    with pytest.raises(ReservationClosed):
        ledger.commit(released, 1)
    assert ledger.status().pending == 0


def test_a_loading_primary_is_taken_back_as_soon_as_it_answers(flaky: tuple[Ledger, Flaky], clock: FakeClock) -> None:
    redis = pytest.importorskip("redis")
    primary, store = flaky
    ledger = FailoverLedger(primary, mode="open", clock=clock, retry_after=5.0)
    ledger.balance("acme")
    store.down = True
    ledger.commit(ledger.reserve("acme", 10), 10)
    assert ledger.status().active == "fallback"
    store.cause = redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory")
    clock.advance(5)
    ledger.balance("acme")  # the probe finds the server up but loading: not yet
    status = ledger.status()
    assert status.active == "fallback" and status.next_probe == pytest.approx(clock() + LOADING_RETRY)
    store.down = False  # loaded
    clock.advance(LOADING_RETRY)
    ledger.balance("acme")
    assert ledger.status().active == "primary"
    assert primary.balance("acme").spent == 10
