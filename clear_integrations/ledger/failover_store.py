"""The store behind :class:`~clear_integrations.ledger.failover.FailoverLedger`: it routes each operation to the
primary ledger or, while that is unreachable in fail-open mode, to a local fallback, and journals what the fallback
granted so that it can be replayed on the primary (see :mod:`clear_integrations.ledger.failover`)."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ..errors import LedgerUnavailable, ReservationClosed, UnknownReservation
from .accounts import Scope, parse_scope, tenant_of_reservation
from .checks import Charge
from .ledger import Clock
from .model import MAX_TOKENS, Balance, Budget, Event, Reservation, UsageTotals
from .store import Store

__all__ = ["FailOpen", "FailoverStatus", "FailoverStore"]

_T = TypeVar("_T")
#: Marks reservation ids made on the fallback: ``tenant#~session~unique`` (the primary never makes one).
_MARK = "~"
_REPLAY_LEASE = 300.0


@dataclass(frozen=True, slots=True)
class FailOpen:
    """Fail-open settings: the ``fallback`` URL, the ``share`` of each last-read remaining budget it may
    spend, ``retry_after`` seconds between probes, ``refresh`` seconds between budget snapshots of an account,
    and ``budgets`` (e.g. :func:`load_budgets`) for tenants never read from the primary."""

    fallback: str = "memory://"
    share: float = 1.0
    retry_after: float = 5.0
    refresh: float = 10.0
    budgets: Mapping[str, Budget] | None = None


@dataclass(frozen=True, slots=True)
class FailoverStatus:
    """Where a failover ledger stands: its ``mode``, the ``active`` side, the journal's ``pending`` entries and
    their ``pending_tokens``, entries ``replayed`` by this process, when it ``failed_at``, the ``next_probe``
    time and the ``last_error``."""

    mode: Literal["closed", "open"]
    active: Literal["primary", "fallback"]
    pending: int
    pending_tokens: int
    replayed: int
    failed_at: float | None
    next_probe: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    budget: Budget | None
    remaining: int
    window_end: float | None


@dataclass(frozen=True, slots=True)
class _Entry:
    rid: str
    kind: Literal["charge", "commit", "release"]
    scope: str
    charge: Charge


class _Journal:
    """Usage to replay on the primary, keyed by reservation id, in SQLite (``:memory:`` or a file, synced)."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS failover_journal (rid TEXT PRIMARY KEY, kind TEXT NOT NULL,"
            " scope TEXT NOT NULL, total INTEGER, prompt INTEGER, completion INTEGER, reasoning INTEGER,"
            " estimated INTEGER, ts REAL)"
        )

    def add(self, kind: str, rid: str, scope: str, charge: Charge, now: float) -> bool:
        """Journal an entry (the first one per id wins); True when it was new."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO failover_journal VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rid, kind, scope, *charge[:4], int(charge.estimated), now),
            )
            return cursor.rowcount == 1

    def drop(self, rid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM failover_journal WHERE rid = ?", (rid,))

    def pending(self) -> list[_Entry]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM failover_journal ORDER BY ts, rid").fetchall()
        return [_Entry(r[0], r[1], r[2], Charge(r[3], r[4], r[5], r[6], bool(r[7]))) for r in rows]

    def totals(self) -> tuple[int, int]:
        with self._lock:
            count, tokens = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(total), 0) FROM failover_journal"
            ).fetchone()
        return int(count), int(tokens)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _local_rid(scope: Scope, rid: str) -> str:
    """``tenant#~session~unique``: routes to the fallback and carries the scope for the replay."""
    return f"{scope.tenant}#{_MARK}{scope.session or ''}{_MARK}{rid.rpartition('#')[2]}"


def _is_local(rid: str) -> bool:
    return rid.rpartition("#")[2].startswith(_MARK)


def _scope_of_local(rid: str) -> str:
    tenant, _, unique = rid.rpartition("#")
    session = unique[1:].partition(_MARK)[0]
    return f"{tenant}/{session}" if session else tenant


