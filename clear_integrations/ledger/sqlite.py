"""The SQLite store (``sqlite:///relative.db``, ``sqlite:////absolute.db``): one file shared by processes.

Each operation runs inside a ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so two
processes never both read-then-write), in WAL mode with ``synchronous=FULL`` so a committed usage
survives a crash of the process or the machine. ``busy_timeout`` lets several processes queue for the
lock. Within a process, one connection is shared, and concurrent callers share transactions (group
commit: one fsync for every step queued meanwhile), which is what makes durable throughput scale with
threads when an fsync costs milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ClearError, LedgerUnavailable
from . import core
from .accounts import Scope
from .checks import DEFAULT_RETENTION, Charge
from .core import AccountState, EventRow, ReservationRecord
from .model import Balance, Budget, Event, Reservation, UsageTotals

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account TEXT PRIMARY KEY, tenant TEXT NOT NULL, limit_tokens INTEGER, mode TEXT NOT NULL,
    window TEXT, window_seconds INTEGER NOT NULL, window_start INTEGER NOT NULL,
    spent INTEGER NOT NULL, held INTEGER NOT NULL, reset_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, scope TEXT NOT NULL, tokens INTEGER NOT NULL,
    requested INTEGER NOT NULL, state TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    charged INTEGER NOT NULL, returned INTEGER NOT NULL, late INTEGER NOT NULL, closed REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reservations_leases ON reservations (tenant, expires) WHERE state = 'held';
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, tenant TEXT NOT NULL,
    account TEXT NOT NULL, rid TEXT, tokens INTEGER NOT NULL, returned INTEGER NOT NULL,
    prompt INTEGER NOT NULL, completion INTEGER NOT NULL, reasoning INTEGER NOT NULL,
    estimated INTEGER NOT NULL, late INTEGER NOT NULL, over INTEGER NOT NULL, note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant, seq);
CREATE TABLE IF NOT EXISTS state (pool TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL);
"""

_ACCOUNT_COLUMNS = "account, limit_tokens, mode, window, window_seconds, window_start, spent, held, reset_seq"
_UPSERT_ACCOUNT = f"INSERT OR REPLACE INTO accounts ({_ACCOUNT_COLUMNS}, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_RESERVATION_COLUMNS = "id, scope, tokens, requested, state, created, expires, charged, returned, late, closed"
_UPSERT_RESERVATION = (
    f"INSERT OR REPLACE INTO reservations ({_RESERVATION_COLUMNS}, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_EVENT_COLUMNS = (
    "seq, ts, kind, account, rid, tokens, returned, prompt, completion, reasoning, estimated, late, over, note"
)
_INSERT_EVENT = f"INSERT INTO events ({_EVENT_COLUMNS}, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _tenant(name: str) -> str:
    return name.partition("/")[0]


def _event(row: tuple[Any, ...]) -> Event:
    return core.event_from_row(row)


def _account_row(a: AccountState) -> tuple[Any, ...]:
    return (a.name, a.limit, a.mode, a.window, a.window_seconds, a.window_start, a.spent, a.held, a.reset_seq)


def _reservation_row(r: ReservationRecord) -> tuple[Any, ...]:
    return (
        r.id, r.scope, r.tokens, r.requested, r.state, r.created, r.expires, r.charged, r.returned, r.late, r.closed,
    )  # fmt: skip


def _record(row: tuple[Any, ...]) -> ReservationRecord:
    rid, scope, tokens, requested, state, created, expires, charged, returned, late, closed = row
    late = bool(late)
    return ReservationRecord(rid, scope, tokens, requested, state, created, expires, charged, returned, late, closed)


