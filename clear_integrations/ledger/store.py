"""The store protocols: what a backend implements, sync (:class:`Store`) and async (:class:`AsyncStore`).

Arguments arrive validated (see :mod:`.checks`) with ``now`` read from the ledger's injected clock, so a
store does I/O and atomicity only. Each method is one atomic step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import anyio.to_thread

from .accounts import Scope
from .checks import Charge
from .model import Balance, Budget, Event, Reservation, UsageTotals

__all__ = ["AsyncStore", "Store", "ThreadedAsyncStore"]

_T = TypeVar("_T")


class Store(Protocol):
    """A synchronous ledger backend. Every method is one atomic step; ``now`` is the ledger's clock."""

    url: str

    def set_budget(self, scope: Scope, budget: Budget | None, now: float) -> None:
        """Set the account's budget, or remove it with None (logs set_budget / remove_budget)."""
        ...

    def get_budget(self, scope: Scope) -> Budget | None:
        """The account's budget, or None."""
        ...

    def reserve(
        self, scope: Scope, tokens: int, minimum: int | None, lease: float, rid: str, now: float
    ) -> Reservation:
        """:func:`.core.reserve`: exactly ``tokens`` (``minimum`` None) or up to them; idempotent by ``rid``."""
        ...

    def commit(self, rid: str, charge: Charge, now: float) -> int:
        """:func:`.core.commit`; returns the tokens given back."""
        ...

    def release(self, rid: str, now: float) -> int:
        """:func:`.core.release`; returns the tokens given back."""
        ...

    def expire(self, now: float) -> int:
        """Expire due leases on every tenant and purge closed reservations past the retention."""
        ...

    def balance(self, scope: Scope, now: float) -> Balance:
        """:func:`.core.balance`."""
        ...

    def usage(self, scope: Scope, since: float | None) -> UsageTotals:
        """Commit totals of the account and its sessions, after its last reset, at or after ``since``."""
        ...

    def events(self, scope: Scope | None, since: float | None, limit: int | None) -> list[Event]:
        """The log (of ``scope`` and its sessions), oldest first, the latest ``limit`` at or after ``since``."""
        ...

    def reset(self, scope: Scope, now: float) -> None:
        """:func:`.core.reset`."""
        ...

    def get_state(self, pool: str) -> tuple[dict[str, Any] | None, int]:
        """The pool's state slot and its version (``(None, 0)`` before the first write)."""
        ...

    def set_state(self, pool: str, value: str, expected_version: int) -> bool:
        """Compare-and-set the slot to the JSON text ``value``; True when the version matched."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class AsyncStore(Protocol):
    """An asynchronous ledger backend: the same methods as :class:`Store` (see there), awaited."""

    url: str

    async def set_budget(self, scope: Scope, budget: Budget | None, now: float) -> None: ...
    async def get_budget(self, scope: Scope) -> Budget | None: ...
    async def reserve(
        self, scope: Scope, tokens: int, minimum: int | None, lease: float, rid: str, now: float
    ) -> Reservation: ...
    async def commit(self, rid: str, charge: Charge, now: float) -> int: ...
    async def release(self, rid: str, now: float) -> int: ...
    async def expire(self, now: float) -> int: ...
    async def balance(self, scope: Scope, now: float) -> Balance: ...
    async def usage(self, scope: Scope, since: float | None) -> UsageTotals: ...
    async def events(self, scope: Scope | None, since: float | None, limit: int | None) -> list[Event]: ...
    async def reset(self, scope: Scope, now: float) -> None: ...
    async def get_state(self, pool: str) -> tuple[dict[str, Any] | None, int]: ...
    async def set_state(self, pool: str, value: str, expected_version: int) -> bool: ...
    async def close(self) -> None: ...


class ThreadedAsyncStore:
    """An :class:`AsyncStore` over a sync :class:`Store`.

    With ``offload=True`` (SQLite) each call runs in a worker thread so the event loop never waits on disk;
    with ``offload=False`` (memory, whose steps are a few microseconds under a lock) calls run inline.
    """

    def __init__(self, store: Store, *, offload: bool) -> None:
        self.store = store
        self.url = store.url
        self._offload = offload

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        if self._offload:
            return await anyio.to_thread.run_sync(function, *args)
        return function(*args)

    async def set_budget(self, scope: Scope, budget: Budget | None, now: float) -> None:
        await self._run(self.store.set_budget, scope, budget, now)

    async def get_budget(self, scope: Scope) -> Budget | None:
        return await self._run(self.store.get_budget, scope)

    async def reserve(
        self, scope: Scope, tokens: int, minimum: int | None, lease: float, rid: str, now: float
    ) -> Reservation:
        return await self._run(self.store.reserve, scope, tokens, minimum, lease, rid, now)

    async def commit(self, rid: str, charge: Charge, now: float) -> int:
        return await self._run(self.store.commit, rid, charge, now)

    async def release(self, rid: str, now: float) -> int:
        return await self._run(self.store.release, rid, now)

    async def expire(self, now: float) -> int:
        return await self._run(self.store.expire, now)

    async def balance(self, scope: Scope, now: float) -> Balance:
        return await self._run(self.store.balance, scope, now)

    async def usage(self, scope: Scope, since: float | None) -> UsageTotals:
        return await self._run(self.store.usage, scope, since)

    async def events(self, scope: Scope | None, since: float | None, limit: int | None) -> list[Event]:
        return await self._run(self.store.events, scope, since, limit)

    async def reset(self, scope: Scope, now: float) -> None:
        await self._run(self.store.reset, scope, now)

    async def get_state(self, pool: str) -> tuple[dict[str, Any] | None, int]:
        return await self._run(self.store.get_state, pool)

    async def set_state(self, pool: str, value: str, expected_version: int) -> bool:
        return await self._run(self.store.set_state, pool, value, expected_version)

    async def close(self) -> None:
        await self._run(self.store.close)
