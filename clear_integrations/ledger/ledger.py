"""The ledger front ends: :class:`Ledger` (sync) and :class:`AsyncLedger` (async twin, same method names).

Both check every argument with :mod:`.checks` before touching the store (a refused call changes
nothing), read ``now`` from the injected clock, and hand one atomic step to the store. Only I/O differs.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from ..errors import InvalidInput
from .accounts import check_pool, new_reservation_id, parse_scope
from .checks import (
    check_budget,
    check_budgets,
    check_lease,
    check_limit,
    check_request,
    check_up_to,
    check_version,
    encode_state,
    reservation_id,
    to_charge,
    to_since,
)
from .memory import MemoryStore
from .model import Balance, Budget, Event, Reservation, Usage, UsageTotals
from .store import AsyncStore, Store, ThreadedAsyncStore

__all__ = ["DEFAULT_LEASE", "AsyncLedger", "Clock", "Ledger"]

#: Seconds a reservation is held before it expires unless committed or released.
DEFAULT_LEASE = 300.0

Clock = Callable[[], float]


_STORE_METHODS = ("set_budget", "get_budget", "reserve", "commit", "release", "expire", "balance", "usage", "events",
                  "reset", "get_state", "set_state", "close")  # fmt: skip


def _check_store(store: Any) -> None:
    if not isinstance(getattr(store, "url", None), str) or not all(
        callable(getattr(store, name, None)) for name in _STORE_METHODS
    ):
        raise InvalidInput("store", store, "must be a ledger store: open a ledger with open_ledger(url)")


class _Base:
    def __init__(self, store: Any, clock: Clock | None) -> None:
        _check_store(store)
        if clock is not None and not callable(clock):
            raise InvalidInput("clock", clock, "must be a function returning Unix seconds, such as time.time")
        self._clock: Clock = time.time if clock is None else clock
        self._unique = secrets.token_hex(6)
        self._counter = itertools.count(1)

    def _new_id(self, tenant: str) -> str:
        """A reservation id unique across processes: the tenant, this ledger's random tag, a counter."""
        return new_reservation_id(tenant, f"{self._unique}{next(self._counter):x}")


