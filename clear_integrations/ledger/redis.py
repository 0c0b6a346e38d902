"""The Redis store (``redis://host:port/db``, ``rediss://``): the multi-host ledger.

Every operation that touches several keys is ONE Lua script run with EVALSHA (one round trip, atomic);
``now`` comes from the ledger's injected clock as a script argument, never from Redis TIME. Key layout
and script sources: :mod:`.redis_layout`. The ``redis`` package is imported only when such a URL is
opened. :class:`RedisStore` uses ``redis.Redis``; :class:`AsyncRedisStore` uses ``redis.asyncio``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio

from ..errors import LedgerUnavailable
from .accounts import Scope, tenant_of_reservation
from .checks import DEFAULT_RETENTION, Charge
from .model import Balance, Budget, Event, Reservation, UsageTotals
from .redis_layout import SCRIPTS, RedisLayout, script_source

__all__ = ["AsyncRedisStore", "RedisStore"]


def _safe(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def _guard(url: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise LedgerUnavailable(_safe(url), exc) from exc


#: Connections per store; more callers wait (up to ``_POOL_TIMEOUT`` seconds) for a free one.
_MAX_CONNECTIONS = 64
_POOL_TIMEOUT = 30.0


def _pack(args: tuple[Any, ...]) -> bytes:
    """A command in the Redis protocol (RESP): arguments are str or int."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if type(arg) is str else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


_SHA = {name: hashlib.sha1(script_source(name).encode()).hexdigest() for name in SCRIPTS}


