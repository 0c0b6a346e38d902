"""Token amounts are plain Python ints inside the ledger, whatever integer type the caller used (numpy's
included), on every backend; and on SQLite one failing step of a group-commit batch fails alone."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clear_integrations.errors import ClearError, LedgerError
from clear_integrations.ledger import Budget, Usage, open_ledger
from clear_integrations.ledger.accounts import parse_scope
from clear_integrations.ledger.sqlite import SQLiteStore, _Request, _Txn

from .conftest import Backend, FakeClock

NUMPY_INTS: list[Any] = [np.int64, np.int32, np.uint16, np.int8]


def _plain(*values: Any) -> bool:
    return all(type(value) is int for value in values)


@pytest.mark.parametrize("kind", NUMPY_INTS)
def test_numpy_amounts_become_ints(backend: Backend, clock: FakeClock, kind: Any) -> None:
    ledger = backend.open(clock)
    budget = Budget(kind(100), window="1d")
    assert _plain(budget.tokens) and budget == Budget(100, "1d")
    usage = Usage(prompt=kind(3), completion=kind(4), reasoning=kind(2))
    assert _plain(usage.prompt, usage.completion, usage.reasoning, usage.total)
    ledger.set_budget("acme", budget)
    ledger.set_budget("acme/s", Budget(kind(60)))
    first = ledger.reserve("acme/s", kind(20))
    assert _plain(first.tokens, first.requested)
    assert ledger.commit(first, kind(15)) == 5
    second = ledger.reserve_up_to("acme/s", kind(90), minimum=kind(0))
    assert second.tokens == 45 and _plain(second.tokens)
    assert ledger.commit(second, usage) == 38
    ledger.charge("acme/s", kind(5))
    ledger.reserve_up_to("acme", kind(7), minimum=kind(7), lease=np.float64(30.0))
    for account in ("acme", "acme/s"):
        balance = ledger.balance(account)
        assert _plain(balance.limit, balance.spent, balance.held, balance.remaining, balance.over)
    assert (ledger.balance("acme").spent, ledger.balance("acme").held) == (15 + 7 + 5, 7)
    assert ledger.get_budget("acme") == Budget(100, "1d") and _plain(ledger.get_budget("acme").tokens)  # type: ignore[union-attr]
    totals = ledger.usage("acme")
    assert (totals.total, totals.prompt, totals.reasoning, totals.calls) == (27, 3, 2, 3)
    assert len(ledger.events("acme", limit=np.int64(2))) == 2
    assert ledger.set_state("p", {"x": 1}, expected_version=np.int64(0))
    if backend.name != "memory":  # a second process (or a reopened file) reads the same plain ints
        again = backend.open(clock)
        assert again.balance("acme").spent == 27 and again.reserve("acme", 1).tokens == 1


def test_sqlite_stores_integers_not_blobs(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "l.db"
    ledger = open_ledger(f"sqlite:///{path}", clock=clock)
    ledger.set_budget("acme", Budget(np.int64(100)))
    ledger.commit(ledger.reserve("acme", np.int64(10)), np.int64(4))
    ledger.close()
    with sqlite3.connect(path) as db:
        kinds = db.execute("SELECT DISTINCT typeof(limit_tokens), typeof(spent), typeof(held) FROM accounts").fetchall()
        assert kinds == [("integer", "integer", "integer")]
        assert db.execute("SELECT COUNT(*) FROM events WHERE typeof(tokens) != 'integer'").fetchone() == (0,)


def test_sqlite_reads_blobs_written_by_an_older_version(tmp_path: Path, clock: FakeClock) -> None:
    """Before amounts were normalised, an np.int64 landed in SQLite as an 8-byte BLOB: such a file heals."""
    path = tmp_path / "old.db"
    ledger = open_ledger(f"sqlite:///{path}", clock=clock)
    ledger.set_budget("acme", Budget(100))
    ledger.commit(ledger.reserve("acme", 10), 4)
    held = ledger.reserve("acme", 6)
    ledger.close()
    blob = np.int64(100).tobytes()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE accounts SET limit_tokens = ?, spent = ?", (blob, np.int64(4).tobytes()))
        six = np.int64(6).tobytes()
        db.execute("UPDATE reservations SET tokens = ?, requested = ? WHERE id = ?", (six, six, held.id))
    again = open_ledger(f"sqlite:///{path}", clock=clock)
    assert again.get_budget("acme") == Budget(100)
    balance = again.balance("acme")
    assert (balance.limit, balance.spent, balance.held, balance.remaining) == (100, 4, 6, 90)
    assert again.commit(held.id, 5) == 1
    assert again.reserve("acme", 90).tokens == 90
    again.close()
    with sqlite3.connect(path) as db:
        kinds = db.execute("SELECT typeof(limit_tokens), typeof(spent) FROM accounts").fetchone()
        assert kinds == ("integer", "integer")


def _run_batch(store: SQLiteStore, steps: list[Any]) -> list[_Request]:
    batch = [_Request(step, True) for step in steps]
    store._execute(batch)
    return batch


def test_one_failing_step_does_not_fail_its_batch(tmp_path: Path, clock: FakeClock) -> None:
    ledger = open_ledger(f"sqlite:///{tmp_path / 'b.db'}", clock=clock)
    store = ledger.store
    assert isinstance(store, SQLiteStore)
    ledger.set_budget("good", Budget(1000))
    ledger.set_budget("bad", Budget(1000))
    now, good = clock(), parse_scope("good")
    from clear_integrations.ledger import core

    def raw_error(txn: _Txn) -> None:
        txn.account("bad").held += 5
        raise TypeError("a bug in one step")

    def unbindable(txn: _Txn) -> None:  # fails only when the batch is written
        txn.account("bad").spent = object()  # type: ignore[assignment]

    batch = _run_batch(store, [
        lambda txn: core.reserve(txn, good, 10, None, 300.0, "good#1", now),
        raw_error,
        lambda txn: core.reserve(txn, good, 20, None, 300.0, "good#2", now),
        unbindable,
        lambda txn: core.commit(txn, "good#1", core.Charge(7), now),
    ])  # fmt: skip
    assert [r.error is None for r in batch] == [True, False, True, False, True]
    assert batch[4].result == 3
    for failed in (batch[1], batch[3]):
        assert isinstance(failed.error, LedgerError) and not isinstance(failed.error, TypeError)
    assert (ledger.balance("good").spent, ledger.balance("good").held) == (7, 20)
    assert (ledger.balance("bad").spent, ledger.balance("bad").held) == (0, 0)
    ledger.close()


def test_a_healthy_tenant_is_unaffected_by_a_failing_neighbour(tmp_path: Path) -> None:
    """Threads share transactions; a step that fails inside them fails alone (here: a broken store method)."""
    ledger = open_ledger(f"sqlite:///{tmp_path / 'c.db'}")
    ledger.set_budget("healthy", Budget(10**9))
    errors: list[BaseException] = []
    done = [0]

    def healthy() -> None:
        try:
            for _ in range(150):
                ledger.commit(ledger.reserve("healthy", 3), 2)
                done[0] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    def poisoned() -> None:
        for _ in range(150):
            with pytest.raises(ClearError):
                ledger.store._step(lambda txn: txn.account("sick").__setattr__("held", "x") or 1 / 0)  # type: ignore[attr-defined]

    threads = [threading.Thread(target=healthy) for _ in range(4)] + [threading.Thread(target=poisoned)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    balance = ledger.balance("healthy")
    assert (done[0], balance.spent, balance.held) == (600, 1200, 0)
    ledger.close()