class _Txn:
    """A :class:`~.core.Txn` over one open ``BEGIN IMMEDIATE`` transaction; :meth:`flush` writes changes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._accounts: dict[str, tuple[AccountState, tuple[Any, ...] | None]] = {}
        self._reservations: dict[str, ReservationRecord] = {}
        self._dirty: set[str] = set()
        self._events: list[EventRow] = []
        self._seq: int | None = None

    def account(self, name: str) -> AccountState:
        entry = self._accounts.get(name)
        if entry is None:
            row = self._conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account = ?", (name,)).fetchone()
            state = AccountState(name) if row is None else AccountState(*row)
            entry = self._accounts[name] = (state, None if row is None else tuple(row))
        return entry[0]

    def reservation(self, rid: str) -> ReservationRecord | None:
        record = self._reservations.get(rid)
        if record is None:
            row = self._conn.execute(f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE id = ?", (rid,)).fetchone()
            if row is not None:
                record = self._reservations[rid] = _record(row)
        return record

    def save_reservation(self, record: ReservationRecord) -> None:
        self._reservations[record.id] = record
        self._dirty.add(record.id)

    def due(self, tenant: str, now: float) -> list[ReservationRecord]:
        rows = self._conn.execute(
            f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE tenant = ? AND state = 'held' AND expires <= ?",
            (tenant, now),
        ).fetchall()
        found = {row[0]: self._reservations.get(row[0]) or _record(row) for row in rows}
        for record in self._reservations.values():  # not yet written by an earlier step of this batch
            if record.expires <= now and _tenant(record.scope) == tenant:
                found[record.id] = record
        return [record for record in found.values() if record.state == "held"]

    def next_seq(self) -> int:
        if self._seq is None:
            row = self._conn.execute("SELECT seq FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            self._seq = 0 if row is None else int(row[0])
        self._seq += 1
        return self._seq

    def append(self, row: EventRow) -> None:
        self._events.append(row)

    def flush(self) -> None:
        """Write what changed; the step may go on after a flush (it reads the written rows back)."""
        conn = self._conn
        for state, loaded in self._accounts.values():
            row = _account_row(state)
            if row != loaded and (loaded is not None or state.limit is not None or state.spent or state.held):
                conn.execute(_UPSERT_ACCOUNT, (*row, _tenant(state.name)))
        for rid in self._dirty:
            record = self._reservations[rid]
            conn.execute(_UPSERT_RESERVATION, (*_reservation_row(record), _tenant(record.scope)))
        if self._events:
            conn.executemany(_INSERT_EVENT, [(*row, _tenant(row[3])) for row in self._events])
        self._accounts.clear()
        self._reservations.clear()
        self._dirty.clear()
        self._events.clear()


class _Request:
    """One caller's step waiting in the group-commit queue."""

    __slots__ = ("done", "durable", "error", "function", "result")

    def __init__(self, function: Callable[[_Txn], Any], durable: bool) -> None:
        self.function = function
        self.durable = durable
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class SQLiteStore:
    """A :class:`~.store.Store` in one SQLite file (see the module docstring)."""

    def __init__(self, url: str, path: str, *, retention: float = DEFAULT_RETENTION, timeout: float = 60.0) -> None:
        self.url = url
        self._retention = retention
        self._lock = threading.Lock()  # the connection: one transaction or read at a time
        self._ready = threading.Condition(threading.Lock())  # the group-commit queue
        self._queue: list[_Request] = []
        self._leading = False
        self._durable = True
        try:
            self._conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        except sqlite3.Error as exc:
            raise LedgerUnavailable(url, exc) from exc

    def _step(self, function: Callable[[_Txn], _T], *, durable: bool = True) -> _T:
        """Run ``function`` atomically and durably, with group commit.

        Callers queue their steps; one of them (the leader) runs every queued step in ONE
        ``BEGIN IMMEDIATE`` transaction, in order, then commits (one fsync for the batch) and wakes the
        others. Each step sees the effects of the steps before it. A step that raises a
        :class:`ClearError` (a refusal, an unknown reservation) has changed nothing but lazy expiries and
        window rolls, so the batch goes on; any other failure rolls the whole batch back.

        A batch with a ``durable`` step (commit, budgets, reset, state) is fsynced before anyone returns
        (``synchronous=FULL``). Reserve, release, expire and balance alone are written to the WAL without
        an fsync (``NORMAL``): they survive a killed process, and the fsync of the next commit makes them
        durable too. Only a power loss can undo such a step, and then the process that holds the
        reservation is gone with it (the lease would have released it anyway).
        """
        request = _Request(function, durable)
        with self._ready:
            self._queue.append(request)
            while self._leading and not request.done:
                self._ready.wait()
            batch = None
            if not request.done:
                self._leading = True
                batch, self._queue = self._queue, []
        if batch is not None:
            try:
                self._execute(batch)
            finally:
                with self._ready:
                    self._leading = False
                    self._ready.notify_all()
        if request.error is not None:
            raise request.error
        result: _T = request.result
        return result

    def _execute(self, batch: list[_Request]) -> None:
        with self._lock:
            conn = self._conn
            try:
                durable = any(request.durable for request in batch)
                if durable != self._durable:
                    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                    self._durable = durable
                conn.execute("BEGIN IMMEDIATE")
                txn = _Txn(conn)
                for request in batch:
                    try:
                        request.result = request.function(txn)
                    except ClearError as exc:
                        request.error = exc
                txn.flush()
                conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                error = LedgerUnavailable(self.url, exc) if isinstance(exc, sqlite3.Error) else exc
                for request in batch:
                    request.error, request.result = error, None
            finally:
                for request in batch:
                    request.done = True

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _read(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, parameters).fetchall()
            except sqlite3.Error as exc:
                raise LedgerUnavailable(self.url, exc) from exc

    def set_budget(self, scope: Scope, budget: Budget | None, now: float) -> None:
        self._step(lambda txn: core.set_budget(txn, scope, budget, now))

    def get_budget(self, scope: Scope) -> Budget | None:
        rows = self._read(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account = ?", (scope.name,))
        return AccountState(*rows[0]).budget() if rows else None

    def reserve(
        self, scope: Scope, tokens: int, minimum: int | None, lease: float, rid: str, now: float
    ) -> Reservation:
        return self._step(lambda txn: core.reserve(txn, scope, tokens, minimum, lease, rid, now), durable=False)

    def commit(self, rid: str, charge: Charge, now: float) -> int:
        return self._step(lambda txn: core.commit(txn, rid, charge, now))

    def release(self, rid: str, now: float) -> int:
        return self._step(lambda txn: core.release(txn, rid, now), durable=False)

    def expire(self, now: float) -> int:
        def sweep(txn: _Txn) -> int:
            tenants = self._conn.execute(
                "SELECT DISTINCT tenant FROM reservations WHERE state = 'held' AND expires <= ?", (now,)
            ).fetchall()
            count = sum(core.expire_due(txn, tenant, now) for (tenant,) in tenants)
            txn.flush()
            self._conn.execute(
                "DELETE FROM reservations WHERE state != 'held' AND closed < ?", (now - self._retention,)
            )
            return count

        return self._step(sweep, durable=False)

    def balance(self, scope: Scope, now: float) -> Balance:
        return self._step(lambda txn: core.balance(txn, scope, now), durable=False)

    def usage(self, scope: Scope, since: float | None) -> UsageTotals:
        session = "" if scope.name == scope.tenant else " AND account = ?"
        rows = self._read(
            "SELECT COALESCE(SUM(prompt), 0), COALESCE(SUM(completion), 0), COALESCE(SUM(reasoning), 0),"
            " COALESCE(SUM(tokens), 0), COUNT(*), COALESCE(SUM(estimated), 0) FROM events"
            f" WHERE tenant = ?{session} AND kind = 'commit' AND ts >= ?"
            " AND seq > COALESCE((SELECT reset_seq FROM accounts WHERE account = ?), 0)",
            (scope.tenant, *([scope.name] if session else []), -1e300 if since is None else since, scope.name),
        )
        return UsageTotals(*(int(value) for value in rows[0]))

    def events(self, scope: Scope | None, since: float | None, limit: int | None) -> list[Event]:
        where: list[str] = ["ts >= ?"]
        parameters: list[Any] = [-1e300 if since is None else since]
        if scope is not None:
            where.append("tenant = ?")
            parameters.append(scope.tenant)
            if scope.name != scope.tenant:
                where.append("account = ?")
                parameters.append(scope.name)
        sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_event(row) for row in reversed(self._read(sql, tuple(parameters)))]

    def reset(self, scope: Scope, now: float) -> None:
        self._step(lambda txn: core.reset(txn, scope, now))

    def get_state(self, pool: str) -> tuple[dict[str, Any] | None, int]:
        rows = self._read("SELECT value, version FROM state WHERE pool = ?", (pool,))
        return (json.loads(rows[0][0]), int(rows[0][1])) if rows else (None, 0)

    def set_state(self, pool: str, value: str, expected_version: int) -> bool:
        def swap(_: _Txn) -> bool:
            row = self._conn.execute("SELECT version FROM state WHERE pool = ?", (pool,)).fetchone()
            if (0 if row is None else int(row[0])) != expected_version:
                return False
            new = (pool, value, expected_version + 1)
            self._conn.execute("INSERT OR REPLACE INTO state (pool, value, version) VALUES (?, ?, ?)", new)
            return True

        return self._step(swap)

    def close(self) -> None:
        """Close the connection (a checkpoint leaves the WAL folded into the database file)."""
        with self._lock:
            self._conn.close()