class Ledger(_Base):
    """Token budgets per account, shared through a store (``memory://``, ``sqlite://``, ``redis://``).

    Open one with :func:`~clear_integrations.ledger.open_ledger`. Thread-safe; every method is atomic.
    """

    def __init__(self, store: Store, *, clock: Clock | None = None) -> None:
        super().__init__(store, clock)
        self.store = store

    @property
    def url(self) -> str:
        """The URL the ledger was opened with."""
        return self.store.url

    def set_budget(self, account: str, budget: Budget) -> None:
        """Set ``account``'s budget (replacing any). Usage so far is kept (see :meth:`reset`)."""
        scope = parse_scope(account)
        self.store.set_budget(scope, check_budget(budget), self._clock())

    def get_budget(self, account: str) -> Budget | None:
        """The account's budget, or None when it has none (tracked but unlimited)."""
        return self.store.get_budget(parse_scope(account))

    def remove_budget(self, account: str) -> None:
        """Remove the account's budget; its usage stays tracked."""
        self.store.set_budget(parse_scope(account), None, self._clock())

    def apply_budgets(self, budgets: Mapping[str, Budget]) -> int:
        """Set every budget of a mapping (e.g. from :func:`load_budgets`) that differs; returns how many."""
        checked = check_budgets(budgets)
        changed = 0
        for scope, budget in checked:
            if self.store.get_budget(scope) != budget:
                self.store.set_budget(scope, budget, self._clock())
                changed += 1
        return changed

    def reserve(self, scope: str, tokens: int, *, lease: float = DEFAULT_LEASE) -> Reservation:
        """Hold ``tokens`` on every account of ``scope``'s path, or raise :class:`BudgetExceeded`."""
        parsed = parse_scope(scope, "scope")
        amount = check_request(tokens)
        seconds = check_lease(lease)
        return self.store.reserve(parsed, amount, None, seconds, self._new_id(parsed.tenant), self._clock())

    def reserve_up_to(self, scope: str, tokens: int, *, minimum: int = 1, lease: float = DEFAULT_LEASE) -> Reservation:
        """Hold ``min(tokens, what every hard budget of the path has left)``; :class:`BudgetExceeded` when
        that is less than ``minimum`` (``minimum=0`` never refuses). Soft budgets never shrink the grant."""
        parsed = parse_scope(scope, "scope")
        amount, least = check_up_to(tokens, minimum)
        seconds = check_lease(lease)
        return self.store.reserve(parsed, amount, least, seconds, self._new_id(parsed.tenant), self._clock())

    def commit(self, reservation: Reservation | str, used: int | Usage) -> int:
        """Charge ``used`` (an int total, or a :class:`Usage`: prompt + completion); returns the tokens given
        back. Idempotent by reservation id; usage above the reservation is charged in full."""
        rid = reservation_id(reservation)
        return self.store.commit(rid, to_charge(used), self._clock())

    def charge(self, scope: str, used: int | Usage, *, lease: float = DEFAULT_LEASE) -> Reservation:
        """Record usage that was never reserved (a call accounted for after the fact): it is charged in full on
        every account of the path, over a hard limit too (shown as overage), never dropped. Two atomic steps:
        a reservation of what is left (possibly nothing), then a commit of the whole usage."""
        charge = to_charge(used)
        reservation = self.reserve_up_to(scope, max(charge.total, 1), minimum=0, lease=lease)
        self.commit(reservation, used)
        return reservation

    def release(self, reservation: Reservation | str) -> int:
        """Give back every token of the reservation; returns how many. Idempotent."""
        return self.store.release(reservation_id(reservation), self._clock())

    def expire(self) -> int:
        """Release every reservation whose lease ran out, on every account; returns how many."""
        return self.store.expire(self._clock())

    def balance(self, account: str) -> Balance:
        """The account's limit, spent, held, remaining and overage in its current window."""
        return self.store.balance(parse_scope(account), self._clock())

    def usage(self, account: str, since: datetime | float | None = None) -> UsageTotals:
        """Committed usage of the account (and its sessions) since its last reset and at or after ``since``."""
        return self.store.usage(parse_scope(account), to_since(since))

    def events(
        self, account: str | None = None, since: datetime | float | None = None, limit: int | None = None
    ) -> list[Event]:
        """The audit log, oldest first: the latest ``limit`` events at or after ``since`` (of ``account``)."""
        scope = None if account is None else parse_scope(account)
        return self.store.events(scope, to_since(since), check_limit(limit))

    def reset(self, account: str) -> None:
        """Zero the account's spent tokens and usage totals (for ops); held tokens are untouched."""
        self.store.reset(parse_scope(account), self._clock())

    def get_state(self, pool: str = "default") -> tuple[dict[str, Any] | None, int]:
        """The pool's state slot: ``(value, version)``, ``(None, 0)`` before the first write."""
        return self.store.get_state(check_pool(pool))

    def set_state(self, pool: str, value: dict[str, Any], *, expected_version: int) -> bool:
        """Compare-and-set: store ``value`` if the slot is still at ``expected_version``; True on success."""
        name = check_pool(pool)
        return self.store.set_state(name, encode_state(value), check_version(expected_version))

    def close(self) -> None:
        """Close the store's connections."""
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self.url!r})"


