"""A real redis-server, restarted under the ledger: the first call of every connection no longer fails (one
retry on a dropped connection, never holding twice), and a server restarted without persistence, which forgot
every budget, is noticed: nothing is granted until the budgets are set again."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clear_integrations.errors import BudgetExceeded, ClearError, LedgerDataLost, LedgerUnavailable
from clear_integrations.ledger import Budget, Ledger, Reservation, open_async_ledger, open_ledger
from clear_integrations.ledger.failover import FailoverLedger

from .conftest import FakeClock
from .faults import RedisServer, redis_server_for

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[RedisServer]:
    yield from redis_server_for(tmp_path, "always")


@pytest.fixture
def volatile(tmp_path: Path) -> Iterator[RedisServer]:
    yield from redis_server_for(tmp_path, "none")


class Workers:
    """Threads that keep their own ledger connections: each runs the calls it is given, in turn."""

    def __init__(self, count: int) -> None:
        self.inboxes: list[queue.Queue[Callable[[], Any] | None]] = [queue.Queue() for _ in range(count)]
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.threads = [threading.Thread(target=self._loop, args=(inbox,)) for inbox in self.inboxes]
        for thread in self.threads:
            thread.start()

    def _loop(self, inbox: queue.Queue[Callable[[], Any] | None]) -> None:
        while (call := inbox.get()) is not None:
            try:
                self.outbox.put(call())
            except BaseException as exc:  # collected by run()
                self.outbox.put(exc)

    def run(self, call: Callable[[], Any]) -> list[Any]:
        for inbox in self.inboxes:
            inbox.put(call)
        return [self.outbox.get(timeout=30) for _ in self.inboxes]

    def stop(self) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for thread in self.threads:
            thread.join()


def test_the_first_call_after_a_restart_succeeds_on_every_thread(durable: RedisServer, clock: FakeClock) -> None:
    ledger = open_ledger(durable.url, clock=clock)
    ledger.set_budget("acme", Budget(10_000))
    workers = Workers(6)
    try:
        assert workers.run(lambda: ledger.balance("acme").limit) == [10_000] * 6
        durable.restart()  # AOF always: the data survives, every connection is dropped
        first = workers.run(lambda: ledger.commit(ledger.reserve("acme/w", 10), 7))
        assert first == [3] * 6, first
        assert workers.run(lambda: ledger.get_budget("acme")) == [Budget(10_000)] * 6
        durable.restart()
        assert workers.run(lambda: ledger.set_state("p", {"v": 1}, expected_version=ledger.get_state("p")[1]))
    finally:
        workers.stop()
    balance = ledger.balance("acme")
    assert (balance.spent, balance.held) == (6 * 7, 0)
    assert sum(1 for event in ledger.events("acme") if event.kind == "reserve") == 6  # never held twice
    ledger.close()


def test_a_retried_reserve_never_holds_twice(
    durable: RedisServer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply of a reserve is lost with its connection after the script ran: the retry finds the reservation."""
    import redis

    ledger = open_ledger(durable.url, clock=clock)
    ledger.set_budget("acme", Budget(100))
    store: Any = ledger.store
    connection = store._connection()
    read = connection.read_response
    lost = iter([True])

    def lose_the_first_reply(*args: Any, **kwargs: Any) -> Any:
        reply = read(*args, **kwargs)
        if next(lost, False):
            raise redis.ConnectionError("Connection closed by server.")
        return reply

    monkeypatch.setattr(connection, "read_response", lose_the_first_reply)
    reservation = ledger.reserve("acme", 60)
    assert reservation.tokens == 60
    assert ledger.balance("acme").held == 60
    with pytest.raises(BudgetExceeded):
        ledger.reserve("acme", 41)
    ledger.close()


@pytest.mark.anyio
async def test_the_async_store_after_a_restart(durable: RedisServer, clock: FakeClock) -> None:
    ledger = open_async_ledger(durable.url, clock=clock)
    await ledger.set_budget("acme", Budget(1000))
    await ledger.commit(await ledger.reserve("acme", 10), 10)
    durable.restart()
    assert await ledger.commit(await ledger.reserve("acme", 10), 4) == 6
    assert (await ledger.balance("acme")).spent == 14
    await ledger.close()


def _every_other_call(ledger: Ledger, held: Reservation) -> list[Callable[[], Any]]:
    return [
        lambda: ledger.balance("acme"),
        lambda: ledger.commit(held, 5),
        lambda: ledger.release(held),
        ledger.expire,
        lambda: ledger.usage("acme"),
        lambda: ledger.events("acme"),
        ledger.get_state,
        lambda: ledger.set_state("p", {}, expected_version=0),
        lambda: ledger.reset("acme"),
    ]


