"""Input at the ledger's public edges: every constructor and every Ledger/AsyncLedger method raises only
ClearError subclasses that name the field, and a refused call changes nothing, on every backend."""

from __future__ import annotations

import datetime
import decimal
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clear_integrations.errors import ClearError, InvalidInput, InvalidLedgerURL
from clear_integrations.ledger import AsyncLedger, Budget, Ledger, open_async_ledger, open_ledger
from clear_integrations.ledger.failover import AsyncFailoverLedger, FailOpen, FailoverLedger

from .conftest import Backend, FakeClock
from .test_ledger_errors import unchanged

#: Values that no state-changing parameter of the ledger takes (a few are valid for read-only ones: a time for
#: ``since``, a count for ``limit``, None for both).
ODD: list[Any] = [None, True, -1, 2**70, 10**400, 1.5, math.nan, math.inf, "", b"acme", [], {1, 2}, object(),
                  np.float64(2.0), decimal.Decimal(1), datetime.datetime(1, 1, 1), "\x00", "a" * 10_000]  # fmt: skip


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"retention": -1}, "retention"),
        ({"retention": math.nan}, "retention"),
        ({"retention": math.inf}, "retention"),
        ({"retention": "1d"}, "retention"),
        ({"prefix": 5}, "prefix"),
        ({"prefix": "a{b}:"}, "prefix"),
        ({"prefix": "p" * 300}, "prefix"),
        ({"clock": 1_700_000_000.0}, "clock"),
        ({"on_unavailable": "sideways"}, "on_unavailable"),
    ],
)
def test_open_refuses_bad_options(backend: Backend, options: dict[str, Any], field: str) -> None:
    for opener in (open_ledger, open_async_ledger):
        with pytest.raises(InvalidInput) as refused:
            opener(backend.url, **options)
        assert refused.value.field == field
        if field != "on_unavailable":
            with pytest.raises(InvalidInput) as refused_open:
                opener(backend.url, on_unavailable="open", **options)
            assert refused_open.value.field == field


def test_retention_zero_is_allowed(backend: Backend, clock: FakeClock) -> None:
    ledger = open_ledger(backend.url, clock=clock, prefix=backend.prefix, retention=0)
    backend.opened.append(ledger)
    ledger.commit(ledger.reserve("acme", 5), 5)
    assert ledger.balance("acme").spent == 5


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite:///file::memory:", "sqlite:///file:x.db", "sqlite:///a\x00"])
def test_in_memory_sqlite_is_refused(url: str) -> None:
    for opener in (open_ledger, open_async_ledger):
        with pytest.raises(InvalidLedgerURL) as refused:
            opener(url)
        assert refused.value.field == "url"
        assert "NUL" in str(refused.value) if "\x00" in url else "memory://name" in str(refused.value)
    with pytest.raises(InvalidInput) as as_fallback:
        FailOpen(fallback=url)
    assert as_fallback.value.field == "fallback"


def test_a_prefix_changes_nothing_on_memory_and_sqlite(tmp_path: Path) -> None:
    """Documented: only Redis keys carry the prefix; a named memory store or a SQLite file is one namespace."""
    for url in (f"sqlite:///{tmp_path / 'p.db'}", "memory://prefixed"):
        first, second = open_ledger(url, prefix="a:"), open_ledger(url, prefix="b:")
        first.set_budget("acme", Budget(10))
        assert second.get_budget("acme") == Budget(10)
        first.close()
        second.close()


def _calls(ledger: Ledger, value: Any) -> list[tuple[str, Callable[[], Any]]]:
    """``(field, call)``: every method with ``value`` in one parameter at a time."""
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("account", lambda: ledger.set_budget(value, Budget(1))),
        ("budget", lambda: ledger.set_budget("acme", value)),
        ("account", lambda: ledger.get_budget(value)),
        ("account", lambda: ledger.remove_budget(value)),
        ("budgets", lambda: ledger.apply_budgets(value)),
        ("budgets.acme", lambda: ledger.apply_budgets({"acme": value})),
        ("tokens", lambda: ledger.reserve("acme/s", value)),
        ("scope", lambda: ledger.reserve(value, 1)),
        ("tokens", lambda: ledger.reserve_up_to("acme/s", value)),
        ("minimum", lambda: ledger.reserve_up_to("acme/s", 10, minimum=value)),
        ("reservation", lambda: ledger.commit(value, 1)),
        ("used", lambda: ledger.charge("acme/s", value)),
        ("scope", lambda: ledger.charge(value, 1)),
        ("reservation", lambda: ledger.release(value)),
        ("account", lambda: ledger.balance(value)),
        ("account", lambda: ledger.usage(value)),
        ("since", lambda: ledger.usage("acme", since=value)),
        ("since", lambda: ledger.events("acme", since=value)),
        ("limit", lambda: ledger.events("acme", limit=value)),
        ("account", lambda: ledger.reset(value)),
        ("pool", lambda: ledger.get_state(value)),
        ("pool", lambda: ledger.set_state(value, {}, expected_version=0)),
        ("value", lambda: ledger.set_state("p", value, expected_version=0)),
        ("expected_version", lambda: ledger.set_state("p", {}, expected_version=value)),
    ]
    if value is not None:
        calls.append(("account", lambda: ledger.events(value)))
    if not isinstance(value, float) or not 0 < value < math.inf:  # 1.5 s is a lease
        calls.append(("lease", lambda: ledger.reserve("acme/s", 1, lease=value)))
        calls.append(("lease", lambda: ledger.charge("acme/s", 1, lease=value)))
    return calls


