"""The store behind :class:`~clear_integrations.ledger.failover.FailoverLedger`: it routes each operation to the
primary ledger or, while that is unreachable in fail-open mode, to a local fallback, and journals what the fallback
granted so that it can be replayed on the primary (see :mod:`clear_integrations.ledger.failover`)."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ..errors import LedgerUnavailable, ReservationClosed, UnknownReservation
from .accounts import Scope, parse_scope, tenant_of_reservation
from .checks import Charge
from .failover_journal import Entry, Journal
from .failover_policy import FailOpen, FailoverStatus
from .ledger import Clock
from .model import MAX_TOKENS, Balance, Budget, Event, Reservation, UsageTotals
from .store import Store
from .windows import format_window

__all__ = ["FailOpen", "FailoverStatus", "FailoverStore"]

_T = TypeVar("_T")
#: Marks reservation ids made on the fallback: ``tenant#~session~unique`` (the primary never makes one).
_MARK = "~"
_REPLAY_LEASE = 300.0
#: Seconds between probes while the primary answers but is still loading its data (a restarting Redis).
LOADING_RETRY = 0.1


@dataclass(frozen=True, slots=True)
class _Snapshot:
    budget: Budget | None
    remaining: int
    window_end: float | None


def _local_rid(scope: Scope, rid: str) -> str:
    """``tenant#~session~unique``: routes to the fallback and carries the scope for the replay."""
    return f"{scope.tenant}#{_MARK}{scope.session or ''}{_MARK}{rid.rpartition('#')[2]}"


