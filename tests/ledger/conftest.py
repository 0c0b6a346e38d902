"""Fixtures of the ledger suite: a fake clock and one ledger per backend (memory, SQLite, Redis).

Redis tests use REDIS_URL (default redis://127.0.0.1:6379/15) with a unique key prefix per test, and
delete that prefix's keys afterwards. They do not FLUSHDB: several test runs (and benchmarks) share the
server, and a flush would wipe the keys of a run in progress. Without a server they skip, except when the
CI environment variable is set: then they fail, so CI cannot silently lose them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clear_integrations.ledger import AsyncLedger, Ledger, open_async_ledger, open_ledger

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")

#: A fixed start time for fake clocks: 2026-12-15T06:40:00Z, in the middle of a UTC day.
T0 = 1_797_316_800.0


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    """How to open ledgers on one backend for one test."""

    name: str
    url: str
    prefix: str = "clear:"
    opened: list[Ledger] = field(default_factory=list)

    def open(self, clock: FakeClock | None = None) -> Ledger:
        ledger = open_ledger(self.url, clock=clock, prefix=self.prefix)
        self.opened.append(ledger)
        return ledger

    def open_async(self, clock: FakeClock | None = None) -> AsyncLedger:
        return open_async_ledger(self.url, clock=clock, prefix=self.prefix)

    @property
    def shared(self) -> bool:
        """Whether several processes can share this backend."""
        return self.name != "memory"


def redis_available() -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
        client.close()
    except redis.RedisError:
        return False
    return True


def require_redis() -> None:
    """Skip without a Redis server, or fail when the CI environment variable is set."""
    if not redis_available():
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI but does not answer at {REDIS_URL}")
        pytest.skip(f"no Redis server at {REDIS_URL}")


def delete_prefix(prefix: str) -> None:
    """Delete every key under ``prefix`` (the keys of one test)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
    client.close()


def unique_prefix() -> str:
    """A key prefix no other test (or test run) uses."""
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)],
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        made = Backend("memory", f"memory://test-{uuid.uuid4().hex}")
    elif request.param == "sqlite":
        made = Backend("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}")
    else:
        require_redis()
        made = Backend("redis", REDIS_URL, prefix=unique_prefix())
    yield made
    for ledger in made.opened:
        ledger.close()
    if made.name == "redis":
        delete_prefix(made.prefix)


@pytest.fixture
def redis_backend(tmp_path: Path) -> Iterator[Backend]:
    """The Redis backend alone (a unique key prefix, deleted afterwards), for Redis-only behaviour."""
    require_redis()
    made = Backend("redis", REDIS_URL, prefix=unique_prefix())
    yield made
    for ledger in made.opened:
        ledger.close()
    delete_prefix(made.prefix)


@pytest.fixture
def shared_backend(backend: Backend) -> Backend:
    """A backend several processes can share (SQLite, Redis)."""
    if not backend.shared:
        pytest.skip("memory:// is per process")
    return backend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(backend: Backend, clock: FakeClock) -> Ledger:
    return backend.open(clock)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
