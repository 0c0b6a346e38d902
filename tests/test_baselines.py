from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clear_integrations import ALLOCATORS, CurveBatch, EmpiricalCurve, greedy_marginal, proportional, uniform

GRID = [16, 32, 64, 128]


def test_uniform_gives_everyone_the_same_cap() -> None:
    curves = [EmpiricalCurve(GRID, [0.1, 0.2, 0.3, 0.4])] * 3
    a = uniform(curves, 100, granularity=8)
    assert a.budgets.tolist() == [32, 32, 32]
    assert a.expected_accuracy == pytest.approx(0.2)
    assert np.isnan(a.shadow_price)


def test_proportional_follows_the_predicted_need() -> None:
    early = EmpiricalCurve(GRID, [0.8, 0.8, 0.8, 0.8])  # half of its best at 16
    late = EmpiricalCurve(GRID, [0.0, 0.0, 0.1, 0.8])  # half of its best at 128
    a = proportional([early, late], 144)
    assert a.budgets.tolist() == [16, 128]


def test_greedy_marginal_stalls_on_a_flat_start_that_clear_sees_past() -> None:
    flat_start = EmpiricalCurve(GRID, [0.0, 0.0, 0.9, 0.9])
    concave = EmpiricalCurve(GRID, [0.1, 0.12, 0.13, 0.14])
    greedy = greedy_marginal([flat_start, concave], 64)
    clear = ALLOCATORS["clear"]([flat_start, concave], 64)
    assert clear.expected_accuracy > greedy.expected_accuracy


@given(
    st.lists(st.lists(st.floats(0, 1), min_size=4, max_size=4), min_size=1, max_size=10),
    st.integers(0, 1500),
    st.sampled_from(sorted(ALLOCATORS)),
)
@settings(max_examples=150, deadline=None)
def test_every_allocator_keeps_the_budget_and_the_call_shape(rows: list[list[float]], budget: int, name: str) -> None:
    curves = CurveBatch(GRID, rows)
    a = ALLOCATORS[name](curves, budget, min_tokens=0, max_tokens=128, granularity=16)
    assert len(a) == len(curves)
    assert a.spent == a.budgets.sum() <= budget
    assert np.all(a.budgets % 16 == 0) and np.all(a.budgets <= 128)
    assert 0.0 <= a.expected_accuracy <= 1.0
    assert a.expected_accuracy == pytest.approx(curves.accuracy_at(a.budgets).mean())


@given(st.lists(st.lists(st.floats(0, 1), min_size=4, max_size=4), min_size=1, max_size=10), st.integers(0, 1500))
@settings(max_examples=100, deadline=None)
def test_clear_is_never_worse_than_the_baselines_by_more_than_one_query(rows: list[list[float]], budget: int) -> None:
    curves = CurveBatch(GRID, rows)
    clear = ALLOCATORS["clear"](curves, budget)
    for name, allocator in ALLOCATORS.items():
        other = allocator(curves, budget)
        assert clear.upper_bound * len(curves) >= other.expected_accuracy * len(curves) - 1e-9, name