class RedisStore:
    """A :class:`~.store.Store` on a Redis server (see the module docstring)."""

    def __init__(self, url: str, *, prefix: str = "clear:", retention: float = DEFAULT_RETENTION) -> None:
        self.url = url
        self._layout = RedisLayout(prefix)
        self.prefix = prefix
        self._retention = retention
        self._local = threading.local()
        # this store's per-thread connections, for close(); weak, so a finished thread's one is collected
        # (redis.Connection disconnects when garbage-collected)
        self._scripts: weakref.WeakSet[Any] = weakref.WeakSet()
        self._scripts_lock = threading.Lock()
        with _guard(url):
            self._pool = redis.BlockingConnectionPool.from_url(
                url, decode_responses=True, max_connections=_MAX_CONNECTIONS, timeout=_POOL_TIMEOUT
            )
            self._client = redis.Redis(connection_pool=self._pool)
            self._client.ping()

    def _connection(self) -> Any:
        """This thread's own connection for scripts (made on first use, and again after a fork)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.pid = os.getpid()
            local.connection = self._pool.connection_class(**self._pool.connection_kwargs)
            with self._scripts_lock:
                self._scripts.add(local.connection)
        return local.connection

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA ``name`` in one round trip on this thread's connection (loading the script if needed).

        This skips redis-py's pool and retry layers on the hot path: a retry after a lost reply could
        run a script twice, so a failure is reported as :class:`LedgerUnavailable` and never retried here.
        """
        connection = self._connection()
        packed = _pack(("EVALSHA", _SHA[name], len(keys), *keys, *args))
        try:
            try:
                connection.send_packed_command([packed])
                return connection.read_response()
            except redis.exceptions.NoScriptError:
                connection.send_packed_command([_pack(("SCRIPT", "LOAD", script_source(name)))])
                connection.read_response()
                connection.send_packed_command([packed])
                return connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            connection.disconnect()
            raise LedgerUnavailable(_safe(self.url), exc) from exc
        except redis.RedisError as exc:
            raise LedgerUnavailable(_safe(self.url), exc) from exc

    def set_budget(self, scope: Scope, budget: Budget | None, now: float) -> None:
        keys = self._layout.tenant_keys(scope.tenant)
        self._run("set_budget", keys, self._layout.budget_args(scope, budget, now))

    def get_budget(self, scope: Scope) -> Budget | None:
        with _guard(self.url):
            reply = self._client.hmget(self._layout.tenant_keys(scope.tenant)[0], self._layout.budget_fields(scope))
        return self._layout.budget(reply)

    def reserve(
        self, scope: Scope, tokens: int, minimum: int | None, lease: float, rid: str, now: float
    ) -> Reservation:
        expires = now + lease
        args = [repr(now), rid, scope.name, tokens, -1 if minimum is None else minimum, repr(expires)]
        reply = self._run("reserve", self._layout.tenant_keys(scope.tenant), args)
        return self._layout.reservation(reply, rid, scope, tokens, minimum, now, expires)

    def commit(self, rid: str, charge: Charge, now: float) -> int:
        keys = self._layout.tenant_keys(tenant_of_reservation(rid))
        args = [repr(now), rid, charge.total, charge.prompt, charge.completion, charge.reasoning, int(charge.estimated)]
        return self._layout.settled(self._run("commit", keys, args), rid)

    def release(self, rid: str, now: float) -> int:
        keys = self._layout.tenant_keys(tenant_of_reservation(rid))
        return self._layout.settled(self._run("release", keys, [repr(now), rid]), rid)

    def _tenants(self) -> list[str]:
        with _guard(self.url):
            return [self._layout.tenant_of_key(key) for key in self._client.scan_iter(self._layout.account_pattern())]

    def expire(self, now: float) -> int:
        expired = 0
        for tenant in sorted(set(self._tenants())):
            keys = self._layout.tenant_keys(tenant)
            while True:
                count = int(self._run("expire", keys, [repr(now)]))
                expired += count
                if count < 1000:
                    break
            with _guard(self.url):
                entries = dict(self._client.hscan_iter(keys[1], count=1000))
            stale = self._layout.purgeable(entries, now - self._retention)
            for start in range(0, len(stale), 500):
                self._run("purge", keys, [repr(now), repr(now - self._retention), *stale[start : start + 500]])
        return expired

    def balance(self, scope: Scope, now: float) -> Balance:
        reply = self._run("balance", self._layout.tenant_keys(scope.tenant), [repr(now), scope.name])
        return self._layout.balance(scope, reply)

    def usage(self, scope: Scope, since: float | None) -> UsageTotals:
        keys = self._layout.tenant_keys(scope.tenant)
        with _guard(self.url), self._client.pipeline(transaction=True) as pipe:
            pipe.hget(keys[0], f"{scope.name}|rs")
            pipe.lrange(keys[3], 0, -1)
            reset_seq, raws = pipe.execute()
        return self._layout.usage(scope, reset_seq, raws, since)

    def events(self, scope: Scope | None, since: float | None, limit: int | None) -> list[Event]:
        tenants = [scope.tenant] if scope is not None else self._tenants()
        with _guard(self.url):
            raws = {tenant: self._client.lrange(self._layout.tenant_keys(tenant)[3], 0, -1) for tenant in tenants}
        return self._layout.select_events(raws, scope, since, limit)

    def reset(self, scope: Scope, now: float) -> None:
        self._run("reset", self._layout.tenant_keys(scope.tenant), [repr(now), scope.name])

    def get_state(self, pool: str) -> tuple[dict[str, Any] | None, int]:
        with _guard(self.url):
            return self._layout.state(self._client.hmget(self._layout.state_key(pool), ["value", "version"]))

    def set_state(self, pool: str, value: str, expected_version: int) -> bool:
        return bool(self._run("set_state", [self._layout.state_key(pool)], [expected_version, value]))

    def close(self) -> None:
        """Close the connections."""
        with self._scripts_lock:
            for connection in list(self._scripts):
                connection.disconnect()
        self._client.close()


