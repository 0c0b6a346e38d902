"""The Redis store (``redis://host:port/db``, ``rediss://``): the multi-host ledger.

Every operation that touches several keys is ONE Lua script run with EVALSHA (one round trip, atomic);
``now`` comes from the ledger's injected clock as a script argument, never from Redis TIME. Key layout
and script sources: :mod:`.redis_layout`. The ``redis`` package is imported only when such a URL is
opened. :class:`RedisStore` uses ``redis.Redis``; :class:`AsyncRedisStore` uses ``redis.asyncio``.

A script that fails because its connection went away (the first call on every connection after a server restart)
is sent once more on a new connection: every script is idempotent by reservation id (a retried reserve finds its
reservation and never holds twice), a read, or (``set_state``) idempotent by a write id. A store that notices that
the server lost its data refuses with :class:`~clear_integrations.errors.LedgerDataLost` (see
:class:`.redis_support.DataGuard`).
"""

from __future__ import annotations

import os
import secrets
import threading
import weakref
from typing import Any

import redis
import redis.asyncio

from ..errors import InvalidLedgerURL, LedgerUnavailable
from .accounts import Scope, tenant_of_reservation
from .checks import DEFAULT_RETENTION, Charge
from .model import Balance, Budget, Event, Reservation, UsageTotals
from .redis_layout import RedisLayout, script_source
from .redis_support import SHA, DataGuard, Failures, dropped, guard, pack, safe_url

__all__ = ["AsyncRedisStore", "RedisStore"]

#: Connections per store; more callers wait (up to ``_POOL_TIMEOUT`` seconds) for a free one.
_MAX_CONNECTIONS = 64
_POOL_TIMEOUT = 30.0


def _pool_options(on_connect: Any) -> dict[str, Any]:
    return {"decode_responses": True, "max_connections": _MAX_CONNECTIONS, "timeout": _POOL_TIMEOUT,
            "redis_connect_func": on_connect}  # fmt: skip


def _bad_url(url: str, exc: Exception) -> InvalidLedgerURL:
    return InvalidLedgerURL("url", safe_url(url), f"is not a usable Redis URL: {exc}")


class _Base:
    """What both stores derive from a URL, a prefix and a retention."""

    def __init__(self, url: str, prefix: str, retention: float) -> None:
        self.url = url
        self._layout = RedisLayout(prefix)
        self.prefix = prefix
        self._retention = retention
        self._data = DataGuard(url, self._layout.marker_key())

    @staticmethod
    def _reserve_args(
        scope: Scope, tokens: int, minimum: int | None, rid: str, now: float, expires: float
    ) -> list[Any]:
        return [repr(now), rid, scope.name, tokens, -1 if minimum is None else minimum, repr(expires)]

    @staticmethod
    def _commit_args(rid: str, charge: Charge, now: float) -> list[Any]:
        return [repr(now), rid, charge.total, charge.prompt, charge.completion, charge.reasoning, int(charge.estimated)]


