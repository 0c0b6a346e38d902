from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import ArrayLike, NDArray

from clear_integrations import CurveBatch, EmpiricalCurve, InvalidBudget, allocate

GRID = [16, 32, 64, 128]


def test_contract_example() -> None:
    curves = [
        EmpiricalCurve(budgets=[16, 32, 64, 128], accuracy=[0.0, 0.05, 0.7, 0.9]),
        EmpiricalCurve(budgets=[16, 32, 64, 128], accuracy=[0.0, 0.0, 0.01, 0.02]),
    ]
    a = allocate(curves, budget=100)
    assert a.budgets[0] >= 64
    assert a.budgets[1] == 0
    assert a.abandoned.tolist() == [False, True]
    assert a.shadow_price == pytest.approx(0.7 / 64)
    assert a.spent == int(a.budgets.sum()) <= 100
    assert a.expected_accuracy == pytest.approx((curves[0](a.budgets[0]) + 0.0) / 2)


def test_leftover_goes_where_it_adds_most() -> None:
    # 128 buys the first query's surge; the second query's hull segment (0->128) does not fit in the 72 left,
    # but its point at 64 does and adds 0.01.
    curves = [EmpiricalCurve(GRID, [0.0, 0.05, 0.7, 0.9]), EmpiricalCurve(GRID, [0.0, 0.0, 0.01, 0.02])]
    a = allocate(curves, budget=200)
    assert a.budgets.tolist() == [128, 64]
    assert a.shadow_price == pytest.approx(0.2 / 64)


def test_slack_budget_funds_every_peak_and_prices_tokens_at_zero() -> None:
    curves = [EmpiricalCurve(GRID, [0.1, 0.4, 0.9, 0.8]), EmpiricalCurve(GRID, [0.0, 0.2, 0.3, 0.6])]
    a = allocate(curves, budget=10_000)
    assert a.budgets.tolist() == [64, 128]
    assert a.shadow_price == 0.0
    assert a.spent == 192


