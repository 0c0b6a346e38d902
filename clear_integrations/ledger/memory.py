"""The in-process store (``memory://``): dicts under one :class:`threading.Lock`.

Every operation is one critical section, so it is atomic across threads and asyncio tasks of one process
(the lock is held for microseconds and never across an ``await``). Nothing is shared between processes
and nothing survives the process: use SQLite or Redis for that.
"""

from __future__ import annotations

import heapq
import json
import threading
from typing import Any

from . import core
from .accounts import Scope
from .checks import DEFAULT_RETENTION, Charge
from .core import AccountState, EventRow, ReservationRecord
from .model import Balance, Budget, Event, Reservation, UsageTotals

__all__ = ["MemoryStore"]


class MemoryStore:
    """A :class:`~.store.Store` kept in this process's memory. Also its own :class:`~.core.Txn`."""

    def __init__(self, url: str = "memory://", *, retention: float = DEFAULT_RETENTION) -> None:
        self.url = url
        self._retention = retention
        self._lock = threading.Lock()
        self._accounts: dict[str, AccountState] = {}
        self._reservations: dict[str, ReservationRecord] = {}
        self._leases: dict[str, list[tuple[float, str]]] = {}
        self._events: list[EventRow] = []
        self._states: dict[str, tuple[dict[str, Any], int]] = {}

    # ------------------------------------------------------------ Txn (called with the lock held)

    def account(self, name: str) -> AccountState:
        """The account's state, created on first use (mutated in place)."""
        state = self._accounts.get(name)
        if state is None:
            state = self._accounts[name] = AccountState(name)
        return state

    def reservation(self, rid: str) -> ReservationRecord | None:
        """The reservation with this id, or None."""
        return self._reservations.get(rid)

    def save_reservation(self, record: ReservationRecord) -> None:
        """Insert a reservation (records are mutated in place afterwards); a held one gets a lease entry."""
        if record.id not in self._reservations:
            self._reservations[record.id] = record
            tenant = record.scope.partition("/")[0]
            heapq.heappush(self._leases.setdefault(tenant, []), (record.expires, record.id))

    def due(self, tenant: str, now: float) -> list[ReservationRecord]:
        """Pop the tenant's leases that ran out; returns the reservations still held."""
        heap = self._leases.get(tenant)
        if not heap or heap[0][0] > now:
            return []
        found = []
        while heap and heap[0][0] <= now:
            record = self._reservations.get(heapq.heappop(heap)[1])
            if record is not None and record.state == "held":
                found.append(record)
        return found

    def next_seq(self) -> int:
        """The next event's sequence number."""
        return len(self._events) + 1

    def append(self, row: EventRow) -> None:
        """Append to the event log."""
        self._events.append(row)

    # ------------------------------------------------------------ Store

    def set_budget(self, scope: Scope, budget: Budget | None, now: float) -> None:
        with self._lock:
            core.set_budget(self, scope, budget, now)

    def get_budget(self, scope: Scope) -> Budget | None:
        with self._lock:
            state = self._accounts.get(scope.name)
            return None if state is None else state.budget()

    def reserve(
        self, scope: Scope, tokens: int, minimum: int | None, lease: float, rid: str, now: float
    ) -> Reservation:
        with self._lock:
            return core.reserve(self, scope, tokens, minimum, lease, rid, now)

    def commit(self, rid: str, charge: Charge, now: float) -> int:
        with self._lock:
            return core.commit(self, rid, charge, now)

    def release(self, rid: str, now: float) -> int:
        with self._lock:
            return core.release(self, rid, now)

    def expire(self, now: float) -> int:
        with self._lock:
            count = sum(core.expire_due(self, tenant, now) for tenant in list(self._leases))
            horizon = now - self._retention
            stale = [rid for rid, r in self._reservations.items() if r.state != "held" and r.closed < horizon]
            for rid in stale:
                del self._reservations[rid]
            return count

    def balance(self, scope: Scope, now: float) -> Balance:
        with self._lock:
            return core.balance(self, scope, now)

    def usage(self, scope: Scope, since: float | None) -> UsageTotals:
        with self._lock:
            state = self._accounts.get(scope.name)
            reset_seq = 0 if state is None else state.reset_seq
            return core.usage_from_events(self._events, scope.name, reset_seq, since)

    def events(self, scope: Scope | None, since: float | None, limit: int | None) -> list[Event]:
        with self._lock:
            rows = [
                row
                for row in self._events
                if (scope is None or core.matches(row[3], scope.name)) and (since is None or row[1] >= since)
            ]
        if limit is not None:
            rows = rows[len(rows) - limit :] if limit else []
        return [core.event_from_row(row) for row in rows]

    def reset(self, scope: Scope, now: float) -> None:
        with self._lock:
            core.reset(self, scope, now)

    def get_state(self, pool: str) -> tuple[dict[str, Any] | None, int]:
        with self._lock:
            value, version = self._states.get(pool, (None, 0))
        return (None if value is None else json.loads(json.dumps(value))), version

    def set_state(self, pool: str, value: str, expected_version: int) -> bool:
        decoded = json.loads(value)
        with self._lock:
            version = self._states.get(pool, (None, 0))[1]
            if version != expected_version:
                return False
            self._states[pool] = (decoded, version + 1)
            return True

    def close(self) -> None:
        """Nothing to close; the data lives as long as the store object."""
