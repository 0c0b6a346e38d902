"""What happens when the shared ledger (Redis) cannot be reached: fail closed (default) or fail open.

``mode="closed"``: every :class:`~clear_integrations.errors.LedgerUnavailable` propagates; nothing is granted
without the shared truth. ``mode="open"``: while the primary is unreachable, reservations run on a local
fallback ledger (``memory://`` or ``sqlite:///path.db``) seeded with the budgets last read from the primary,
scaled by ``share``; every usage committed there is journaled and replayed on the primary (idempotently)
when it answers again, probed at most every ``retry_after`` seconds. See ``docs/deployment.md``.

```python
from clear_integrations.ledger import open_ledger
from clear_integrations.ledger.failover import FailoverLedger
ledger = FailoverLedger(lambda: open_ledger("redis://redis:6379/0"), mode="open", share=0.25)
```

``AsyncFailoverLedger(ledger)`` is the async twin (each step in a worker thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import anyio.to_thread

from ..errors import InvalidInput
from .ledger import AsyncLedger, Clock, Ledger
from .model import Budget
from .store import Store, ThreadedAsyncStore

__all__ = [
    "AsyncFailoverLedger",
    "FailOpen",
    "FailoverLedger",
    "FailoverStatus",
    "FailoverStore",
    "open_async_failover_ledger",
    "open_failover_ledger",
]

from .checks import DEFAULT_RETENTION, check_open
from .failover_policy import FailOpen, FailoverStatus
from .failover_store import FailoverStore


class FailoverLedger(Ledger):
    """A :class:`Ledger` that fails closed (default) or open when its primary store is unreachable.

    ``primary`` is a ledger, or a function that opens one (then a primary that is down at start is tried
    again later, in open mode). ``mode="open"`` needs a ``fallback`` URL (``memory://`` or ``sqlite:///f.db``:
    its file also keeps the journal, durably); see :class:`FailOpen` for ``share``, ``retry_after``,
    ``refresh`` and ``budgets``. ``clock`` defaults to the primary ledger's.
    """

    store: FailoverStore

    def __init__(
        self,
        primary: Ledger | Callable[[], Ledger],
        *,
        mode: Literal["closed", "open"] = "closed",
        fallback: str = "memory://",
        share: float = 1.0,
        retry_after: float = 5.0,
        refresh: float = 10.0,
        budgets: Mapping[str, Budget] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if mode not in ("closed", "open"):
            raise InvalidInput("mode", mode, "must be 'closed' or 'open'")
        if not isinstance(primary, Ledger) and not callable(primary):
            raise InvalidInput("primary", primary, "must be a Ledger or a function that opens one")
        if clock is not None and not callable(clock):
            raise InvalidInput("clock", clock, "must be a function returning Unix seconds, such as time.time")
        policy = FailOpen(fallback, share, retry_after, refresh, budgets)  # checks each setting
        location = policy.location()
        if clock is None:
            clock = primary._clock if isinstance(primary, Ledger) else time.time
        from . import open_ledger

        def open_primary() -> Store:
            if isinstance(primary, Ledger):
                return primary.store
            opened = primary()
            if not isinstance(opened, Ledger):
                raise InvalidInput("primary", primary, f"must open a Ledger, not {type(opened).__name__}")
            return opened.store

        journal = ":memory:" if location.kind == "memory" else location.location
        local = open_ledger(fallback, clock=clock).store
        super().__init__(
            FailoverStore(open_primary, local, journal, mode=mode, policy=policy, clock=clock), clock=clock
        )

    def reconcile(self) -> int:
        """Replay the usage journaled during an outage on the primary (idempotent) and switch back to it.

        Returns the entries replayed; raises :class:`LedgerUnavailable` while the primary is still down."""
        return self.store.reconcile()

    def status(self) -> FailoverStatus:
        """The mode (closed/open), the active side and the journal still to replay."""
        return self.store.status()

    def __repr__(self) -> str:
        return f"FailoverLedger({self.url!r}, mode={self.store.mode!r})"


class AsyncFailoverLedger(AsyncLedger):
    """The async twin of a :class:`FailoverLedger`: the same ledger, each step run in a worker thread.

    ``AsyncFailoverLedger(FailoverLedger(...))``; the primary is reached through its sync store (for Redis,
    ``redis.Redis`` in a thread rather than ``redis.asyncio``), which adds a thread hop to every call.
    """

    def __init__(self, ledger: FailoverLedger) -> None:
        if not isinstance(ledger, FailoverLedger):
            raise InvalidInput("ledger", ledger, "must be a FailoverLedger")
        super().__init__(ThreadedAsyncStore(ledger.store, offload=True), clock=ledger._clock)
        self.ledger = ledger

    async def reconcile(self) -> int:
        """See :meth:`FailoverLedger.reconcile`."""
        return await anyio.to_thread.run_sync(self.ledger.reconcile)

    def status(self) -> FailoverStatus:
        """See :meth:`FailoverLedger.status`."""
        return self.ledger.status()

    def __repr__(self) -> str:
        return f"AsyncFailoverLedger({self.url!r}, mode={self.ledger.store.mode!r})"


def _failover(url: str, on_unavailable: Any, clock: Clock | None, prefix: str, retention: float) -> FailoverLedger:
    from . import open_ledger

    retention = check_open(clock, prefix, retention)  # now, not at the first (lazy) open of the primary
    policy = FailOpen() if on_unavailable == "open" else on_unavailable
    if not isinstance(policy, FailOpen):
        raise InvalidInput("on_unavailable", on_unavailable, "must be 'closed', 'open' or a FailOpen(...)")
    return FailoverLedger(
        lambda: open_ledger(url, clock=clock, prefix=prefix, retention=retention),
        mode="open",
        fallback=policy.fallback,
        share=policy.share,
        retry_after=policy.retry_after,
        refresh=policy.refresh,
        budgets=policy.budgets,
        clock=clock,
    )


def open_failover_ledger(
    url: str,
    on_unavailable: Literal["closed", "open"] | FailOpen = "closed",
    *,
    clock: Clock | None = None,
    prefix: str = "clear:",
    retention: float = DEFAULT_RETENTION,
) -> Ledger:
    """Open ``url`` failing closed (a plain :class:`Ledger`) or open (a :class:`FailoverLedger`)."""
    if on_unavailable == "closed":
        from . import open_ledger

        return open_ledger(url, clock=clock, prefix=prefix, retention=retention)
    return _failover(url, on_unavailable, clock, prefix, retention)


def open_async_failover_ledger(
    url: str,
    on_unavailable: Literal["closed", "open"] | FailOpen = "closed",
    *,
    clock: Clock | None = None,
    prefix: str = "clear:",
    retention: float = DEFAULT_RETENTION,
) -> AsyncLedger:
    """The async form of :func:`open_failover_ledger`: an :class:`AsyncLedger` or an :class:`AsyncFailoverLedger`."""
    if on_unavailable == "closed":
        from . import open_async_ledger

        return open_async_ledger(url, clock=clock, prefix=prefix, retention=retention)
    return AsyncFailoverLedger(_failover(url, on_unavailable, clock, prefix, retention))