def test_rational_abandonment_in_scarce_budgets_and_funding_in_ample_ones() -> None:
    # Paper-style S-curves: zero before a threshold tau, a surge, then saturation.
    grid = np.arange(16, 513, 16)
    taus = [20, 40, 60, 300, 350, 400]

    def surge(tau: float) -> EmpiricalCurve:
        x = np.maximum(grid - tau, 0) / 40
        return EmpiricalCurve(grid, 0.9 * (1 - (1 + x) * np.exp(-x)))

    curves = [surge(t) for t in taus]
    scarce = allocate(curves, budget=600)
    assert scarce.abandoned.tolist() == [False, False, False, True, True, True]
    assert scarce.budgets[:3].min() > 0
    ample = allocate(curves, budget=6 * 512)
    assert not ample.abandoned.any()
    assert ample.expected_accuracy > scarce.expected_accuracy
    uniform_share = [c(600 // 6) for c in curves]
    assert scarce.expected_accuracy > 2 * np.mean(uniform_share)


def test_min_max_and_granularity() -> None:
    curves = [EmpiricalCurve(GRID, [0.0, 0.05, 0.7, 0.9]), EmpiricalCurve(GRID, [0.3, 0.3, 0.3, 0.3])]
    a = allocate(curves, budget=200, min_tokens=10, max_tokens=100, granularity=8)
    assert all(b % 8 == 0 for b in a.budgets)
    assert a.budgets.min() >= 16  # the floor rounds up to the granularity
    assert a.budgets.max() <= 96
    assert a.spent <= 200


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"budget": -1}, "budget"),
        ({"budget": 10.0}, "budget"),
        ({"budget": math.nan}, "budget"),
        ({"budget": True}, "budget"),
        ({"budget": 10, "granularity": 0}, "granularity"),
        ({"budget": 10, "min_tokens": -2}, "min_tokens"),
        ({"budget": 10, "min_tokens": 8}, "min_tokens"),
        ({"budget": 10, "max_tokens": -1}, "max_tokens"),
        ({"budget": 100, "min_tokens": 16, "max_tokens": 8}, "max_tokens"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    curves = [EmpiricalCurve(GRID, [0.0, 0.05, 0.7, 0.9])] * 2
    with pytest.raises(InvalidBudget) as caught:
        allocate(curves, **kwargs)
    assert caught.value.field == field


def test_no_queries() -> None:
    a = allocate([], budget=100)
    assert a.budgets.size == 0 and a.spent == 0 and a.expected_accuracy == 0.0


class _Sqrt:
    """A curve that is not an EmpiricalCurve: only the protocol is used."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def accuracy(self, budgets: ArrayLike) -> NDArray[np.float64]:
        return np.minimum(1.0, np.sqrt(np.asarray(budgets, dtype=np.float64)) / self.scale)

    def knots(self) -> NDArray[np.int64]:
        return np.arange(8, 257, 8)


def test_any_accuracy_curve_is_allocated_by_its_knots() -> None:
    curves = [_Sqrt(16.0), _Sqrt(8.0), EmpiricalCurve([100], [0.5])]
    a = allocate(curves, budget=300)
    assert a.spent <= 300
    # Concave curves are never abandoned while the budget lasts; marginals are equalised.
    assert not a.abandoned[:2].any()


# --- properties ---------------------------------------------------------------------------------------------------

curve_values = st.lists(st.floats(0, 1, allow_nan=False), min_size=4, max_size=4)


@st.composite
def instances(draw: st.DrawFn, max_queries: int = 8) -> tuple[CurveBatch, int]:
    rows = draw(st.lists(curve_values, min_size=1, max_size=max_queries))
    budget = draw(st.integers(0, 128 * len(rows) + 50))
    return CurveBatch(GRID, np.round(rows, 3)), budget


def _points(curve: EmpiricalCurve) -> list[tuple[int, float]]:
    return [(0, 0.0)] + [(int(b), float(a)) for b, a in zip(curve.budgets, curve.values, strict=True)]


def _dual(curves: CurveBatch, budget: int) -> float:
    """The Lagrangian dual min_lam lam*B + sum_i max_b (A_i(b) - lam*b), by brute force over candidate prices."""
    prices = {0.0}
    for curve in curves:
        pts = _points(curve)
        for (b1, a1), (b2, a2) in itertools.combinations(pts, 2):
            if b2 > b1 and a2 > a1:
                prices.add((a2 - a1) / (b2 - b1))
    best = math.inf
    for lam in prices:
        total = lam * budget + sum(max(a - lam * b for b, a in _points(c)) for c in curves)
        best = min(best, total)
    return best


@given(instances())
@settings(max_examples=200, deadline=None)
def test_never_over_budget_and_within_one_query_of_the_relaxation(instance: tuple[CurveBatch, int]) -> None:
    curves, budget = instance
    a = allocate(curves, budget)
    n = len(curves)
    assert a.spent == a.budgets.sum() <= budget
    assert np.all(a.budgets >= 0)
    assert a.expected_accuracy == pytest.approx(curves.accuracy_at(a.budgets).mean())
    relaxed, achieved = a.upper_bound * n, a.expected_accuracy * n
    assert relaxed == pytest.approx(_dual(curves, budget), abs=1e-9)  # exact for the relaxation
    assert achieved <= relaxed + 1e-9
    assert relaxed - achieved <= curves.matrix.max() + 1e-9  # at most one query's value short


@given(instances(max_queries=6), st.integers(0, 200))
@settings(max_examples=150, deadline=None)
def test_relaxation_never_falls_as_the_budget_rises(instance: tuple[CurveBatch, int], more: int) -> None:
    curves, budget = instance
    assert allocate(curves, budget + more).upper_bound >= allocate(curves, budget).upper_bound - 1e-12


@given(instances())
@settings(max_examples=200, deadline=None)
def test_abandoned_queries_are_those_whose_first_bid_loses(instance: tuple[CurveBatch, int]) -> None:
    curves, budget = instance
    a = allocate(curves, budget)
    assert a.abandoned.tolist() == (a.budgets == 0).tolist()
    for i, curve in enumerate(curves):
        hb, hv = curve.hull()
        if hb.size == 1:  # nothing worth buying at any price
            assert a.abandoned[i]
            continue
        first_bid = hv[1] / hb[1]
        if first_bid > a.shadow_price * (1 + 1e-9) and a.shadow_price > 0:
            assert not a.abandoned[i], "a bid above the price was not bought"
        if a.shadow_price == 0:
            assert a.budgets[i] >= hb[-1], "with slack budget every query reaches its hull peak"


def _discrete_optimum(curves: CurveBatch, budget: int) -> float:
    options = [_points(c) for c in curves]
    best = 0.0
    for choice in itertools.product(*options):
        if sum(b for b, _ in choice) <= budget:
            best = max(best, sum(a for _, a in choice))
    return best


@given(instances(max_queries=4))
@settings(max_examples=200, deadline=None)
def test_greedy_is_within_one_query_of_the_exhaustive_optimum(instance: tuple[CurveBatch, int]) -> None:
    curves, budget = instance
    a = allocate(curves, budget)
    optimum = _discrete_optimum(curves, budget)
    achieved = a.expected_accuracy * len(curves)
    assert achieved <= optimum + 1e-9
    assert optimum <= a.upper_bound * len(curves) + 1e-9
    assert optimum - achieved <= curves.matrix.max() + 1e-9


@given(instances(), st.sampled_from([1, 8, 16, 48]), st.one_of(st.none(), st.integers(0, 200)))
@settings(max_examples=150, deadline=None)
def test_limits_hold(instance: tuple[CurveBatch, int], granularity: int, max_tokens: int | None) -> None:
    curves, budget = instance
    a = allocate(curves, budget, granularity=granularity, max_tokens=max_tokens)
    assert a.spent <= budget
    assert np.all(a.budgets % granularity == 0)
    if max_tokens is not None:
        assert np.all(a.budgets <= max_tokens)


@given(st.lists(curve_values, min_size=2, max_size=6), st.integers(0, 400))
@settings(max_examples=100, deadline=None)
def test_batch_and_curve_list_agree(rows: list[list[float]], budget: int) -> None:
    batch = CurveBatch(GRID, np.round(rows, 3))
    mixed: list[Any] = [*list(batch), EmpiricalCurve([24], [0.0])]  # another grid forces the general path
    fast, slow = allocate(batch, budget), allocate(mixed, budget)
    assert fast.expected_accuracy * len(batch) == pytest.approx(slow.expected_accuracy * len(mixed), abs=1e-9)