def test_a_restart_without_persistence_refuses_until_budgets_are_applied(
    volatile: RedisServer, clock: FakeClock
) -> None:
    budgets = {"acme": Budget(1000), "beta": Budget(50, "1d")}
    ledger = open_ledger(volatile.url, clock=clock)
    assert ledger.apply_budgets(budgets) == 2
    held = ledger.reserve("acme", 100)
    other = open_ledger(volatile.url, clock=clock)  # another worker, which has seen the budgets too
    assert other.balance("beta").limit == 50
    volatile.restart()  # no AOF, no RDB: the server comes back empty
    for worker in (ledger, other):
        with pytest.raises(LedgerDataLost, match="lost the ledger's data") as refused:
            worker.reserve("acme", 10**9)
        assert isinstance(refused.value, LedgerUnavailable)
        for call in _every_other_call(worker, held):
            with pytest.raises(LedgerDataLost):
                call()
        assert worker.get_budget("acme") is None  # budget reads and writes are allowed: they are the way out
    assert ledger.apply_budgets(budgets) == 2  # e.g. `clear-integrations ledger apply URL budgets.toml`
    for worker in (ledger, other):
        with pytest.raises(BudgetExceeded):
            worker.reserve("acme", 10**9)
        with pytest.raises(BudgetExceeded):
            worker.reserve("beta", 51)
        assert worker.release(worker.reserve("beta", 50)) == 50
    ledger.close()
    other.close()


def test_a_fresh_ledger_and_a_flushless_restart_are_not_data_loss(volatile: RedisServer, clock: FakeClock) -> None:
    ledger = open_ledger(volatile.url, clock=clock)  # no budget was ever set: there is nothing to forget
    ledger.commit(ledger.reserve("free", 10), 10)
    volatile.restart()
    assert ledger.reserve("free", 10).tokens == 10
    ledger.set_budget("acme", Budget(5))
    late = open_ledger(volatile.url, clock=clock)  # opened after the marker was written: it sees it
    volatile.restart()
    with pytest.raises(LedgerDataLost):
        late.reserve("acme", 1)
    late.set_budget("acme", Budget(5))  # one budget written again lifts the refusal
    assert ledger.reserve("acme", 5).tokens == 5
    ledger.close()
    late.close()


@pytest.mark.anyio
async def test_the_async_store_notices_data_loss(volatile: RedisServer, clock: FakeClock) -> None:
    ledger = open_async_ledger(volatile.url, clock=clock)
    await ledger.set_budget("acme", Budget(100))
    await ledger.reserve("acme", 10)
    volatile.restart()
    with pytest.raises(LedgerDataLost):
        await ledger.reserve("acme", 10**9)
    assert await ledger.get_budget("acme") is None
    await ledger.set_budget("acme", Budget(100))
    with pytest.raises(BudgetExceeded):
        await ledger.reserve("acme", 101)
    await ledger.close()


def test_a_fail_open_ledger_serves_from_its_snapshot_while_the_data_is_lost(
    volatile: RedisServer, clock: FakeClock
) -> None:
    ledger = FailoverLedger(open_ledger(volatile.url, clock=clock), mode="open", share=0.5, clock=clock)
    ledger.set_budget("acme", Budget(1000))
    ledger.commit(ledger.reserve("acme", 200), 200)  # the snapshot: 800 left
    volatile.restart()
    granted = ledger.reserve_up_to("acme", 10_000)
    assert granted.tokens == 400 and ledger.status().active == "fallback"
    assert "lost the ledger's data" in (ledger.status().last_error or "")
    ledger.commit(granted, 300)
    clock.advance(10)
    ledger.balance("acme")  # the probe cannot replay onto a store that lost its budgets
    assert ledger.status().active == "fallback" and ledger.status().pending == 1
    with pytest.raises(ClearError):
        ledger.set_budget("acme", Budget(1000))  # budget changes need the primary, which the ledger is not on
    open_ledger(volatile.url).set_budget("acme", Budget(1000))  # an operator re-applies the budgets
    clock.advance(10)
    assert ledger.balance("acme").spent == 300  # replayed on the primary after the switch back
    assert ledger.status().active == "primary"
    ledger.close()


def test_flapping_outages_end_with_the_exact_spend_without_reconcile(durable: RedisServer, tmp_path: Path) -> None:
    """Redis killed and restarted three times under four threads of a fail-open ledger (SQLite fallback): every
    commit that returned is on Redis exactly once at the end, with no manual reconcile()."""
    fallback = f"sqlite:///{tmp_path / 'fallback.db'}"
    ledger = FailoverLedger(lambda: open_ledger(durable.url), mode="open", fallback=fallback, retry_after=0.05)
    ledger.set_budget("acme", Budget(10**9))
    done = [0] * 4
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            while not stop.is_set():
                ledger.commit(ledger.reserve(f"acme/w{index}", 10), 7)
                done[index] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    sides = set()
    for _ in range(3):
        time.sleep(0.3)
        durable.kill()
        time.sleep(0.3)
        sides.add(ledger.status().active)
        durable.start()
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    deadline = time.monotonic() + 10
    while (ledger.status().active, ledger.status().pending) != ("primary", 0) and time.monotonic() < deadline:
        time.sleep(0.06)
        ledger.balance("acme")  # an ordinary call probes and replays
    assert "fallback" in sides and ledger.status().pending == 0
    truth = open_ledger(durable.url)
    assert truth.balance("acme").spent == 7 * sum(done)
    assert truth.usage("acme").calls == sum(done)
    truth.close()
    ledger.close()