class AsyncRedisStore:
    """An :class:`~.store.AsyncStore` on ``redis.asyncio``: the same scripts and keys as :class:`RedisStore`.

    The connection is made on first use (``open_async_ledger`` is not a coroutine).
    """

    def __init__(self, url: str, *, prefix: str = "clear:", retention: float = DEFAULT_RETENTION) -> None:
        self.url = url
        self._layout = RedisLayout(prefix)
        self.prefix = prefix
        self._retention = retention
        with _guard(url):
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url, decode_responses=True, max_connections=_MAX_CONNECTIONS, timeout=_POOL_TIMEOUT
            )
            self._client = redis.asyncio.Redis(connection_pool=pool)

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA ``name`` on a pooled connection, without redis-py's retry layer (see :meth:`RedisStore._run`)."""
        pool: Any = self._client.connection_pool
        packed = _pack(("EVALSHA", _SHA[name], len(keys), *keys, *args))
        with _guard(self.url):
            connection = await pool.get_connection()
            try:
                try:
                    await connection.send_packed_command([packed])
                    return await connection.read_response()
                except redis.exceptions.NoScriptError:
                    await connection.send_packed_command([_pack(("SCRIPT", "LOAD", script_source(name)))])
                    await connection.read_response()
                    await connection.send_packed_command([packed])
                    return await connection.read_response()
            except (redis.ConnectionError, redis.TimeoutError):
                await connection.disconnect()
                raise
            finally:
                await pool.release(connection)

    async def set_budget(self, scope: Scope, budget: Budget | None, now: float) -> None:
        keys = self._layout.tenant_keys(scope.tenant)
        await self._run("set_budget", keys, self._layout.budget_args(scope, budget, now))

    async def get_budget(self, scope: Scope) -> Budget | None:
        with _guard(self.url):
            key = self._layout.tenant_keys(scope.tenant)[0]
            reply = await self._client.hmget(key, self._layout.budget_fields(scope))
        return self._layout.budget(reply)

    async def reserve(
        self, scope: Scope, tokens: int, minimum: int | None, lease: float, rid: str, now: float
    ) -> Reservation:
        expires = now + lease
        args = [repr(now), rid, scope.name, tokens, -1 if minimum is None else minimum, repr(expires)]
        reply = await self._run("reserve", self._layout.tenant_keys(scope.tenant), args)
        return self._layout.reservation(reply, rid, scope, tokens, minimum, now, expires)

    async def commit(self, rid: str, charge: Charge, now: float) -> int:
        keys = self._layout.tenant_keys(tenant_of_reservation(rid))
        args = [repr(now), rid, charge.total, charge.prompt, charge.completion, charge.reasoning, int(charge.estimated)]
        return self._layout.settled(await self._run("commit", keys, args), rid)

    async def release(self, rid: str, now: float) -> int:
        keys = self._layout.tenant_keys(tenant_of_reservation(rid))
        return self._layout.settled(await self._run("release", keys, [repr(now), rid]), rid)

    async def _tenants(self) -> list[str]:
        with _guard(self.url):
            return [
                self._layout.tenant_of_key(key) async for key in self._client.scan_iter(self._layout.account_pattern())
            ]

    async def expire(self, now: float) -> int:
        expired = 0
        for tenant in sorted(set(await self._tenants())):
            keys = self._layout.tenant_keys(tenant)
            while True:
                count = int(await self._run("expire", keys, [repr(now)]))
                expired += count
                if count < 1000:
                    break
            with _guard(self.url):
                entries = {rid: raw async for rid, raw in self._client.hscan_iter(keys[1], count=1000)}
            stale = self._layout.purgeable(entries, now - self._retention)
            for start in range(0, len(stale), 500):
                await self._run("purge", keys, [repr(now), repr(now - self._retention), *stale[start : start + 500]])
        return expired

    async def balance(self, scope: Scope, now: float) -> Balance:
        reply = await self._run("balance", self._layout.tenant_keys(scope.tenant), [repr(now), scope.name])
        return self._layout.balance(scope, reply)

    async def usage(self, scope: Scope, since: float | None) -> UsageTotals:
        keys = self._layout.tenant_keys(scope.tenant)
        with _guard(self.url):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(keys[0], f"{scope.name}|rs")
                pipe.lrange(keys[3], 0, -1)
                reset_seq, raws = await pipe.execute()
        return self._layout.usage(scope, reset_seq, raws, since)

    async def events(self, scope: Scope | None, since: float | None, limit: int | None) -> list[Event]:
        tenants = [scope.tenant] if scope is not None else await self._tenants()
        raws: dict[str, list[Any]] = {}
        with _guard(self.url):
            for tenant in tenants:
                raws[tenant] = await self._client.lrange(self._layout.tenant_keys(tenant)[3], 0, -1)
        return self._layout.select_events(raws, scope, since, limit)

    async def reset(self, scope: Scope, now: float) -> None:
        await self._run("reset", self._layout.tenant_keys(scope.tenant), [repr(now), scope.name])

    async def get_state(self, pool: str) -> tuple[dict[str, Any] | None, int]:
        with _guard(self.url):
            reply = await self._client.hmget(self._layout.state_key(pool), ["value", "version"])
        return self._layout.state(reply)

    async def set_state(self, pool: str, value: str, expected_version: int) -> bool:
        return bool(await self._run("set_state", [self._layout.state_key(pool)], [expected_version, value]))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
