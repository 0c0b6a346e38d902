"""A property-based fuzz of the ledger's operations (hypothesis) against a shadow model of the rules, written
apart from the core: after any sequence of budgets, reservations, commits, releases, charges, resets, clock moves,
sweeps and refused calls, every account's spent, held, remaining, overage and usage equal the model's; refused
calls raise only ClearError subclasses and change nothing. On memory and SQLite (bounded to a few seconds)."""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clear_integrations.errors import BudgetExceeded, ClearError, ReservationClosed, UnknownReservation
from clear_integrations.ledger import Budget, Ledger, Usage, open_ledger

from .conftest import FakeClock

ACCOUNTS = ["acme", "acme/s1", "acme/s2", "beta", "beta/x"]


def _path(scope: str) -> list[str]:
    tenant = scope.partition("/")[0]
    return [tenant] if tenant == scope else [tenant, scope]


@dataclass
class _Held:
    scope: str
    tokens: int
    expires: float
    state: str = "held"
    returned: int = 0


@dataclass
class Shadow:
    """The rules of docs/ledger.md, on dicts: lazy lease expiry per tenant, hard and soft limits, no windows."""

    now: float
    limits: dict[str, tuple[int, str]] = field(default_factory=dict)
    spent: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)
    usage: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    reservations: dict[str, _Held] = field(default_factory=dict)

    def touch(self, tenant: str | None) -> int:
        """Expire the due leases of ``tenant`` (every tenant with None); how many."""
        count = 0
        for record in self.reservations.values():
            due = record.state == "held" and record.expires <= self.now
            if due and (tenant is None or _path(record.scope)[0] == tenant):
                for name in _path(record.scope):
                    self.held[name] -= record.tokens
                record.state, record.returned = "expired", record.tokens
                count += 1
        return count

    def reserve(self, rid: str, scope: str, tokens: int, minimum: int | None, lease: float) -> int:
        self.touch(_path(scope)[0])
        grant = tokens
        for name in _path(scope):
            if name in self.limits and self.limits[name][1] == "hard":
                left = max(0, self.limits[name][0] - self.spent[name] - self.held[name])
                if left < tokens and (minimum is None or left < minimum):
                    raise BudgetExceeded(name, tokens, {})
                grant = min(grant, left)
        for name in _path(scope):
            self.held[name] += grant
        self.reservations[rid] = _Held(scope, grant, self.now + lease)
        return grant

    def commit(self, rid: str, used: int) -> int:
        self.touch(rid.partition("#")[0])
        record = self.reservations.get(rid)
        if record is None:
            raise UnknownReservation(rid)
        if record.state == "committed":
            return record.returned
        if record.state == "released":
            raise ReservationClosed(rid, "released")
        reserved = record.tokens if record.state == "held" else 0
        for name in _path(record.scope):
            self.held[name] -= reserved
            self.spent[name] += used
            self.usage[name] += used
            self.calls[name] += 1
        record.state, record.returned = "committed", max(0, reserved - used)
        return record.returned

    def release(self, rid: str) -> int:
        self.touch(rid.partition("#")[0])
        record = self.reservations.get(rid)
        if record is None:
            raise UnknownReservation(rid)
        if record.state != "held":
            return record.returned if record.state == "released" else 0
        for name in _path(record.scope):
            self.held[name] -= record.tokens
        record.state, record.returned = "released", record.tokens
        return record.tokens

    def view(self, account: str) -> tuple[Any, ...]:
        self.touch(_path(account)[0])
        limit = self.limits.get(account)
        used = self.spent[account] + self.held[account]
        if limit is None:
            return (None, self.spent[account], self.held[account], None, 0)
        return (limit[0], self.spent[account], self.held[account], max(0, limit[0] - used), max(0, used - limit[0]))


def _observed(ledger: Ledger, account: str) -> tuple[Any, ...]:
    balance = ledger.balance(account)
    return (balance.limit, balance.spent, balance.held, balance.remaining, balance.over)


#: Refused calls: (make the call from a ledger and a bad value), with bad values for each.
_BAD_VALUES: list[Any] = [-1, 0, 1.5, math.nan, None, "7", True, 10**13]
_REFUSED: list[Callable[[Ledger, Any], Any]] = [
    lambda ledger, bad: ledger.reserve("acme/s1", bad),
    lambda ledger, bad: ledger.reserve_up_to("acme/s1", 5, minimum=bad if bad != 0 else -1),
    lambda ledger, bad: ledger.reserve("acme/s1", 5, lease=-bad if isinstance(bad, float) and bad > 0 else bad),
    lambda ledger, bad: ledger.charge("beta/x", bad if bad != 0 else -1),
    lambda ledger, bad: ledger.set_budget("acme", Budget(bad if bad != 0 else -1)),
    lambda ledger, bad: ledger.commit(bad, 5),
    lambda ledger, bad: ledger.apply_budgets({"acme": Budget(5), "beta": bad}),
    lambda ledger, bad: ledger.balance(f"acme/{bad}/x"),
]

