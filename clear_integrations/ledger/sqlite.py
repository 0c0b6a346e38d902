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
from .core import AccountState
from .model import Balance, Budget, Event, Reservation, UsageTotals
from .sqlite_txn import ACCOUNT_COLUMNS, EVENT_COLUMNS, SCHEMA, SqliteTxn, event, healed

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")
_Txn = SqliteTxn  # the name the store's steps are typed with


class _Request:
    """One caller's step waiting in the group-commit queue."""

    __slots__ = ("done", "durable", "error", "function", "result")

    def __init__(self, function: Callable[[SqliteTxn], Any], durable: bool) -> None:
        self.function = function
        self.durable = durable
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class _StepFailed(Exception):
    """One step of a batch raised ``cause`` (not a :class:`ClearError`): it fails alone."""

    def __init__(self, request: _Request, cause: Exception) -> None:
        super().__init__(repr(cause))
        self.request = request
        self.cause = cause


def _disk_full(exc: BaseException) -> bool:
    """Whether SQLite failed because the disk (or the database's size limit) is full (``SQLITE_FULL``)."""
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)
    )


def _isolable(exc: BaseException) -> bool:
    """Whether a failure may belong to one step of a batch (a value that cannot be written), rather than to the
    database (locked, full, I/O, corrupt), so that running the steps one by one fails only the step at fault."""
    if isinstance(exc, ClearError):
        return False
    bad_value = (sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.IntegrityError, sqlite3.DataError)
    return isinstance(exc, bad_value) or not isinstance(exc, sqlite3.Error)


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
        self._wal_full = False
        try:
            self._conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
            # plain reads (budgets, usage, events, state) on a connection of their own: in WAL mode they read the
            # last commit without waiting for the write lock, which a batch may be queueing for
            self._reader = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._reader.execute("PRAGMA query_only=1")
        except sqlite3.Error as exc:
            raise LedgerUnavailable(url, exc) from exc
        self._read_lock = threading.Lock()

    def _step(self, function: Callable[[SqliteTxn], _T], *, durable: bool = True) -> _T:
        """Run ``function`` atomically and durably, with group commit.

        Callers queue their steps; one of them (the leader) runs every queued step in ONE
        ``BEGIN IMMEDIATE`` transaction, in order, then commits (one fsync for the batch) and wakes the
        others. Each step sees the effects of the steps before it. A step that raises a
        :class:`ClearError` (a refusal, an unknown reservation) has changed nothing but lazy expiries and
        window rolls, so the batch goes on; any other failure of a step fails that step alone (see
        :meth:`_run_batch`), and only a failure of the database itself fails the whole batch.

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
            try:
                self._run_batch(batch)
            finally:
                for request in batch:
                    request.done = True

    def _run_batch(self, batch: list[_Request]) -> None:
        """Run the batch in one transaction; a failure fails only the steps it belongs to.

        A step that raises something else than a :class:`ClearError` (a bug, a value no column can take) fails
        alone: the transaction is rolled back and the batch runs again without it. A write that fails at the
        end of the batch (a value SQLite cannot bind) is retried step by step, each in its own transaction. A
        failure of the database itself (locked, full, I/O) fails the whole batch with ``LedgerUnavailable``.
        """
        todo, checkpointed = batch, False
        while todo:
            try:
                self._transaction(todo)
                return
            except _StepFailed as failed:
                failed.request.result, failed.request.error = None, LedgerUnavailable(self.url, failed.cause)
                todo = [request for request in todo if request is not failed.request]
            except Exception as exc:
                if _disk_full(exc):
                    self._disk_was_full()
                    if not checkpointed and self._checkpoint():  # space came back: once more
                        checkpointed = True
                        continue
                if len(todo) > 1 and _isolable(exc):
                    for request in todo:
                        self._run_batch([request])
                    return
                error = exc if isinstance(exc, ClearError) else LedgerUnavailable(self.url, exc)
                for request in todo:
                    request.error, request.result = error, None
                return
            except BaseException as exc:  # KeyboardInterrupt and the like: every caller of the batch sees it
                for request in todo:
                    request.error, request.result = exc, None
                return

    def _transaction(self, batch: list[_Request]) -> None:
        conn = self._conn
        if self._wal_full:  # a full disk earlier: give the WAL's space back first, if there is room now
            self._checkpoint()
        try:
            durable = any(request.durable for request in batch)
            if durable != self._durable:
                conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            conn.execute("BEGIN IMMEDIATE")
            txn = SqliteTxn(conn)
            for request in batch:
                request.result = request.error = None  # from an attempt that was rolled back
                try:
                    request.result = request.function(txn)
                except ClearError as exc:
                    request.error = exc
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    raise _StepFailed(request, exc) from exc
            txn.flush()
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _disk_was_full(self) -> None:
        """After a write failed on a full disk: keep the WAL small from now on, and fold it into the database
        before the next batch (see :meth:`_checkpoint`).

        SQLite checkpoints the WAL once it holds 1000 pages (about 4 MB). On a disk with less room than that,
        the WAL fills the disk first, and then no checkpoint can run (it needs room for the database to grow),
        so the ledger would fail forever, even after space is freed, as the WAL eats the freed space first.
        Checkpointing before the next batch (the moment space is freed, it succeeds and truncates the WAL) and
        a WAL kept under 256 KB afterwards let it recover as soon as the disk has room again."""
        self._wal_full = True
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_autocheckpoint=64")
            self._conn.execute("PRAGMA journal_size_limit=262144")

    def _checkpoint(self) -> bool:
        """Fold the WAL into the database file and truncate it; True when that worked (room on the disk)."""
        try:
            busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error:
            return False
        self._wal_full = bool(busy)
        return not busy

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _read(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        with self._read_lock:
            try:
                return self._reader.execute(sql, parameters).fetchall()
            except sqlite3.Error as exc:
                raise LedgerUnavailable(self.url, exc) from exc

    def set_budget(self, scope: Scope, budget: Budget | None, now: float) -> None:
        self._step(lambda txn: core.set_budget(txn, scope, budget, now))

    def get_budget(self, scope: Scope) -> Budget | None:
        rows = self._read(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account = ?", (scope.name,))
        return AccountState(*healed(rows[0])).budget() if rows else None

    def reserve(
        self, scope: Scope, tokens: int, minimum: int | None, lease: float, rid: str, now: float
    ) -> Reservation:
        return self._step(lambda txn: core.reserve(txn, scope, tokens, minimum, lease, rid, now), durable=False)

    def commit(self, rid: str, charge: Charge, now: float) -> int:
        return self._step(lambda txn: core.commit(txn, rid, charge, now))

    def release(self, rid: str, now: float) -> int:
        return self._step(lambda txn: core.release(txn, rid, now), durable=False)

    def expire(self, now: float) -> int:
        def sweep(txn: SqliteTxn) -> int:
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
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [event(row) for row in reversed(self._read(sql, tuple(parameters)))]

    def reset(self, scope: Scope, now: float) -> None:
        self._step(lambda txn: core.reset(txn, scope, now))

    def get_state(self, pool: str) -> tuple[dict[str, Any] | None, int]:
        rows = self._read("SELECT value, version FROM state WHERE pool = ?", (pool,))
        return (json.loads(rows[0][0]), int(rows[0][1])) if rows else (None, 0)

    def set_state(self, pool: str, value: str, expected_version: int) -> bool:
        def swap(_: SqliteTxn) -> bool:
            row = self._conn.execute("SELECT version FROM state WHERE pool = ?", (pool,)).fetchone()
            if (0 if row is None else int(row[0])) != expected_version:
                return False
            new = (pool, value, expected_version + 1)
            self._conn.execute("INSERT OR REPLACE INTO state (pool, value, version) VALUES (?, ?, ?)", new)
            return True

        return self._step(swap)

    def close(self) -> None:
        """Close the connections (a checkpoint leaves the WAL folded into the database file)."""
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._conn.close()
