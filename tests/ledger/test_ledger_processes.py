"""Several processes on one SQLite file or one Redis; a process killed with SIGKILL leaks nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clear_integrations.ledger import Budget

from .accounting import LIMIT, SESSION_LIMIT, Settled, check_accounting, within_limit
from .conftest import T0, Backend, FakeClock

WORKER = Path(__file__).with_name("ledger_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _spawn(*args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(WORKER), *(str(arg) for arg in args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_4_processes_share_one_budget(shared_backend: Backend, clock: FakeClock) -> None:
    ledger = shared_backend.open(clock)
    ledger.set_budget("acme", Budget(LIMIT))
    ledger.set_budget("acme/s0", Budget(SESSION_LIMIT))
    children = [_spawn("race", shared_backend.url, shared_backend.prefix, seed, 60, T0) for seed in range(4)]
    violations = []
    while any(child.poll() is None for child in children):
        balance = ledger.balance("acme")
        if not within_limit(balance, LIMIT):
            violations.append(balance)
        time.sleep(0.01)
    settled: list[Settled] = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        settled.extend(Settled(*row) for row in json.loads(out))
    assert violations == []
    check_accounting(ledger, settled)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_leaks_nothing_and_loses_no_commit(shared_backend: Backend, clock: FakeClock) -> None:
    setup = shared_backend.open(clock)
    setup.set_budget("acme", Budget(100_000))
    setup.close()
    child = _spawn("crash", shared_backend.url, shared_backend.prefix, T0, 5)
    assert child.stdout is not None
    held: list[str] = []
    committed: list[str] = []
    try:
        while len(committed) < 30:
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else "worker died"
            kind, rid = line.split()
            (held if kind == "held" else committed).append(rid)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    ledger = shared_backend.open(clock)  # reopened after the kill
    events = ledger.events("acme")
    commits = {e.reservation_id: e.tokens for e in events if e.kind == "commit"}
    assert all(commits.get(rid) == 7 for rid in committed)  # every commit that returned survived
    before = ledger.balance("acme")
    assert before.spent == sum(commits.values())
    assert before.held >= 5 * 100  # the dead process's reservations are held until their lease runs out
    assert ledger.commit(committed[0], 7) == 3  # and stay idempotent

    clock.advance(300)  # past the default lease
    after = ledger.balance("acme")
    assert after.held == 0
    assert after.remaining == 100_000 - after.spent
    assert after.spent == before.spent
    assert {e.reservation_id for e in ledger.events("acme") if e.kind == "expire"} >= set(held)
