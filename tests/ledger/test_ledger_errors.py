"""Bad input gets a ClearError subclass naming the field, and leaves the ledger exactly as it was."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from clear_integrations.errors import (
    ClearError,
    InvalidAccount,
    InvalidBudget,
    InvalidInput,
    InvalidUsage,
    ReservationClosed,
    UnknownReservation,
)
from clear_integrations.ledger import Budget, Ledger, Usage

BAD_TOKENS: list[Any] = [-1, 0, 1.5, 5.0, True, False, math.nan, math.inf, -math.inf, "10", None, 10**13]
BAD_ACCOUNTS: list[Any] = ["", "a/b/c", "a b", "x" * 129, 5, None, "acme/", "/s", "ac#me", "é", "acme//s"]


@contextmanager
def unchanged(ledger: Ledger) -> Iterator[None]:
    """Assert that the balances and the event log are identical before and after the block."""

    def snapshot() -> Any:
        return [ledger.balance(a) for a in ("acme", "acme/s")], len(ledger.events())

    before = snapshot()
    yield
    assert snapshot() == before


@pytest.fixture
def busy(ledger: Ledger) -> Ledger:
    ledger.set_budget("acme", Budget(1000, window="1d"))
    ledger.set_budget("acme/s", Budget(400))
    ledger.commit(ledger.reserve("acme/s", 300), 120)
    ledger.reserve("acme/s", 50)
    return ledger


@pytest.mark.parametrize("tokens", BAD_TOKENS)
def test_bad_token_amounts(busy: Ledger, tokens: Any) -> None:
    with unchanged(busy):
        with pytest.raises(InvalidBudget) as refused:
            busy.reserve("acme/s", tokens)
        assert refused.value.field == "tokens"
        with pytest.raises(InvalidBudget) as refused_up_to:
            busy.reserve_up_to("acme/s", tokens)
        assert refused_up_to.value.field == "tokens"


@pytest.mark.parametrize("account", BAD_ACCOUNTS)
def test_bad_account_ids(busy: Ledger, account: Any) -> None:
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("scope", lambda: busy.reserve(account, 10)),
        ("scope", lambda: busy.reserve_up_to(account, 10)),
        ("account", lambda: busy.set_budget(account, Budget(10))),
        ("account", lambda: busy.balance(account)),
        ("account", lambda: busy.usage(account)),
        ("account", lambda: busy.reset(account)),
        ("account", lambda: busy.remove_budget(account)),
    ]
    if account is not None:  # events(None) is the whole log
        calls.append(("account", lambda: busy.events(account)))
    with unchanged(busy):
        for field, call in calls:
            with pytest.raises(InvalidAccount) as refused:
                call()
            assert refused.value.field == field


@pytest.mark.parametrize("used", [-1, 1.5, True, math.nan, math.inf, "3", None, 10**13])
def test_bad_usage(busy: Ledger, used: Any) -> None:
    r = busy.reserve("acme/s", 10)
    with unchanged(busy):
        with pytest.raises(InvalidUsage) as refused:
            busy.commit(r, used)
        assert refused.value.field == "used"
    assert busy.commit(r, 10) == 0  # the reservation is still open


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": -1}, "usage.prompt"),
        ({"completion": 1.0}, "usage.completion"),
        ({"completion": 5, "reasoning": 6}, "usage.reasoning"),
        ({"prompt": True}, "usage.prompt"),
        ({"estimated": 1}, "usage.estimated"),
    ],
)
def test_bad_usage_objects(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidUsage) as refused:
        Usage(**kwargs)
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tokens": -5}, "budget.tokens"),
        ({"tokens": 1.5}, "budget.tokens"),
        ({"tokens": math.nan}, "budget.tokens"),
        ({"tokens": True}, "budget.tokens"),
        ({"tokens": 10, "window": "1 day"}, "budget.window"),
        ({"tokens": 10, "window": "0d"}, "budget.window"),
        ({"tokens": 10, "window": "1mo"}, "budget.window"),
        ({"tokens": 10, "window": 3600}, "budget.window"),
        ({"tokens": 10, "mode": "strict"}, "budget.mode"),
    ],
)
def test_bad_budgets(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidBudget) as refused:
        Budget(**kwargs)
    assert refused.value.field == field


def test_budget_must_be_a_budget(busy: Ledger) -> None:
    with unchanged(busy), pytest.raises(InvalidBudget) as refused:
        busy.set_budget("acme", {"tokens": 5})  # type: ignore[arg-type]
    assert refused.value.field == "budget"


@pytest.mark.parametrize("lease", [0, -1, math.nan, math.inf, "5", None, True, 10**9])
def test_bad_leases(busy: Ledger, lease: Any) -> None:
    with unchanged(busy), pytest.raises(InvalidInput) as refused:
        busy.reserve("acme/s", 5, lease=lease)
    assert refused.value.field == "lease"


def test_bad_minimum(busy: Ledger) -> None:
    with unchanged(busy):
        bad: list[Any] = [-1, 1.5, 11, True]  # 0 is valid: "whatever is left, maybe nothing"
        for minimum in bad:
            with pytest.raises(InvalidBudget) as refused:
                busy.reserve_up_to("acme/s", 10, minimum=minimum)
            assert refused.value.field == "minimum"


def test_refusals_and_closed_reservations_change_nothing(busy: Ledger) -> None:
    released = busy.reserve("acme/s", 5)
    busy.release(released)
    with unchanged(busy):
        with pytest.raises(ClearError):
            busy.reserve("acme/s", 10_000)
        with pytest.raises(ClearError):
            busy.reserve_up_to("acme/s", 300, minimum=231)
        with pytest.raises(ReservationClosed):
            busy.commit(released, 5)
        with pytest.raises(UnknownReservation):
            busy.commit("acme#unknown", 5)
        with pytest.raises(UnknownReservation):
            busy.release("garbage")
        with pytest.raises(InvalidInput) as not_an_id:
            busy.commit(42, 5)  # type: ignore[arg-type]
        assert not_an_id.value.field == "reservation"


def test_bad_state_values(busy: Ledger) -> None:
    for value, field in (([1], "value"), ({"x": math.nan}, "value"), ({"x": object()}, "value")):
        with pytest.raises(InvalidInput) as refused:
            busy.set_state("default", value, expected_version=0)  # type: ignore[arg-type]
        assert refused.value.field == field
    for version in (-1, 1.0, None):
        with pytest.raises(InvalidInput) as bad_version:
            busy.set_state("default", {}, expected_version=version)  # type: ignore[arg-type]
        assert bad_version.value.field == "expected_version"
    with pytest.raises(InvalidAccount) as bad_pool:
        busy.get_state("a/b")
    assert bad_pool.value.field == "pool"
    assert busy.get_state("default") == (None, 0)


def test_bad_queries(busy: Ledger) -> None:
    bad: list[Any] = ["yesterday", math.nan, [1]]
    for since in bad:
        with pytest.raises(InvalidInput) as refused:
            busy.usage("acme", since=since)
        assert refused.value.field == "since"
    for limit in (-1, 1.5, "3"):
        with pytest.raises(InvalidInput) as bad_limit:
            busy.events(limit=limit)  # type: ignore[arg-type]
        assert bad_limit.value.field == "limit"