class RedisStore(_Base):
    """A :class:`~.store.Store` on a Redis server (see the module docstring)."""

    def __init__(self, url: str, *, prefix: str = "clear:", retention: float = DEFAULT_RETENTION) -> None:
        super().__init__(url, prefix, retention)
        self._local = threading.local()
        # this store's per-thread connections, for close(); weak, so a finished thread's one is collected
        # (redis.Connection disconnects when garbage-collected)
        self._scripts: weakref.WeakSet[Any] = weakref.WeakSet()
        self._scripts_lock = threading.Lock()
        try:
            self._pool = redis.BlockingConnectionPool.from_url(url, **_pool_options(self._data.on_connect()))
        except (ValueError, TypeError) as exc:
            raise _bad_url(url, exc) from None
        with guard(url):
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

    def _run(self, name: str, keys: list[str], args: list[Any], *, guarded: bool = True) -> Any:
        """EVALSHA ``name`` in one round trip on this thread's connection (loading the script if needed).

        This skips redis-py's pool and retry layers on the hot path. A connection that was open and went away
        is retried once on a new one (see the module docstring); any other failure is :class:`LedgerUnavailable`.
        ``guarded``: refuse while the server's data is lost (budget changes are not guarded).
        """
        connection = self._connection()
        packed = pack(("EVALSHA", SHA[name], len(keys), *keys, *args))
        for attempt in (1, 2):
            reused = getattr(connection, "_sock", None) is not None  # open before this call (redis-py >= 5)
            try:
                if not reused:
                    connection.connect()  # reads the data marker (DataGuard.on_connect)
                if guarded:
                    self._data.check(self._client)
                try:
                    connection.send_packed_command([packed])
                    return connection.read_response()
                except redis.exceptions.NoScriptError:
                    connection.send_packed_command([pack(("SCRIPT", "LOAD", script_source(name)))])
                    connection.read_response()
                    connection.send_packed_command([packed])
                    return connection.read_response()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                connection.disconnect()
                if attempt == 2 or not reused or not dropped(exc):
                    raise LedgerUnavailable(safe_url(self.url), exc) from exc
            except redis.RedisError as exc:
                raise LedgerUnavailable(safe_url(self.url), exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, function: Any, *args: Any, guarded: bool = True) -> Any:
        """A plain command through the pool (redis-py retries a dropped connection), refused while data is lost."""
        if guarded:
            self._data.check(self._client)
        with guard(self.url):
            result = function(*args)
        if guarded and self._data.lost:  # the call's own connection found out
            raise self._data.error()
        return result

    def set_budget(self, scope: Scope, budget: Budget | None, now: float) -> None:
        keys = self._layout.tenant_keys(scope.tenant)
        self._run("set_budget", keys, self._layout.budget_args(scope, budget, now), guarded=False)
        if budget is not None:
            self._read(lambda: self._client.set(self._data.key, repr(now), nx=True), guarded=False)  # the marker
            self._data.found(True)

    def get_budget(self, scope: Scope) -> Budget | None:
        key, fields = self._layout.tenant_keys(scope.tenant)[0], self._layout.budget_fields(scope)
        return self._layout.budget(self._read(self._client.hmget, key, fields, guarded=False))

    def reserve(
        self, scope: Scope, tokens: int, minimum: int | None, lease: float, rid: str, now: float
    ) -> Reservation:
        expires = now + lease
        args = self._reserve_args(scope, tokens, minimum, rid, now, expires)
        reply = self._run("reserve", self._layout.tenant_keys(scope.tenant), args)
        return self._layout.reservation(reply, rid, scope, tokens, minimum, now, expires)

    def commit(self, rid: str, charge: Charge, now: float) -> int:
        keys = self._layout.tenant_keys(tenant_of_reservation(rid))
        return self._layout.settled(self._run("commit", keys, self._commit_args(rid, charge, now)), rid)

    def release(self, rid: str, now: float) -> int:
        keys = self._layout.tenant_keys(tenant_of_reservation(rid))
        return self._layout.settled(self._run("release", keys, [repr(now), rid]), rid)

    def _tenants(self) -> list[str]:
        found = self._read(lambda: list(self._client.scan_iter(self._layout.account_pattern())))
        return [self._layout.tenant_of_key(key) for key in found]

    def expire(self, now: float) -> int:
        expired, failed = 0, Failures(self.url)
        for tenant in sorted(set(self._tenants())):
            try:
                expired += self._sweep(tenant, now)
            except LedgerUnavailable as exc:
                failed.add(tenant, exc)
        failed.raise_any()
        return expired

    def _sweep(self, tenant: str, now: float) -> int:
        keys, expired = self._layout.tenant_keys(tenant), 0
        while True:
            count = int(self._run("expire", keys, [repr(now)]))
            expired += count
            if count < 1000:
                break
        entries = self._read(lambda: dict(self._client.hscan_iter(keys[1], count=1000)))
        stale = self._layout.purgeable(entries, now - self._retention)
        for start in range(0, len(stale), 500):
            self._run("purge", keys, [repr(now), repr(now - self._retention), *stale[start : start + 500]])
        return expired

    def balance(self, scope: Scope, now: float) -> Balance:
        reply = self._run("balance", self._layout.tenant_keys(scope.tenant), [repr(now), scope.name])
        return self._layout.balance(scope, reply)

    def usage(self, scope: Scope, since: float | None) -> UsageTotals:
        keys = self._layout.tenant_keys(scope.tenant)

        def read() -> list[Any]:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(keys[0], f"{scope.name}|rs")
                pipe.lrange(keys[3], 0, -1)
                return pipe.execute()

        reset_seq, raws = self._read(read)
        return self._layout.usage(scope, reset_seq, raws, since)

    def events(self, scope: Scope | None, since: float | None, limit: int | None) -> list[Event]:
        tenants = [scope.tenant] if scope is not None else self._tenants()
        lists = self._layout.tenant_keys
        raws = self._read(lambda: {tenant: self._client.lrange(lists(tenant)[3], 0, -1) for tenant in tenants})
        return self._layout.select_events(raws, scope, since, limit)

    def reset(self, scope: Scope, now: float) -> None:
        self._run("reset", self._layout.tenant_keys(scope.tenant), [repr(now), scope.name])

    def get_state(self, pool: str) -> tuple[dict[str, Any] | None, int]:
        return self._layout.state(self._read(self._client.hmget, self._layout.state_key(pool), ["value", "version"]))

    def set_state(self, pool: str, value: str, expected_version: int) -> bool:
        writer = secrets.token_hex(8)  # a retried swap that already landed answers True (the write id matches)
        return bool(self._run("set_state", [self._layout.state_key(pool)], [expected_version, value, writer]))

    def close(self) -> None:
        """Close the connections."""
        with self._scripts_lock:
            for connection in list(self._scripts):
                connection.disconnect()
        self._client.close()


