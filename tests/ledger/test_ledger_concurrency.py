"""Threads and asyncio tasks racing for one hard budget: no overspend, no lost token."""

from __future__ import annotations

import random
import threading

import anyio
import pytest

from clear_integrations.errors import BudgetExceeded
from clear_integrations.ledger import AsyncLedger, Budget, Ledger, Usage

from .accounting import LIMIT, SESSION_LIMIT, Settled, check_accounting, within_limit
from .conftest import Backend, FakeClock


def _settle(rng: random.Random, granted: int) -> tuple[int | Usage, int, bool]:
    """Random usage <= granted: (what to commit, its total, commit or release)."""
    if rng.random() < 0.15:
        return 0, 0, False
    used = rng.randint(0, granted)
    if rng.random() < 0.5 and used:
        completion = rng.randint(0, used)
        return Usage(prompt=used - completion, completion=completion, reasoning=completion // 2), used, True
    return used, used, True


@pytest.mark.timeout(120)
def test_32_threads(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(LIMIT))
    ledger.set_budget("acme/s0", Budget(SESSION_LIMIT))
    settled: list[Settled] = []
    violations: list[object] = []
    lock = threading.Lock()
    start = threading.Barrier(32)

    def worker(index: int) -> None:
        rng = random.Random(index)
        mine: list[Settled] = []
        start.wait()
        for _ in range(20):
            scope = f"acme/s{index % 4}"
            try:
                if rng.random() < 0.3:
                    r = ledger.reserve_up_to(scope, rng.randint(1, 400), minimum=1)
                else:
                    r = ledger.reserve(scope, rng.randint(1, 400))
            except BudgetExceeded as refused:
                if any(left < 0 for left in refused.remaining.values()):
                    violations.append(refused)
                continue
            used, total, commit = _settle(rng, r.tokens)
            returned = ledger.commit(r, used) if commit else ledger.release(r)
            mine.append(Settled(r.tokens, total, returned, commit))
            if rng.random() < 0.2:
                for account, limit in (("acme", LIMIT), ("acme/s0", SESSION_LIMIT)):
                    balance = ledger.balance(account)
                    if not within_limit(balance, limit):
                        violations.append(balance)
        with lock:
            settled.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=100)
    assert not any(thread.is_alive() for thread in threads)
    assert violations == []
    check_accounting(ledger, settled)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_256_asyncio_tasks(backend: Backend, clock: FakeClock) -> None:
    async with backend.open_async(clock) as ledger:
        settled = await _race(ledger)
    check_accounting(backend.open(clock), settled)


async def _race(ledger: AsyncLedger) -> list[Settled]:
    await ledger.set_budget("acme", Budget(LIMIT))
    await ledger.set_budget("acme/s0", Budget(SESSION_LIMIT))
    settled: list[Settled] = []
    violations: list[object] = []

    async def task(index: int) -> None:
        rng = random.Random(1000 + index)
        for _ in range(4):
            scope = f"acme/s{index % 4}"
            try:
                if rng.random() < 0.3:
                    r = await ledger.reserve_up_to(scope, rng.randint(1, 400))
                else:
                    r = await ledger.reserve(scope, rng.randint(1, 400))
            except BudgetExceeded:
                continue
            await anyio.sleep(0)  # let other tasks run while this one "calls the model"
            used, total, commit = _settle(rng, r.tokens)
            returned = await ledger.commit(r, used) if commit else await ledger.release(r)
            settled.append(Settled(r.tokens, total, returned, commit))
            if rng.random() < 0.2:
                balance = await ledger.balance("acme")
                if not within_limit(balance, LIMIT):
                    violations.append(balance)

    async with anyio.create_task_group() as group:
        for index in range(256):
            group.start_soon(task, index)
    assert violations == []
    return settled