def test_every_method_refuses_odd_values_and_changes_nothing(ledger: Ledger) -> None:
    ledger.set_budget("acme", Budget(1000, "1d"))
    ledger.set_budget("acme/s", Budget(400))
    held = ledger.reserve("acme/s", 50)
    ledger.commit(ledger.reserve("acme/s", 100), 80)
    refused, wrong = 0, []
    with unchanged(ledger):
        for value in ODD:
            for field, call in _calls(ledger, value):
                try:
                    call()
                except InvalidInput as exc:
                    refused += 1
                    if exc.field != field:
                        wrong.append((field, value, exc))
                except ClearError:  # an unknown reservation id, ...
                    refused += 1
                else:  # a value that read-only parameters take (a time for since, a count for limit, None)
                    assert field in ("since", "limit"), (field, value)
    assert wrong == []
    assert refused > 400
    assert ledger.get_state("p") == (None, 0)
    assert ledger.commit(held, 50) == 0  # still open


@pytest.mark.anyio
async def test_the_async_twin_refuses_the_same(backend: Backend) -> None:
    ledger = backend.open_async()
    await ledger.set_budget("acme", Budget(100))
    for value in (None, -1, 1.5, "x", [], 10**400):
        with pytest.raises(ClearError):
            await ledger.reserve("acme", value)
        with pytest.raises(ClearError):
            await ledger.apply_budgets(value)
        with pytest.raises(ClearError):
            await ledger.set_state("p", value, expected_version=0)
    for since in ("x", [], 10**400, math.nan):
        with pytest.raises(ClearError):
            await ledger.events("acme", since=since)
    assert (await ledger.balance("acme")).held == 0
    await ledger.close()


def test_a_huge_event_limit_is_just_large(ledger: Ledger) -> None:
    ledger.commit(ledger.reserve("acme", 5), 5)
    assert len(ledger.events("acme", limit=10**30)) == 2


def test_a_deeply_nested_state_value_is_refused(ledger: Ledger) -> None:
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(5000):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(InvalidInput) as refused:
        ledger.set_state("p", deep, expected_version=0)
    assert refused.value.field == "value"


def _constructors(primary: Ledger) -> list[tuple[str, Callable[[Any], Any], list[Any]]]:
    """``(field, make, bad values)`` for every constructor and setting."""
    numbers: list[Any] = [None, True, -1, 10**400, math.nan, math.inf, "5", [], object(), decimal.Decimal(1)]
    things: list[Any] = [None, 5, "x", b"x", [], object()]
    return [
        ("store", lambda v: Ledger(v), things),
        ("store", lambda v: AsyncLedger(v), things),
        ("clock", lambda v: Ledger(primary.store, clock=v), things[1:]),
        ("ledger", lambda v: AsyncLedger.of(v), things),
        ("ledger", lambda v: AsyncFailoverLedger(v), [*things, primary]),
        ("primary", lambda v: FailoverLedger(v), things[:4]),
        ("mode", lambda v: FailoverLedger(primary, mode=v), [*things, "ajar"]),
        ("fallback", lambda v: FailoverLedger(primary, fallback=v), [*things, "redis://h:6379/0", "sqlite:///:memory:"]),
        ("share", lambda v: FailoverLedger(primary, share=v), [*numbers, 0, 1.5]),
        ("retry_after", lambda v: FailoverLedger(primary, retry_after=v), numbers),
        ("refresh", lambda v: FailoverLedger(primary, refresh=v), numbers),
        ("clock", lambda v: FailoverLedger(primary, clock=v), things[1:]),
        ("budgets", lambda v: FailoverLedger(primary, budgets=v), things[1:]),
        ("budgets.acme", lambda v: FailoverLedger(primary, budgets={"acme": v}), things),
        ("budgets", lambda v: FailoverLedger(primary, budgets={v: Budget(1)}), [5, "a/b/c", ""]),
        ("share", lambda v: FailOpen(share=v), numbers),
        ("retry_after", lambda v: FailOpen(retry_after=v), numbers),
        ("refresh", lambda v: FailOpen(refresh=v), numbers),
    ]


def test_constructors_refuse_odd_values(clock: FakeClock) -> None:
    primary = open_ledger("memory://", clock=clock)
    for field, make, values in _constructors(primary):
        for value in values:
            with pytest.raises(InvalidInput) as refused:
                make(value)
            assert refused.value.field == field, (field, value, refused.value)


def test_a_primary_function_must_open_a_ledger(clock: FakeClock) -> None:
    with pytest.raises(InvalidInput) as refused:
        FailoverLedger(lambda: "redis://x", mode="open", clock=clock)  # type: ignore[arg-type, return-value]
    assert refused.value.field == "primary"