class AsyncRedisStore(_Base):
    """An :class:`~.store.AsyncStore` on ``redis.asyncio``: the same scripts and keys as :class:`RedisStore`.

    The connection is made on first use (``open_async_ledger`` is not a coroutine).
    """

    def __init__(self, url: str, *, prefix: str = "clear:", retention: float = DEFAULT_RETENTION) -> None:
        super().__init__(url, prefix, retention)
        try:
            options = _pool_options(self._data.on_connect_async())
            pool = redis.asyncio.BlockingConnectionPool.from_url(url, **options)
        except (ValueError, TypeError) as exc:
            raise _bad_url(url, exc) from None
        self._client = redis.asyncio.Redis(connection_pool=pool)

    async def _run(self, name: str, keys: list[str], args: list[Any], *, guarded: bool = True) -> Any:
        """EVALSHA ``name`` on a pooled connection, without redis-py's retry layer (see :meth:`RedisStore._run`)."""
        pool: Any = self._client.connection_pool
        packed = pack(("EVALSHA", SHA[name], len(keys), *keys, *args))
        for attempt in (1, 2):
            with guard(self.url):
                connection = await pool.get_connection()  # connected and checked by the pool
            try:
                if guarded:
                    await self._data.check_async(self._client)
                try:
                    await connection.send_packed_command([packed])
                    return await connection.read_response()
                except redis.exceptions.NoScriptError:
                    await connection.send_packed_command([pack(("SCRIPT", "LOAD", script_source(name)))])
                    await connection.read_response()
                    await connection.send_packed_command([packed])
                    return await connection.read_response()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                await connection.disconnect()
                if attempt == 2 or not dropped(exc):
                    raise LedgerUnavailable(safe_url(self.url), exc) from exc
            except redis.RedisError as exc:
                raise LedgerUnavailable(safe_url(self.url), exc) from exc
            finally:
                await pool.release(connection)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read(self, function: Any, *, guarded: bool = True) -> Any:
        """Await ``function()`` (plain commands through the pool), refused while the data is lost."""
        if guarded:
            await self._data.check_async(self._client)
        with guard(self.url):
            result = await function()
        if guarded and self._data.lost:
            raise self._data.error()
        return result

    async def set_budget(self, scope: Scope, budget: Budget | None, now: float) -> None:
        keys = self._layout.tenant_keys(scope.tenant)
        await self._run("set_budget", keys, self._layout.budget_args(scope, budget, now), guarded=False)
        if budget is not None:
            await self._read(lambda: self._client.set(self._data.key, repr(now), nx=True), guarded=False)
            self._data.found(True)

    async def get_budget(self, scope: Scope) -> Budget | None:
        key, fields = self._layout.tenant_keys(scope.tenant)[0], self._layout.budget_fields(scope)
        return self._layout.budget(await self._read(lambda: self._client.hmget(key, fields), guarded=False))

    async def reserve(
        self, scope: Scope, tokens: int, minimum: int | None, lease: float, rid: str, now: float
    ) -> Reservation:
        expires = now + lease
        args = self._reserve_args(scope, tokens, minimum, rid, now, expires)
        reply = await self._run("reserve", self._layout.tenant_keys(scope.tenant), args)
        return self._layout.reservation(reply, rid, scope, tokens, minimum, now, expires)

    async def commit(self, rid: str, charge: Charge, now: float) -> int:
        keys = self._layout.tenant_keys(tenant_of_reservation(rid))
        return self._layout.settled(await self._run("commit", keys, self._commit_args(rid, charge, now)), rid)

    async def release(self, rid: str, now: float) -> int:
        keys = self._layout.tenant_keys(tenant_of_reservation(rid))
        return self._layout.settled(await self._run("release", keys, [repr(now), rid]), rid)

    async def _tenants(self) -> list[str]:
        async def scan() -> list[str]:
            return [key async for key in self._client.scan_iter(self._layout.account_pattern())]

        return [self._layout.tenant_of_key(key) for key in await self._read(scan)]

    async def expire(self, now: float) -> int:
        expired, failed = 0, Failures(self.url)
        for tenant in sorted(set(await self._tenants())):
            try:
                expired += await self._sweep(tenant, now)
            except LedgerUnavailable as exc:
                failed.add(tenant, exc)
        failed.raise_any()
        return expired

    async def _sweep(self, tenant: str, now: float) -> int:
        keys, expired = self._layout.tenant_keys(tenant), 0
        while True:
            count = int(await self._run("expire", keys, [repr(now)]))
            expired += count
            if count < 1000:
                break

        async def scan() -> dict[str, str]:
            return {rid: raw async for rid, raw in self._client.hscan_iter(keys[1], count=1000)}

        stale = self._layout.purgeable(await self._read(scan), now - self._retention)
        for start in range(0, len(stale), 500):
            await self._run("purge", keys, [repr(now), repr(now - self._retention), *stale[start : start + 500]])
        return expired

    async def balance(self, scope: Scope, now: float) -> Balance:
        reply = await self._run("balance", self._layout.tenant_keys(scope.tenant), [repr(now), scope.name])
        return self._layout.balance(scope, reply)

    async def usage(self, scope: Scope, since: float | None) -> UsageTotals:
        keys = self._layout.tenant_keys(scope.tenant)

        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(keys[0], f"{scope.name}|rs")
                pipe.lrange(keys[3], 0, -1)
                return await pipe.execute()

        reset_seq, raws = await self._read(read)
        return self._layout.usage(scope, reset_seq, raws, since)

    async def events(self, scope: Scope | None, since: float | None, limit: int | None) -> list[Event]:
        tenants = [scope.tenant] if scope is not None else await self._tenants()

        async def read() -> dict[str, list[Any]]:
            return {t: await self._client.lrange(self._layout.tenant_keys(t)[3], 0, -1) for t in tenants}

        return self._layout.select_events(await self._read(read), scope, since, limit)

    async def reset(self, scope: Scope, now: float) -> None:
        await self._run("reset", self._layout.tenant_keys(scope.tenant), [repr(now), scope.name])

    async def get_state(self, pool: str) -> tuple[dict[str, Any] | None, int]:
        key = self._layout.state_key(pool)
        return self._layout.state(await self._read(lambda: self._client.hmget(key, ["value", "version"])))

    async def set_state(self, pool: str, value: str, expected_version: int) -> bool:
        writer = secrets.token_hex(8)
        return bool(await self._run("set_state", [self._layout.state_key(pool)], [expected_version, value, writer]))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