class FailoverStore:
    """A :class:`~.store.Store` that routes each step to the primary or, failing open, to the fallback."""

    def __init__(
        self,
        open_primary: Callable[[], Store],
        fallback: Store,
        journal_path: str,
        *,
        mode: Literal["closed", "open"],
        policy: FailOpen,
        clock: Clock,
    ) -> None:
        self.mode = mode
        self.policy = policy
        self._open_primary = open_primary
        self._fallback = fallback
        self._journal = _Journal(journal_path)
        self._clock = clock
        self._lock = threading.Lock()
        self._seed_lock = threading.Lock()
        self._snapshots: dict[str, tuple[_Snapshot, float]] = {}
        self._seeded: set[str] = set()
        self._held: dict[str, int] = {}  # tokens of primary reservations made here, for commits during an outage
        self._active: Literal["primary", "fallback"] = "primary"
        self._failed_at: float | None = None
        self._next_probe = 0.0
        self._last_error: str | None = None
        self._replayed = 0
        self._primary: Store | None = None
        try:
            self._primary = open_primary()
            self.url = self._primary.url
        except LedgerUnavailable as exc:
            if mode == "closed":
                raise
            self.url = exc.url
            self._fail_over(exc)

    # ------------------------------------------------------------ routing

    def _up(self) -> Store | None:
        """The primary when it is the active side (probing it when due and nobody else is), else None."""
        if self._active == "fallback" and self._clock() >= self._next_probe and self._lock.acquire(blocking=False):
            try:
                self._probe()
            except LedgerUnavailable:
                pass
            finally:
                self._lock.release()
        return self._primary if self._active == "primary" else None

    def _route(self, on_primary: Callable[[Store], _T], on_fallback: Callable[[Store], _T] | None) -> _T:
        primary = self._up()
        if primary is not None:
            try:
                return on_primary(primary)
            except LedgerUnavailable as exc:
                if self.mode == "closed":
                    raise
                self._fail_over(exc)
        if on_fallback is None:
            raise LedgerUnavailable(self.url, f"{self._last_error}; budget changes and resets need the primary")
        return on_fallback(self._fallback)

    def _fail_over(self, exc: LedgerUnavailable) -> None:
        with self._lock:
            now = self._clock()
            self._last_error = str(exc.cause)
            self._next_probe = now + self.policy.retry_after
            if self._active == "fallback":
                return
            self._active, self._failed_at = "fallback", now
            self._seeded.clear()

    def _probe(self) -> int:
        """Replay the journal on the primary and switch back (call with the lock held).

        Tried twice: the first call after a server restart may fail on a connection the old server closed
        (the store then reconnects), and every replayed step is idempotent by id."""
        now = self._clock()
        for attempt in (1, 2):
            try:
                if self._primary is None:
                    self._primary = self._open_primary()
                replayed = self._replay(self._primary)
                if not replayed:
                    self._primary.get_state("default")  # a ping through the store
                break
            except LedgerUnavailable as exc:
                if attempt == 2:
                    self._last_error, self._next_probe = str(exc.cause), now + self.policy.retry_after
                    raise
        self._active, self._failed_at, self._last_error = "primary", None, None
        return replayed

    def _replay(self, primary: Store) -> int:
        replayed = 0
        for entry in self._journal.pending():
            now = self._clock()
            if entry.kind == "charge":
                self._charge(primary, entry.rid, entry.scope, entry.charge, now)
            elif entry.kind == "commit":
                try:
                    primary.commit(entry.rid, entry.charge, now)
                except (UnknownReservation, ReservationClosed):  # purged or released meanwhile: charge it anyway
                    orphan = f"{entry.scope}#{_MARK}{_MARK}{entry.rid.rpartition('#')[2]}"
                    self._charge(primary, orphan, entry.scope, entry.charge, now)
            else:
                with contextlib.suppress(UnknownReservation):
                    primary.release(entry.rid, now)
            self._journal.drop(entry.rid)
            replayed += 1
            self._replayed += 1
        return replayed

    @staticmethod
    def _charge(primary: Store, rid: str, scope: str, charge: Charge, now: float) -> None:
        """Charge usage in full under a fixed id: a retried replay holds and charges nothing more."""
        parsed = parse_scope(scope)
        primary.reserve(parsed, max(charge.total, 1), 0, _REPLAY_LEASE, rid, now)
        primary.commit(rid, charge, now)

    def reconcile(self) -> int:
        """Replay the journal on the primary now and switch back to it; returns the entries replayed.

        Raises :class:`LedgerUnavailable` (and stays on the fallback) when the primary still does not answer."""
        with self._lock:
            return self._probe()

    def status(self) -> FailoverStatus:
        """The mode, the active side and the pending journal."""
        pending, tokens = self._journal.totals()
        probe = self._next_probe if self._active == "fallback" else None
        return FailoverStatus(
            self.mode, self._active, pending, tokens, self._replayed, self._failed_at, probe, self._last_error
        )

    # ------------------------------------------------------------ snapshots and seeds

    def _snap(self, primary: Store, scope: Scope, now: float) -> None:
        for name in scope.path:
            seen = self._snapshots.get(name)
            if seen is None or now - seen[1] >= self.policy.refresh:
                self._remember(primary.balance(parse_scope(name), now), now)

    def _remember(self, balance: Balance, now: float) -> None:
        if self.mode == "closed" or len(self._snapshots) >= 100_000:
            return
        budget = None
        if balance.limit is not None and balance.mode is not None:
            window = None
            if balance.window_start is not None and balance.window_end is not None:
                window = f"{round(balance.window_end - balance.window_start)}s"
            budget = Budget(balance.limit, window, balance.mode)
        self._snapshots[balance.account] = (_Snapshot(budget, balance.remaining or 0, balance.window_end), now)

    def _seed(self, scope: Scope, now: float) -> None:
        """Give the fallback ``share`` of each account's last-read remaining budget (once per outage)."""
        if all(name in self._seeded for name in scope.path):
            return
        with self._seed_lock:
            for name in scope.path:
                if name not in self._seeded:
                    self._seed_account(name, name == scope.tenant, now)

    def _seed_account(self, name: str, tenant: bool, now: float) -> None:
        seen = self._snapshots.get(name)
        configured = (self.policy.budgets or {}).get(name)
        if seen is not None:
            budget, remaining = seen[0].budget, seen[0].remaining
            if budget is not None and seen[0].window_end is not None and seen[0].window_end <= now:
                remaining = budget.tokens  # the window rolled over since the snapshot
        elif configured is not None:
            budget, remaining = configured, configured.tokens
        elif tenant:
            raise LedgerUnavailable(self.url, f"{self._last_error}; no budget of {name!r} was read before")
        else:
            budget, remaining = None, 0
        account = parse_scope(name)
        if budget is not None:
            spent = self._fallback.balance(account, now).spent
            tokens = min(MAX_TOKENS, math.floor(self.policy.share * remaining) + spent)
            budget = Budget(tokens, budget.window, budget.mode)
        if self._fallback.get_budget(account) != budget:
            self._fallback.set_budget(account, budget, now)
        self._seeded.add(name)

    # ------------------------------------------------------------ the Store protocol

    def set_budget(self, scope: Scope, budget: Budget | None, now: float) -> None:
        self._snapshots.pop(scope.name, None)
        self._route(lambda s: s.set_budget(scope, budget, now), None)

    def get_budget(self, scope: Scope) -> Budget | None:
        def fallback(store: Store) -> Budget | None:
            self._seed(scope, self._clock())
            return store.get_budget(scope)

        return self._route(lambda s: s.get_budget(scope), fallback)

    def reserve(
        self, scope: Scope, tokens: int, minimum: int | None, lease: float, rid: str, now: float
    ) -> Reservation:
        def primary(store: Store) -> Reservation:
            made = store.reserve(scope, tokens, minimum, lease, rid, now)
            if self.mode == "open":
                if len(self._held) < 100_000:
                    self._held[made.id] = made.tokens
                with contextlib.suppress(LedgerUnavailable):  # the reservation stands; the next call finds out
                    self._snap(store, scope, now)
            return made

        def fallback(store: Store) -> Reservation:
            self._seed(scope, now)
            return store.reserve(scope, tokens, minimum, lease, _local_rid(scope, rid), now)

        return self._route(primary, fallback)

    def commit(self, rid: str, charge: Charge, now: float) -> int:
        if _is_local(rid):
            new = self._journal.add("charge", rid, _scope_of_local(rid), charge, now)
            try:
                returned = self._fallback.commit(rid, charge, now)
            except (UnknownReservation, ReservationClosed):
                if new:
                    self._journal.drop(rid)
                raise
            failed: LedgerUnavailable | None = None
            if self._active == "primary" and self._lock.acquire(blocking=False):
                try:  # a late commit of an outage's reservation: replay it now
                    self._probe()
                except LedgerUnavailable as exc:
                    failed = exc
                finally:
                    self._lock.release()
            if failed is not None:
                self._fail_over(failed)
            return returned

        def outage(_: Store) -> int:
            self._journal.add("commit", rid, tenant_of_reservation(rid), charge, now)
            return max(0, self._held.pop(rid, 0) - charge.total)

        returned = self._route(lambda s: s.commit(rid, charge, now), outage)
        self._held.pop(rid, None)
        return returned

    def release(self, rid: str, now: float) -> int:
        if _is_local(rid):
            return self._fallback.release(rid, now)

        def outage(_: Store) -> int:
            self._journal.add("release", rid, tenant_of_reservation(rid), Charge(0), now)
            return self._held.pop(rid, 0)

        returned = self._route(lambda s: s.release(rid, now), outage)
        self._held.pop(rid, None)
        return returned

    def expire(self, now: float) -> int:
        return self._fallback.expire(now) + self._route(lambda s: s.expire(now), lambda _: 0)

    def balance(self, scope: Scope, now: float) -> Balance:
        def primary(store: Store) -> Balance:
            found = store.balance(scope, now)
            self._remember(found, now)
            return found

        def fallback(store: Store) -> Balance:
            self._seed(scope, now)
            return store.balance(scope, now)

        return self._route(primary, fallback)

    def usage(self, scope: Scope, since: float | None) -> UsageTotals:
        return self._route(lambda s: s.usage(scope, since), lambda s: s.usage(scope, since))

    def events(self, scope: Scope | None, since: float | None, limit: int | None) -> list[Event]:
        return self._route(lambda s: s.events(scope, since, limit), lambda s: s.events(scope, since, limit))

    def reset(self, scope: Scope, now: float) -> None:
        self._snapshots.pop(scope.name, None)
        self._route(lambda s: s.reset(scope, now), None)

    def get_state(self, pool: str) -> tuple[dict[str, Any] | None, int]:
        return self._route(lambda s: s.get_state(pool), lambda s: s.get_state(pool))

    def set_state(self, pool: str, value: str, expected_version: int) -> bool:
        def either(store: Store) -> bool:
            return store.set_state(pool, value, expected_version)

        return self._route(either, either)

    def close(self) -> None:
        if self._primary is not None:
            self._primary.close()
        self._fallback.close()
        self._journal.close()