def _loading(exc: LedgerUnavailable) -> bool:
    """Whether the primary answered but is still loading its data set (Redis ``LOADING`` after a restart)."""
    cause = exc.cause
    names = {kind.__name__ for kind in type(cause).__mro__} if isinstance(cause, BaseException) else set()
    return "BusyLoadingError" in names or "loading the dataset" in str(cause)


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
        self._journal = Journal(journal_path)
        self._inflight: set[str] = set()  # fallback commits between their journal entry and their local commit
        self._clock = clock
        self._lock = threading.Lock()
        self._seed_lock = threading.Lock()
        self._snapshots: dict[str, tuple[_Snapshot, float]] = {}
        self._seeded: set[str] = set()
        self._held: dict[str, int] = {}  # tokens of primary reservations made here, for commits during an outage
        self._settled: dict[str, tuple[str, int]] = {}  # the last primary commits/releases: (kind, returned)
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
            self._to_fallback(exc)

    def _to_fallback(self, exc: LedgerUnavailable) -> None:
        """Switch to the fallback (call with the lock held); the next probe is due after ``retry_after``, or
        after :data:`LOADING_RETRY` when the primary answered but is still loading its data."""
        now = self._clock()
        self._last_error = str(exc.cause)
        wait = min(self.policy.retry_after, LOADING_RETRY) if _loading(exc) else self.policy.retry_after
        self._next_probe = now + wait
        if self._active == "fallback":
            return
        self._active, self._failed_at = "fallback", now
        self._seeded.clear()

    def _probe(self) -> int:
        """Replay the journal on the primary and switch back (call with the lock held).

        Tried twice: the first call after a server restart may fail on a connection the old server closed
        (the store then reconnects), and every replayed step is idempotent by id. Entries journaled by calls
        that were still on the fallback while the replay ran are replayed after the switch; the snapshots of the
        accounts used during the outage are read again (the replay changed them)."""
        touched, replayed = set(self._seeded), 0
        for attempt in (1, 2):
            try:
                if self._primary is None:
                    self._primary = self._open_primary()
                primary = self._primary
                replayed = self._replay(primary, touched)
                if not replayed:
                    primary.get_state("default")  # a ping through the store
                break
            except LedgerUnavailable as exc:
                if attempt == 2:
                    self._to_fallback(exc)
                    raise
        self._active, self._failed_at, self._last_error = "primary", None, None
        try:
            replayed += self._replay(primary, touched)
            self._refresh(primary, touched)
        except LedgerUnavailable as exc:
            self._to_fallback(exc)
            raise
        return replayed

    def _replay(self, primary: Store, touched: set[str]) -> int:
        replayed = 0
        for entry in self._journal.pending():
            if entry.rid in self._inflight:  # its local commit is under way: that call replays it (_journaled)
                continue
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
            if entry.kind != "charge":  # what the caller was answered stays the answer to a retry
                self._settle(entry.rid, entry.kind, entry.returned)
            self._journal.drop(entry.rid)
            touched.update(parse_scope(entry.scope).path)
            replayed += 1
            self._replayed += 1
        return replayed

    def _journaled(self) -> None:
        """Called after a step was journaled on the fallback path: when the primary became the active side
        meanwhile, the switch's replay may have run before the entry existed, so replay what is left now."""
        if self._active != "primary":
            return
        with self._lock:
            if self._active != "primary" or self._primary is None:
                return
            try:
                self._replay(self._primary, set())
            except LedgerUnavailable as exc:
                if self.mode == "open":
                    self._to_fallback(exc)

    def _refresh(self, primary: Store, names: set[str]) -> None:
        """Read again the snapshots of ``names`` (after a replay): a later outage starts from the truth."""
        if self.mode == "closed":
            return
        for name in sorted(names):
            now = self._clock()
            self._remember(primary.balance(parse_scope(name), now), now)

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
                window = format_window(round(balance.window_end - balance.window_start))
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
            return self._commit_local(rid, charge, now)

        def outage(_: Store) -> int:  # a primary reservation: journaled, answered as the primary would
            settled = self._settled.get(rid)
            if settled is not None:  # committed or released on the primary before the outage
                if settled[0] == "release":
                    raise ReservationClosed(rid, "released")
                return settled[1]
            returned = max(0, self._held.get(rid, 0) - charge.total)
            first = self._journal.add(Entry(rid, "commit", tenant_of_reservation(rid), charge, returned), now)[0]
            self._held.pop(rid, None)
            self._journaled()
            if first.kind == "release":
                raise ReservationClosed(rid, "released")
            return first.returned  # a second commit answers the first one's result

        def primary(store: Store) -> int:
            returned = store.commit(rid, charge, now)
            self._settle(rid, "commit", returned)
            return returned

        returned = self._route(primary, outage)
        self._held.pop(rid, None)
        return returned

    def _settle(self, rid: str, kind: str, returned: int) -> None:
        """Remember what the primary answered, so that a retry during a later outage answers the same."""
        if self.mode == "open":
            if len(self._settled) >= 10_000:
                self._settled.pop(next(iter(self._settled)))
            self._settled[rid] = (kind, returned)

    def _commit_local(self, rid: str, charge: Charge, now: float) -> int:
        """Commit a fallback reservation: journaled first (a crash keeps the usage), then committed locally."""
        self._inflight.add(rid)
        try:
            entry = Entry(rid, "charge", _scope_of_local(rid), charge)
            new = self._journal.add(entry, now)[1]
            try:
                returned = self._fallback.commit(rid, charge, now)
            except (UnknownReservation, ReservationClosed):
                if new:
                    self._journal.drop(rid)
                raise
        finally:
            self._inflight.discard(rid)
        self._journaled()  # a late commit after the switch back is replayed at once
        return returned

    def release(self, rid: str, now: float) -> int:
        if _is_local(rid):
            return self._fallback.release(rid, now)

        def outage(_: Store) -> int:
            settled = self._settled.get(rid)
            if settled is not None:  # on the primary before the outage: a release there gave back all it had
                return settled[1] if settled[0] == "release" else 0
            returned = self._held.get(rid, 0)
            first = self._journal.add(Entry(rid, "release", tenant_of_reservation(rid), Charge(0), returned), now)[0]
            self._held.pop(rid, None)
            self._journaled()
            return first.returned if first.kind == "release" else 0  # after a commit: nothing comes back

        def primary(store: Store) -> int:
            returned = store.release(rid, now)
            self._settle(rid, "release", returned)
            return returned

        returned = self._route(primary, outage)
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
