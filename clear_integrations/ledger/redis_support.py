"""What the sync and async Redis stores share besides the key layout: passwords kept out of messages, the RESP
encoding of EVALSHA, which failures a call may retry, the guard that notices a server that lost the ledger's data,
and the report of an ``expire()`` sweep that could not sweep every tenant."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from ..errors import LedgerDataLost, LedgerUnavailable
from .redis_layout import SCRIPTS, script_source

__all__ = ["SHA", "DataGuard", "Failures", "dropped", "guard", "pack", "safe_url"]

#: The SHA1 of every script, for EVALSHA.
SHA = {name: hashlib.sha1(script_source(name).encode()).hexdigest() for name in SCRIPTS}


def safe_url(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def guard(url: str) -> Iterator[None]:
    """Report a Redis failure as :class:`LedgerUnavailable` (the URL without its password)."""
    try:
        yield
    except redis.RedisError as exc:
        raise LedgerUnavailable(safe_url(url), exc) from exc


def pack(args: tuple[Any, ...]) -> bytes:
    """A command in the Redis protocol (RESP): arguments are str or int."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if type(arg) is str else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def dropped(exc: BaseException) -> bool:
    """Whether a call failed because a connection that was open went away ("Connection closed by server", a
    broken pipe: what every connection to a restarted server meets once), so one retry on a new connection may
    succeed. Not a timeout (the server may be slow, not gone), nor a server that is still loading its data."""
    return isinstance(exc, redis.ConnectionError) and not isinstance(
        exc, redis.TimeoutError | redis.exceptions.BusyLoadingError
    )


class DataGuard:
    """Notices that the server lost the ledger's data, so that a fail-closed ledger does not grant from nothing.

    The first budget written also writes a marker key (``SET NX``). Every new connection reads it (one
    ``EXISTS`` when it connects: after a restart, every connection is new). A store that has seen the marker and
    then finds it missing knows that the budgets it saw are gone (a restart without persistence, a flush, a
    failover to an empty replica): it refuses every operation but budget changes with :class:`LedgerDataLost`,
    checking the marker again on each call, until a budget is written again (by this process, ``ledger apply``
    or any other) and the marker with it.
    """

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key
        self.seen = False
        self.lost = False

    def found(self, exists: bool) -> None:
        """What a read of the marker said."""
        if exists:
            self.seen, self.lost = True, False
        elif self.seen:
            self.lost = True

    def error(self) -> LedgerDataLost:
        return LedgerDataLost(safe_url(self.url))

    def check(self, client: Any) -> None:
        """Raise :class:`LedgerDataLost` while the data is lost (reading the marker again first)."""
        if self.lost:
            with guard(self.url):
                self.found(bool(client.exists(self.key)))
            if self.lost:
                raise self.error()

    async def check_async(self, client: Any) -> None:
        """:meth:`check` on a ``redis.asyncio`` client."""
        if self.lost:
            with guard(self.url):
                self.found(bool(await client.exists(self.key)))
            if self.lost:
                raise self.error()

    def on_connect(self) -> Callable[[Any], None]:
        """The ``redis_connect_func`` of sync connections: the usual handshake, then a read of the marker."""

        def connected(connection: Any) -> None:
            connection.on_connect()
            connection.send_command("EXISTS", self.key)
            self.found(bool(connection.read_response()))

        return connected

    def on_connect_async(self) -> Callable[[Any], Awaitable[None]]:
        """The ``redis_connect_func`` of ``redis.asyncio`` connections."""

        async def connected(connection: Any) -> None:
            await connection.on_connect()
            await connection.send_command("EXISTS", self.key)
            self.found(bool(await connection.read_response()))

        return connected


class Failures:
    """Tenants an ``expire()`` sweep could not sweep: the sweep goes on to the others, then reports them all.

    A server that cannot be reached stops the sweep at once (every tenant would fail the same way)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tenants: dict[str, LedgerUnavailable] = {}

    def add(self, tenant: str, exc: LedgerUnavailable) -> None:
        if isinstance(exc, LedgerDataLost) or isinstance(exc.cause, redis.ConnectionError | redis.TimeoutError):
            raise exc
        self.tenants[tenant] = exc

    def raise_any(self) -> None:
        if self.tenants:
            named = ", ".join(f"{tenant!r} ({exc.cause})" for tenant, exc in list(self.tenants.items())[:5])
            more = f" and {len(self.tenants) - 5} more" if len(self.tenants) > 5 else ""
            cause = f"the expire() sweep swept every other tenant but failed on {named}{more}"
            raise LedgerUnavailable(safe_url(self.url), cause)