_OPS = st.one_of(
    st.tuples(st.just("budget"), st.sampled_from(ACCOUNTS), st.none() | st.integers(0, 400),
              st.sampled_from(["hard", "hard", "soft"])),
    st.tuples(st.just("reserve"), st.sampled_from(ACCOUNTS), st.integers(1, 250), st.sampled_from([10.0, 100.0])),
    st.tuples(st.just("up_to"), st.sampled_from(ACCOUNTS), st.integers(1, 250), st.integers(0, 60)),
    st.tuples(st.just("commit"), st.integers(0, 40), st.integers(0, 300), st.booleans()),
    st.tuples(st.just("release"), st.integers(0, 40)),
    st.tuples(st.just("charge"), st.sampled_from(ACCOUNTS), st.integers(0, 200)),
    st.tuples(st.just("advance"), st.sampled_from([1.0, 15.0, 150.0])),
    st.tuples(st.just("expire")),
    st.tuples(st.just("reset"), st.sampled_from(ACCOUNTS)),
    st.tuples(st.just("refused"), st.integers(0, len(_REFUSED) - 1), st.sampled_from(_BAD_VALUES)),
    st.tuples(st.just("check")),
)  # fmt: skip


def _step(ledger: Ledger, shadow: Shadow, clock: FakeClock, ids: list[str], op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "budget":
        _, account, tokens, mode = op
        if tokens is None:
            ledger.remove_budget(account)
            shadow.limits.pop(account, None)
        else:
            ledger.set_budget(account, Budget(tokens, mode=mode))
            shadow.limits[account] = (tokens, mode)
    elif kind in ("reserve", "up_to"):
        scope, tokens = op[1], op[2]
        minimum = None if kind == "reserve" else min(op[3], tokens)
        lease = op[3] if kind == "reserve" else 100.0
        try:
            if minimum is None:
                made = ledger.reserve(scope, tokens, lease=lease)
            else:
                made = ledger.reserve_up_to(scope, tokens, minimum=minimum, lease=lease)
        except BudgetExceeded:
            with pytest.raises(BudgetExceeded):
                shadow.reserve("?", scope, tokens, minimum, lease)
            return
        ids.append(made.id)
        assert shadow.reserve(made.id, scope, tokens, minimum, lease) == made.tokens
    elif kind in ("commit", "release"):
        rid = ids[op[1] % len(ids)] if ids else "acme#never-made"
        if kind == "commit":
            used: int | Usage = Usage(prompt=op[2] // 2, completion=op[2] - op[2] // 2) if op[3] else op[2]
            _same(lambda: ledger.commit(rid, used), lambda: shadow.commit(rid, op[2]))
        else:
            _same(lambda: ledger.release(rid), lambda: shadow.release(rid))
    elif kind == "charge":
        made = ledger.charge(op[1], op[2])
        ids.append(made.id)
        shadow.reserve(made.id, op[1], max(op[2], 1), 0, 300.0)
        shadow.commit(made.id, op[2])
    elif kind == "advance":
        clock.advance(op[1])
        shadow.now = clock()
    elif kind == "expire":
        assert ledger.expire() == shadow.touch(None)
    elif kind == "reset":
        ledger.reset(op[1])
        shadow.spent[op[1]] = 0
        shadow.usage[op[1]] = shadow.calls[op[1]] = 0
    elif kind == "refused":
        before = [_observed(ledger, account) for account in ACCOUNTS], len(ledger.events())
        with pytest.raises(ClearError):
            _REFUSED[op[1]](ledger, op[2])
        assert ([_observed(ledger, account) for account in ACCOUNTS], len(ledger.events())) == before
    else:
        _check(ledger, shadow)


def _same(real: Callable[[], int], model: Callable[[], int]) -> None:
    """Both answer the same number, or both raise the same error."""
    try:
        expected: int | type[BaseException] = model()
    except (UnknownReservation, ReservationClosed) as exc:
        expected = type(exc)
    if isinstance(expected, int):
        assert real() == expected
    else:
        with pytest.raises(expected):
            real()


def _check(ledger: Ledger, shadow: Shadow) -> None:
    for account in ACCOUNTS:
        assert _observed(ledger, account) == shadow.view(account), account
        totals = ledger.usage(account)
        assert (totals.total, totals.calls) == (shadow.usage[account], shadow.calls[account]), account


def _run(url: str, ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    ledger, shadow, ids = open_ledger(url, clock=clock), Shadow(clock()), []
    try:
        for op in ops:
            _step(ledger, shadow, clock, ids, op)
        _check(ledger, shadow)
    finally:
        ledger.close()


_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@_SETTINGS
@given(ops=st.lists(_OPS, min_size=20, max_size=60))
def test_memory_matches_the_shadow_model(ops: list[tuple[Any, ...]]) -> None:
    _run("memory://", ops)


@_SETTINGS
@given(ops=st.lists(_OPS, min_size=20, max_size=60))
def test_sqlite_matches_the_shadow_model(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        _run(f"sqlite:///{Path(folder) / 'ledger.db'}", ops)