class AsyncLedger(_Base):
    """The async twin of :class:`Ledger`: the same methods, awaited. Open with ``open_async_ledger``, or take the
    twin of a sync ledger on the same store with :meth:`of`."""

    def __init__(self, store: AsyncStore, *, clock: Clock | None = None) -> None:
        super().__init__(store, clock)
        self.store = store

    @classmethod
    def of(cls, ledger: Ledger) -> AsyncLedger:
        """An async ledger on ``ledger``'s own store and clock: each step runs in a worker thread, inline for an
        in-memory store (a few microseconds under a lock), so the event loop never waits on I/O."""
        if not isinstance(ledger, Ledger):
            raise InvalidInput("ledger", ledger, "must be a Ledger (open_ledger(url))")
        return cls(ThreadedAsyncStore(ledger.store, offload=not isinstance(ledger.store, MemoryStore)),
                   clock=ledger._clock)  # fmt: skip

    def shares_store_with(self, ledger: Ledger) -> bool:
        """Whether this ledger and ``ledger`` read and write the same budgets: the same store object, or the same
        SQLite file or Redis database and key prefix (an unnamed ``memory://`` store belongs to one open only)."""
        inner = getattr(self.store, "store", None)  # a sync store served in worker threads
        if inner is ledger.store:
            return True
        if isinstance(ledger.store, MemoryStore) or isinstance(inner, MemoryStore):
            return False
        return self.url == ledger.url and getattr(self.store, "prefix", None) == getattr(ledger.store, "prefix", None)

    @property
    def url(self) -> str:
        """The URL the ledger was opened with."""
        return self.store.url

    async def set_budget(self, account: str, budget: Budget) -> None:
        """See :meth:`Ledger.set_budget`."""
        scope = parse_scope(account)
        await self.store.set_budget(scope, check_budget(budget), self._clock())

    async def get_budget(self, account: str) -> Budget | None:
        """See :meth:`Ledger.get_budget`."""
        return await self.store.get_budget(parse_scope(account))

    async def remove_budget(self, account: str) -> None:
        """See :meth:`Ledger.remove_budget`."""
        await self.store.set_budget(parse_scope(account), None, self._clock())

    async def apply_budgets(self, budgets: Mapping[str, Budget]) -> int:
        """See :meth:`Ledger.apply_budgets`."""
        checked = check_budgets(budgets)
        changed = 0
        for scope, budget in checked:
            if await self.store.get_budget(scope) != budget:
                await self.store.set_budget(scope, budget, self._clock())
                changed += 1
        return changed

    async def reserve(self, scope: str, tokens: int, *, lease: float = DEFAULT_LEASE) -> Reservation:
        """See :meth:`Ledger.reserve`."""
        parsed = parse_scope(scope, "scope")
        amount = check_request(tokens)
        seconds = check_lease(lease)
        return await self.store.reserve(parsed, amount, None, seconds, self._new_id(parsed.tenant), self._clock())

    async def reserve_up_to(
        self, scope: str, tokens: int, *, minimum: int = 1, lease: float = DEFAULT_LEASE
    ) -> Reservation:
        """See :meth:`Ledger.reserve_up_to`."""
        parsed = parse_scope(scope, "scope")
        amount, least = check_up_to(tokens, minimum)
        seconds = check_lease(lease)
        return await self.store.reserve(parsed, amount, least, seconds, self._new_id(parsed.tenant), self._clock())

    async def commit(self, reservation: Reservation | str, used: int | Usage) -> int:
        """See :meth:`Ledger.commit`."""
        rid = reservation_id(reservation)
        return await self.store.commit(rid, to_charge(used), self._clock())

    async def charge(self, scope: str, used: int | Usage, *, lease: float = DEFAULT_LEASE) -> Reservation:
        """See :meth:`Ledger.charge`."""
        charge = to_charge(used)
        reservation = await self.reserve_up_to(scope, max(charge.total, 1), minimum=0, lease=lease)
        await self.commit(reservation, used)
        return reservation

    async def release(self, reservation: Reservation | str) -> int:
        """See :meth:`Ledger.release`."""
        return await self.store.release(reservation_id(reservation), self._clock())

    async def expire(self) -> int:
        """See :meth:`Ledger.expire`."""
        return await self.store.expire(self._clock())

    async def balance(self, account: str) -> Balance:
        """See :meth:`Ledger.balance`."""
        return await self.store.balance(parse_scope(account), self._clock())

    async def usage(self, account: str, since: datetime | float | None = None) -> UsageTotals:
        """See :meth:`Ledger.usage`."""
        return await self.store.usage(parse_scope(account), to_since(since))

    async def events(
        self, account: str | None = None, since: datetime | float | None = None, limit: int | None = None
    ) -> list[Event]:
        """See :meth:`Ledger.events`."""
        scope = None if account is None else parse_scope(account)
        return await self.store.events(scope, to_since(since), check_limit(limit))

    async def reset(self, account: str) -> None:
        """See :meth:`Ledger.reset`."""
        await self.store.reset(parse_scope(account), self._clock())

    async def get_state(self, pool: str = "default") -> tuple[dict[str, Any] | None, int]:
        """See :meth:`Ledger.get_state`."""
        return await self.store.get_state(check_pool(pool))

    async def set_state(self, pool: str, value: dict[str, Any], *, expected_version: int) -> bool:
        """See :meth:`Ledger.set_state`."""
        name = check_pool(pool)
        return await self.store.set_state(name, encode_state(value), check_version(expected_version))

    async def close(self) -> None:
        """See :meth:`Ledger.close`."""
        await self.store.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncLedger({self.url!r})"
