"""The conformance suite: real app shapes, written as their users write them, on every ledger backend.

Every test gets a ``book`` (:class:`Book`): a ledger on memory, SQLite or Redis (``pytest -k memory`` selects one),
with a hard budget per tenant it sets, and :meth:`Book.audit`, which checks the five promises after a run:

1. the cap reached the provider: every call the metered model saw had a cap, at most ``max_cap`` when given;
2. the ledger equals what the provider reported: the tenants' committed usage is exactly the metered models' own
   count of prompt and output tokens (their calls), nothing estimated unless ``estimated`` says so;
3. a hard budget never goes over: spent <= limit, no overage, on every tenant the test budgeted;
4. nothing is held afterwards;
5. the right tenant paid: tenants that made no calls spent nothing.

Redis tests use REDIS_URL (default redis://127.0.0.1:6379/15) with a unique key prefix, deleted afterwards; without
a server they skip, except under CI (they fail).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clear_integrations import Budget, Ledger, open_ledger

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


def _require_redis() -> None:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
        client.close()
    except Exception as error:  # no module, no server
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI but does not answer at {REDIS_URL}: {error}")
        pytest.skip(f"no Redis server at {REDIS_URL}")


def _delete_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@dataclass
class Book:
    """A ledger on one backend and the budgets a test set on it."""

    backend: str
    ledger: Ledger
    limits: dict[str, int] = field(default_factory=dict)

    def budget(self, tenant: str, tokens: int, **options: Any) -> str:
        """Give ``tenant`` a hard budget of ``tokens`` (or a session account, ``tenant/session``)."""
        self.ledger.set_budget(tenant, Budget(tokens=tokens, **options))
        self.limits[tenant] = tokens
        return tenant

    def audit(
        self,
        models: Sequence[Any],
        *,
        paid: Iterable[str],
        unpaid: Iterable[str] = (),
        max_cap: int | None = None,
        estimated: bool = False,
        capped: bool = True,
    ) -> None:
        """The five promises (module docstring). ``models``: the metered models whose calls the tenants ``paid``
        for (``MeteredFakeChatModel`` / ``MeteredMockLLM``: ``.calls`` with each call's cap and tokens)."""
        calls = [call for model in models for call in model.calls]
        assert calls, "the run made no model call"
        if capped:
            assert all(call.cap is not None for call in calls), [call.cap for call in calls]
        if max_cap is not None:
            assert all(call.cap is not None and call.cap <= max_cap for call in calls), [c.cap for c in calls]
        paid = list(paid)
        usage = [self.ledger.usage(tenant) for tenant in paid]
        provider = sum(call.total_tokens for call in calls)
        assert sum(u.total for u in usage) == provider, (usage, provider)
        assert sum(u.prompt for u in usage) == sum(call.prompt_tokens for call in calls)
        if not estimated:
            assert all(u.estimated_calls == 0 for u in usage), usage
        for account, limit in self.limits.items():
            balance = self.ledger.balance(account)
            assert balance.spent <= limit and balance.over == 0, balance
        for tenant in {*paid, *self.limits}:
            assert self.ledger.balance(tenant).held == 0, self.ledger.balance(tenant)
        for tenant in unpaid:
            assert self.ledger.usage(tenant).calls == 0, (tenant, self.ledger.usage(tenant))


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def book(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Book]:
    prefix = f"conf-{uuid.uuid4().hex[:12]}:"
    if request.param == "memory":
        ledger = open_ledger(f"memory://{prefix[:-1]}")
    elif request.param == "sqlite":
        ledger = open_ledger(f"sqlite:///{tmp_path / 'conformance.db'}")
    else:
        _require_redis()
        ledger = open_ledger(REDIS_URL, prefix=prefix)
    yield Book(request.param, ledger)
    ledger.close()
    if request.param == "redis":
        _delete_prefix(prefix)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
