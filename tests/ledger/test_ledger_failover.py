"""Fail-closed and fail-open ledgers: refusals, fallback grants within the share, journal, reconciliation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clear_integrations.errors import BudgetExceeded, InvalidInput, LedgerUnavailable
from clear_integrations.ledger import AsyncLedger, Budget, Ledger, Usage, open_ledger
from clear_integrations.ledger.accounts import parse_scope as _scope
from clear_integrations.ledger.failover import (
    AsyncFailoverLedger,
    FailOpen,
    FailoverLedger,
    open_async_failover_ledger,
    open_failover_ledger,
)

from .conftest import FakeClock
from .faults import Flaky, RedisServer, redis_server_for

CLOSED_PORT = "redis://127.0.0.1:1/0"


@pytest.fixture
def flaky(clock: FakeClock, tmp_path: Path) -> tuple[Ledger, Flaky]:
    store = Flaky(open_ledger(f"sqlite:///{tmp_path / 'primary.db'}").store)
    primary = Ledger(store, clock=clock)
    primary.set_budget("acme", Budget(1000))
    return primary, store


def test_fail_closed_is_the_default_on_a_closed_port(clock: FakeClock) -> None:
    with pytest.raises(LedgerUnavailable):
        open_ledger(CLOSED_PORT)
    with pytest.raises(LedgerUnavailable):
        FailoverLedger(lambda: open_ledger(CLOSED_PORT), clock=clock)
    with pytest.raises(LedgerUnavailable):
        open_failover_ledger(CLOSED_PORT)


def test_fail_closed_refuses_and_grants_nothing(flaky: tuple[Ledger, Flaky], clock: FakeClock) -> None:
    primary, store = flaky
    ledger = FailoverLedger(primary, clock=clock)
    held = ledger.reserve("acme", 100)
    store.down = True
    for call in (lambda: ledger.reserve("acme", 1), lambda: ledger.commit(held, 50), lambda: ledger.balance("acme")):
        with pytest.raises(LedgerUnavailable):
            call()
    status = ledger.status()
    assert (status.mode, status.active, status.pending) == ("closed", "primary", 0)
    store.down = False
    assert ledger.commit(held, 50) == 50
    assert primary.balance("acme").spent == 50


def test_fail_open_grants_within_the_share_and_reconciles(flaky: tuple[Ledger, Flaky], clock: FakeClock) -> None:
    primary, store = flaky
    ledger = FailoverLedger(primary, mode="open", share=0.5, retry_after=5.0, clock=clock)
    ledger.commit(ledger.reserve("acme/s1", 100), 100)  # the snapshot, read after this reserve: 900 remaining
    before = ledger.reserve("acme", 50)  # made on the primary (snapshot still fresh), committed during the outage
    store.down = True
    local = ledger.reserve("acme/s1", 200)  # fails over: the fallback may spend 0.5 * 900 = 450
    assert local.id.startswith("acme#~s1~")
    assert ledger.status().active == "fallback"
    assert ledger.commit(local, Usage(prompt=100, completion=50, reasoning=10)) == 50
    assert ledger.commit(before, 40) == 10
    assert ledger.reserve_up_to("acme", 1000, minimum=0).tokens == 450 - 150
    with pytest.raises(BudgetExceeded):
        ledger.reserve("acme", 1)
    with pytest.raises(LedgerUnavailable):  # budget changes need the primary
        ledger.set_budget("acme", Budget(5))
    status = ledger.status()
    assert (status.pending, status.pending_tokens) == (2, 190)
    store.down = False
    calls = store.calls
    clock.advance(4.9)
    ledger.balance("acme")  # before retry_after: the primary is not probed
    assert store.calls == calls and ledger.status().active == "fallback"
    clock.advance(0.1)
    balance = ledger.balance("acme")  # probes, replays and answers from the primary
    assert ledger.status().active == "primary" and ledger.status().pending == 0
    assert (balance.spent, balance.held) == (100 + 150 + 40, 0)
    assert primary.usage("acme/s1").reasoning == 10
    assert ledger.reconcile() == 0
    assert primary.balance("acme").spent == 290


def test_a_retried_replay_never_charges_twice(
    flaky: tuple[Ledger, Flaky], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, store = flaky
    ledger = FailoverLedger(primary, mode="open", clock=clock)
    ledger.balance("acme")
    store.down = True
    ledger.commit(ledger.reserve("acme", 100), 70)
    ledger.commit(ledger.reserve("acme", 100), 30)
    store.down = False
    journal = ledger.store._journal
    drop = journal.drop
    crashes = iter([True])

    def crash_once(rid: str) -> None:
        if next(crashes, False):
            raise RuntimeError("killed between the primary commit and the journal update")
        drop(rid)

    monkeypatch.setattr(journal, "drop", crash_once)
    with pytest.raises(RuntimeError):
        ledger.reconcile()
    assert primary.balance("acme").spent == 70  # the first entry reached the primary, then the "crash"
    assert ledger.reconcile() == 2
    assert ledger.reconcile() == 0
    assert primary.balance("acme").spent == 100
    assert primary.usage("acme").calls == 2


def test_late_commit_after_the_switch_back_is_replayed(flaky: tuple[Ledger, Flaky], clock: FakeClock) -> None:
    primary, store = flaky
    ledger = FailoverLedger(primary, mode="open", clock=clock, retry_after=1.0)
    ledger.balance("acme")
    store.down = True
    local = ledger.reserve("acme", 100)
    store.down = False
    assert ledger.reconcile() == 0
    assert ledger.commit(local, 60) == 40  # routed to the fallback, then replayed at once
    assert primary.balance("acme").spent == 60 and ledger.status().pending == 0
    assert ledger.release(ledger.reserve("acme", 10)) == 10
    late = ledger.store._fallback.reserve(_scope("acme"), 5, None, 300.0, "acme#~~x1", clock())
    store.down = True  # a late commit while the primary is down again: journaled, back to the fallback
    assert ledger.commit(late, 5) == 0
    assert ledger.status().active == "fallback" and ledger.status().pending == 1


def test_unknown_tenants_fail_closed_unless_configured(flaky: tuple[Ledger, Flaky], clock: FakeClock) -> None:
    primary, store = flaky
    store.down = True
    ledger = FailoverLedger(primary, mode="open", clock=clock, budgets={"beta": Budget(80, "1d")}, share=0.25)
    with pytest.raises(LedgerUnavailable, match="no budget of 'acme'"):
        ledger.reserve("acme", 1)
    assert ledger.reserve_up_to("beta/s", 100).tokens == 20
    assert ledger.get_budget("beta") == Budget(20, "1d")


def test_a_window_that_rolled_over_seeds_the_full_share(flaky: tuple[Ledger, Flaky], clock: FakeClock) -> None:
    primary, store = flaky
    primary.set_budget("acme", Budget(1000, "1h"))
    ledger = FailoverLedger(primary, mode="open", share=0.5, clock=clock)
    ledger.commit(ledger.reserve("acme", 900), 900)
    clock.advance(3600)
    store.down = True
    assert ledger.reserve_up_to("acme", 10_000).tokens == 500


def test_threads_on_the_fallback_stay_within_the_share(flaky: tuple[Ledger, Flaky], clock: FakeClock) -> None:
    primary, store = flaky
    ledger = FailoverLedger(primary, mode="open", share=0.3, clock=clock)
    ledger.balance("acme")
    store.down = True
    granted: list[int] = []

    def work() -> None:
        for _ in range(50):
            try:
                reservation = ledger.reserve("acme/t", 7)
            except BudgetExceeded:
                return
            ledger.commit(reservation, 7)
            granted.append(reservation.tokens)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 7 * (300 // 7) == ledger.status().pending_tokens
    store.down = False
    clock.advance(5)
    assert ledger.balance("acme").spent == sum(granted)


@pytest.mark.anyio
async def test_the_async_twin(flaky: tuple[Ledger, Flaky], clock: FakeClock) -> None:
    primary, store = flaky
    ledger = AsyncFailoverLedger(FailoverLedger(primary, mode="open", clock=clock))
    await ledger.balance("acme")
    store.down = True
    reservation = await ledger.reserve("acme", 100)
    assert await ledger.commit(reservation, 60) == 40
    assert ledger.status().pending_tokens == 60
    store.down = False
    assert await ledger.reconcile() == 1
    assert (await ledger.balance("acme")).spent == 60
    await ledger.close()


def test_sqlite_fallback_keeps_the_journal(flaky: tuple[Ledger, Flaky], clock: FakeClock, tmp_path: Path) -> None:
    primary, store = flaky
    fallback = f"sqlite:///{tmp_path / 'fallback.db'}"
    ledger = FailoverLedger(primary, mode="open", fallback=fallback, clock=clock)
    ledger.balance("acme")
    store.down = True
    ledger.commit(ledger.reserve("acme", 100), 70)
    ledger.store._journal.close()  # the process dies; the journal is on disk
    store.down = False
    again = FailoverLedger(primary, mode="open", fallback=fallback, clock=clock)
    assert again.status().pending == 1
    assert again.reconcile() == 1
    assert primary.balance("acme").spent == 70


def test_bad_settings_name_the_field(flaky: tuple[Ledger, Flaky]) -> None:
    primary, _ = flaky
    for kwargs, field in (
        ({"mode": "ajar"}, "mode"),
        ({"share": 0}, "share"),
        ({"share": 1.5}, "share"),
        ({"retry_after": float("nan")}, "retry_after"),
        ({"fallback": "redis://localhost:6379/0"}, "fallback"),
    ):
        with pytest.raises(InvalidInput) as caught:
            FailoverLedger(primary, **kwargs)
        assert caught.value.field == field
    with pytest.raises(InvalidInput):
        open_failover_ledger("memory://", "sideways")  # type: ignore[arg-type]
    assert isinstance(open_failover_ledger("memory://x", FailOpen(share=0.5)), FailoverLedger)
    assert type(open_failover_ledger("memory://x")) is Ledger
    assert type(open_async_failover_ledger("memory://x")) is AsyncLedger
    assert isinstance(open_async_failover_ledger(CLOSED_PORT, "open"), AsyncFailoverLedger)


# ------------------------------------------------------------ a real Redis server, killed and restarted


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from redis_server_for(tmp_path)


@pytest.mark.slow
@pytest.mark.redis
def test_fail_closed_when_the_server_is_killed(redis_server: RedisServer, clock: FakeClock) -> None:
    ledger = FailoverLedger(open_ledger(redis_server.url, clock=clock), clock=clock)
    ledger.set_budget("acme", Budget(1000))
    held = ledger.reserve("acme", 100)
    redis_server.kill()
    with pytest.raises(LedgerUnavailable):
        ledger.reserve("acme", 1)
    with pytest.raises(LedgerUnavailable):
        ledger.commit(held, 10)
    ledger.close()


@pytest.mark.slow
@pytest.mark.redis
def test_fail_open_on_a_killed_server_then_reconcile(redis_server: RedisServer, clock: FakeClock) -> None:
    ledger = FailoverLedger(
        open_ledger(redis_server.url, clock=clock), mode="open", share=0.5, retry_after=5.0, clock=clock
    )
    ledger.set_budget("acme", Budget(10_000, "1d"))
    ledger.commit(ledger.reserve("acme/s1", 1000), 1000)
    redis_server.kill()
    granted = 0
    committed = 0
    for used in (700, 1200, 900, 1300, 500):
        try:
            reservation = ledger.reserve("acme/s1", 1500)
        except BudgetExceeded:
            break
        granted += reservation.tokens
        ledger.commit(reservation, used)
        committed += used
    assert ledger.status().active == "fallback"
    assert committed == 700 + 1200 + 900 + 1300 <= 0.5 * 9000  # the fifth reservation did not fit in the share
    assert ledger.status().pending_tokens == committed
    with pytest.raises(LedgerUnavailable):
        ledger.reconcile()  # still down
    redis_server.start()
    assert ledger.reconcile() == ledger.status().replayed > 0
    assert ledger.balance("acme").spent == 1000 + committed
    assert ledger.usage("acme/s1").total == 1000 + committed
    assert ledger.reconcile() == 0
    assert ledger.balance("acme").spent == 1000 + committed
    ledger.close()


@pytest.mark.slow
@pytest.mark.redis
def test_killed_during_calls_every_returned_commit_lands_once(redis_server: RedisServer, clock: FakeClock) -> None:
    ledger = FailoverLedger(open_ledger(redis_server.url, clock=clock), mode="open", clock=clock)
    ledger.set_budget("acme", Budget(10**9))
    done = 0
    stop = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        nonlocal done
        try:
            while not stop.is_set():
                ledger.commit(ledger.reserve("acme/w", 10), 7)
                done += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    def wait_for(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not condition() and not errors and time.monotonic() < deadline:
            time.sleep(0.001)

    worker = threading.Thread(target=work)
    worker.start()
    wait_for(lambda: done >= 200)
    redis_server.kill()  # while the worker is in the middle of its calls
    wait_for(lambda: ledger.status().active == "fallback")
    before = done
    wait_for(lambda: done >= before + 200)
    stop.set()
    worker.join()
    assert not errors, errors
    redis_server.start()
    ledger.reconcile()
    clock.advance(301)  # a reservation whose reply was lost in the kill is released by its lease
    balance = ledger.balance("acme")
    assert (balance.spent, balance.held) == (7 * done, 0)
    assert ledger.usage("acme/w").calls == done
    ledger.close()
