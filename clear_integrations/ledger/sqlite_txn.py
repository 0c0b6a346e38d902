"""The rows of the SQLite store: its schema, the conversions between rows and the core's state, and the
:class:`~.core.Txn` that one ``BEGIN IMMEDIATE`` transaction of the store runs the core in (see :mod:`.sqlite`)."""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

from . import core
from .core import AccountState, EventRow, ReservationRecord
from .model import Event

__all__ = ["ACCOUNT_COLUMNS", "EVENT_COLUMNS", "SCHEMA", "SqliteTxn", "event", "healed", "tenant_of"]

SCHEMA = """
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

ACCOUNT_COLUMNS = "account, limit_tokens, mode, window, window_seconds, window_start, spent, held, reset_seq"
_UPSERT_ACCOUNT = f"INSERT OR REPLACE INTO accounts ({ACCOUNT_COLUMNS}, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_RESERVATION_COLUMNS = "id, scope, tokens, requested, state, created, expires, charged, returned, late, closed"
_UPSERT_RESERVATION = (
    f"INSERT OR REPLACE INTO reservations ({_RESERVATION_COLUMNS}, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
EVENT_COLUMNS = (
    "seq, ts, kind, account, rid, tokens, returned, prompt, completion, reasoning, estimated, late, over, note"
)
_INSERT_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def tenant_of(name: str) -> str:
    return name.partition("/")[0]


def _whole(value: Any) -> Any:
    """A value read from an integer column: a BLOB that an older version wrote for a numpy integer (its raw
    bytes, in this machine's byte order) is read back as the int it was; anything else is returned as is."""
    if type(value) is bytes and len(value) in (1, 2, 4, 8):
        return int.from_bytes(value, sys.byteorder, signed=len(value) == 8)
    return value


def healed(row: Any) -> tuple[Any, ...]:
    """A row with such BLOBs read back as ints (the next write of the row stores ints)."""
    return tuple(map(_whole, row)) if bytes in map(type, row) else tuple(row)


def event(row: tuple[Any, ...]) -> Event:
    return core.event_from_row(healed(row))


def _account_row(a: AccountState) -> tuple[Any, ...]:
    return (a.name, a.limit, a.mode, a.window, a.window_seconds, a.window_start, a.spent, a.held, a.reset_seq)


def _reservation_row(r: ReservationRecord) -> tuple[Any, ...]:
    return (
        r.id, r.scope, r.tokens, r.requested, r.state, r.created, r.expires, r.charged, r.returned, r.late, r.closed,
    )  # fmt: skip


def _record(row: tuple[Any, ...]) -> ReservationRecord:
    rid, scope, tokens, requested, state, created, expires, charged, returned, late, closed = healed(row)
    late = bool(late)
    return ReservationRecord(rid, scope, tokens, requested, state, created, expires, charged, returned, late, closed)


class SqliteTxn:
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
            row = self._conn.execute(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account = ?", (name,)).fetchone()
            state = AccountState(name) if row is None else AccountState(*healed(row))
            entry = self._accounts[name] = (state, None if row is None else tuple(row))  # a healed row is rewritten
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
            if record.expires <= now and tenant_of(record.scope) == tenant:
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
                conn.execute(_UPSERT_ACCOUNT, (*row, tenant_of(state.name)))
        for rid in self._dirty:
            record = self._reservations[rid]
            conn.execute(_UPSERT_RESERVATION, (*_reservation_row(record), tenant_of(record.scope)))
        if self._events:
            conn.executemany(_INSERT_EVENT, [(*row, tenant_of(row[3])) for row in self._events])
        self._accounts.clear()
        self._reservations.clear()
        self._dirty.clear()
        self._events.clear()


