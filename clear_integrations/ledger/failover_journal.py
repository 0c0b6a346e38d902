"""The journal of a fail-open ledger: what the fallback granted during an outage, to replay on the primary.

One row per reservation id (the first entry wins), in SQLite: ``:memory:`` for a ``memory://`` fallback (lost
with the process), or the fallback's own file, synced (``synchronous=FULL``), so a crash keeps it.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from typing import Any, Literal

from .checks import Charge

__all__ = ["Entry", "Journal"]

EntryKind = Literal["charge", "commit", "release"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One journaled step: a ``charge`` of fallback usage, or the ``commit``/``release`` of a primary reservation
    made before the outage; ``returned`` is what the step answered (a retried step answers the same)."""

    rid: str
    kind: EntryKind
    scope: str
    charge: Charge
    returned: int = 0


class Journal:
    """Usage to replay on the primary, keyed by reservation id (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS failover_journal (rid TEXT PRIMARY KEY, kind TEXT NOT NULL,"
            " scope TEXT NOT NULL, total INTEGER, prompt INTEGER, completion INTEGER, reasoning INTEGER,"
            " estimated INTEGER, ts REAL, returned INTEGER NOT NULL DEFAULT 0)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(failover_journal)")}
        if "returned" not in columns:  # a journal written by an earlier version
            self._db.execute("ALTER TABLE failover_journal ADD COLUMN returned INTEGER NOT NULL DEFAULT 0")

    def add(self, entry: Entry, now: float) -> tuple[Entry, bool]:
        """Journal ``entry`` unless its id already has one; returns the entry that stands (the first one) and
        whether it is this one."""
        charge = entry.charge
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO failover_journal (rid, kind, scope, total, prompt, completion, reasoning,"
                " estimated, ts, returned) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry.rid, entry.kind, entry.scope, *charge[:4], int(charge.estimated), now, entry.returned),
            )
            row = self._db.execute("SELECT * FROM failover_journal WHERE rid = ?", (entry.rid,)).fetchone()
        return _entry(row), cursor.rowcount == 1

    def drop(self, rid: str) -> None:
        """Forget an entry (replayed, or refused by the fallback)."""
        with self._lock:
            self._db.execute("DELETE FROM failover_journal WHERE rid = ?", (rid,))

    def pending(self) -> list[Entry]:
        """Every entry still to replay, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM failover_journal ORDER BY ts, rid").fetchall()
        return [_entry(row) for row in rows]

    def totals(self) -> tuple[int, int]:
        """How many entries are pending, and their tokens."""
        with self._lock:
            count, tokens = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(total), 0) FROM failover_journal"
            ).fetchone()
        return int(count), int(tokens)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _entry(row: Any) -> Entry:
    rid, kind, scope, total, prompt, completion, reasoning, estimated, _, returned = row
    charge = Charge(int(total or 0), int(prompt or 0), int(completion or 0), int(reasoning or 0), bool(estimated))
    return Entry(str(rid), kind, str(scope), charge, int(returned or 0))
