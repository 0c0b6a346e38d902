"""The budget ledger: per-tenant and per-session token budgets, atomic on memory, SQLite and Redis.

```python
from clear_integrations.ledger import open_ledger, Budget
ledger = open_ledger("sqlite:///budgets.db")            # memory://, redis://localhost:6379/0
ledger.set_budget("acme", Budget(tokens=10_000, window="1d"))
r = ledger.reserve("acme/session-1", 500)               # holds 500 on acme and on acme/session-1
ledger.commit(r, used=320)                              # 180 go back to the pool
```

See ``docs/ledger.md`` for the model (accounts, windows, leases, soft/hard, idempotence, Redis keys).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Literal

from .checks import DEFAULT_RETENTION, check_open
from .config import load_budgets
from .ledger import DEFAULT_LEASE, AsyncLedger, Clock, Ledger
from .memory import MemoryStore
from .model import Balance, Budget, Event, Reservation, Usage, UsageTotals
from .store import AsyncStore, Store, ThreadedAsyncStore
from .urls import InvalidLedgerURL, parse_ledger_url

if TYPE_CHECKING:
    from .failover import AsyncFailoverLedger, FailOpen, FailoverLedger, FailoverStatus, open_failover_ledger

_FAILOVER = ("AsyncFailoverLedger", "FailOpen", "FailoverLedger", "FailoverStatus", "open_failover_ledger")


def __getattr__(name: str) -> Any:
    """The failover names, imported on first use (their journal needs ``sqlite3``, which the core does not)."""
    if name in _FAILOVER:
        from . import failover

        return getattr(failover, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_LEASE",
    "AsyncFailoverLedger",
    "AsyncLedger",
    "AsyncStore",
    "Balance",
    "Budget",
    "Clock",
    "Event",
    "FailOpen",
    "FailoverLedger",
    "FailoverStatus",
    "InvalidLedgerURL",
    "Ledger",
    "Reservation",
    "Store",
    "Usage",
    "UsageTotals",
    "load_budgets",
    "open_async_ledger",
    "open_failover_ledger",
    "open_ledger",
]

_named_memory: dict[str, MemoryStore] = {}
_named_lock = threading.Lock()


def _memory(url: str, name: str, retention: float) -> MemoryStore:
    if not name:
        return MemoryStore(url, retention=retention)
    with _named_lock:
        store = _named_memory.get(name)
        if store is None:
            store = _named_memory[name] = MemoryStore(url, retention=retention)
        return store


def _open_store(url: str, prefix: str, retention: float) -> Store:
    parsed = parse_ledger_url(url)
    if parsed.kind == "memory":
        return _memory(url, parsed.location, retention)
    if parsed.kind == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(url, parsed.location, retention=retention)
    from .redis import RedisStore

    return RedisStore(url, prefix=prefix, retention=retention)


def open_ledger(
    url: str,
    *,
    clock: Clock | None = None,
    prefix: str = "clear:",
    retention: float = DEFAULT_RETENTION,
    on_unavailable: Literal["closed", "open"] | FailOpen = "closed",
) -> Ledger:
    """Open a :class:`Ledger` on ``memory://`` (this process only; ``memory://name`` shares one store per
    name within the process), ``sqlite:///path.db`` or ``redis://host:port/db``.

    ``clock`` returns Unix seconds (default :func:`time.time`) and drives windows and leases on every
    backend. ``prefix`` starts every Redis key; a memory or SQLite ledger is one namespace (its name, its file)
    and has no keys to prefix, so there ``prefix`` is checked but changes nothing. Closed reservations are kept
    ``retention`` seconds (>= 0) for idempotent retries (purged by :meth:`Ledger.expire`). Raises
    :class:`InvalidLedgerURL` for an unknown scheme or an in-memory SQLite URL, ``InvalidInput`` naming a bad
    option, and :class:`~clear_integrations.errors.LedgerUnavailable` when the store cannot be reached.
    ``on_unavailable``: ``"closed"`` (default) raises ``LedgerUnavailable``; ``"open"`` or a :class:`FailOpen`
    returns a :class:`FailoverLedger` that serves from a local ledger and reconciles later (``docs/deployment.md``).
    """
    seconds = check_open(clock, prefix, retention)
    if on_unavailable != "closed":
        from .failover import open_failover_ledger

        return open_failover_ledger(url, on_unavailable, clock=clock, prefix=prefix, retention=seconds)
    return Ledger(_open_store(url, prefix, seconds), clock=clock)


def open_async_ledger(
    url: str,
    *,
    clock: Clock | None = None,
    prefix: str = "clear:",
    retention: float = DEFAULT_RETENTION,
    on_unavailable: Literal["closed", "open"] | FailOpen = "closed",
) -> AsyncLedger:
    """Open an :class:`AsyncLedger`: the same URLs and options as :func:`open_ledger`.

    Redis uses ``redis.asyncio``; SQLite runs each step in a worker thread; memory runs inline.
    """
    seconds = check_open(clock, prefix, retention)
    if on_unavailable != "closed":
        from .failover import open_async_failover_ledger

        return open_async_failover_ledger(url, on_unavailable, clock=clock, prefix=prefix, retention=seconds)
    parsed = parse_ledger_url(url)
    if parsed.kind == "redis":
        from .redis import AsyncRedisStore

        return AsyncLedger(AsyncRedisStore(url, prefix=prefix, retention=seconds), clock=clock)
    store = _open_store(url, prefix, seconds)
    return AsyncLedger(ThreadedAsyncStore(store, offload=parsed.kind == "sqlite"), clock=clock)
