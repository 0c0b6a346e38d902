"""The same random workload on every backend gives the same answers: the Lua scripts and the Python core
implement one set of rules."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from clear_integrations.errors import ClearError
from clear_integrations.ledger import Budget, Ledger, Usage, open_ledger

from .conftest import REDIS_URL, T0, FakeClock, delete_prefix, redis_available, require_redis, unique_prefix

SCOPES = ["acme", "acme/s1", "acme/s2", "beta", "beta/x"]
BUDGETS = [Budget(500), Budget(300, "1h"), Budget(200, "15m", "soft"), Budget(0), None]


def _workload(ledger: Ledger, clock: FakeClock, seed: int) -> list[Any]:
    """Run random operations; return a transcript of results, errors and balances (ids made positional)."""
    rng = random.Random(seed)
    ids: list[str] = []
    transcript: list[Any] = []
    for _ in range(150):
        op = rng.random()
        try:
            if op < 0.30:
                r = ledger.reserve(rng.choice(SCOPES), rng.randint(1, 250), lease=rng.choice([5.0, 600.0, 3600.0]))
                ids.append(r.id)
                transcript.append(("reserve", r.tokens, r.requested, r.expires_at - r.created_at))
            elif op < 0.40:
                r = ledger.reserve_up_to(rng.choice(SCOPES), rng.randint(1, 250), minimum=rng.randint(1, 20))
                ids.append(r.id)
                transcript.append(("up_to", r.tokens))
            elif op < 0.60 and ids:
                index = rng.randrange(len(ids))
                used: int | Usage = rng.randint(0, 300)
                if rng.random() < 0.5:
                    used = Usage(prompt=rng.randint(0, 100), completion=rng.randint(0, 200), estimated=True)
                transcript.append(("commit", index, ledger.commit(ids[index], used)))
            elif op < 0.70 and ids:
                index = rng.randrange(len(ids))
                transcript.append(("release", index, ledger.release(ids[index])))
            elif op < 0.78:
                account, budget = rng.choice(SCOPES), rng.choice(BUDGETS)
                if budget is None:
                    ledger.remove_budget(account)
                else:
                    ledger.set_budget(account, budget)
            elif op < 0.80:
                ledger.reset(rng.choice(SCOPES))
            elif op < 0.83:
                transcript.append(("expire", ledger.expire()))
            else:
                clock.advance(rng.choice([1.0, 30.0, 299.0, 900.0]))
        except ClearError as exc:
            transcript.append(("error", type(exc).__name__, getattr(exc, "account", None)))
        account = rng.choice(SCOPES)
        transcript.append(("balance", ledger.balance(account)))
    for account in SCOPES:
        totals = ledger.usage(account)
        events = [
            (e.ts, e.kind, e.account, e.tokens, e.returned, e.prompt, e.late, e.over) for e in ledger.events(account)
        ]
        transcript.append(("usage", account, totals, events))
    return transcript


@pytest.mark.parametrize("seed", range(4))
def test_backends_agree(tmp_path: Path, seed: int) -> None:
    urls = ["memory://", f"sqlite:///{tmp_path / 'parity.db'}"]
    if redis_available() or os.environ.get("CI"):
        require_redis()
        urls.append(REDIS_URL)
    prefix = unique_prefix()
    transcripts = []
    try:
        for url in urls:
            clock = FakeClock(T0)
            with open_ledger(url, clock=clock, prefix=prefix) as ledger:
                transcripts.append(_workload(ledger, clock, seed))
    finally:
        if REDIS_URL in urls:
            delete_prefix(prefix)
    for url, transcript in zip(urls[1:], transcripts[1:], strict=True):
        for step, (expected, got) in enumerate(zip(transcripts[0], transcript, strict=True)):
            assert got == expected, (url, step)
