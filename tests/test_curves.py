from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clear_integrations import AccuracyCurve, CurveBatch, EmpiricalCurve, InvalidCurve, isotonic


def test_step_curve_reads_the_largest_measured_budget_below() -> None:
    curve = EmpiricalCurve([16, 32, 64], [0.1, 0.3, 0.8])
    assert curve(0) == 0.0
    assert curve(15) == 0.0
    assert curve(16) == pytest.approx(0.1)
    assert curve(63) == pytest.approx(0.3)
    assert curve(10_000) == pytest.approx(0.8)
    assert np.allclose(curve.accuracy([[16, 40], [64, 1]]), [[0.1, 0.3], [0.8, 0.0]])


def test_linear_curve_joins_the_origin_and_the_points() -> None:
    curve = EmpiricalCurve([16, 32], [0.2, 0.4], interpolation="linear")
    assert curve(8) == pytest.approx(0.1)
    assert curve(24) == pytest.approx(0.3)
    assert curve(100) == pytest.approx(0.4)


def test_curves_satisfy_the_protocol() -> None:
    assert isinstance(EmpiricalCurve([16], [0.5]), AccuracyCurve)


def test_hull_through_origin_skips_the_flat_start() -> None:
    curve = EmpiricalCurve([16, 32, 64, 128], [0.0, 0.05, 0.7, 0.9])
    budgets, values = curve.hull()
    assert budgets.tolist() == [0, 64, 128]
    assert values.tolist() == pytest.approx([0.0, 0.7, 0.9])


def test_hull_merges_collinear_points_and_stops_at_the_peak() -> None:
    curve = EmpiricalCurve([10, 20, 30, 40], [0.1, 0.2, 0.3, 0.25])
    budgets, _ = curve.hull()
    assert budgets.tolist() == [0, 30]


@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_hull_lies_on_or_above_every_point_and_is_concave(values: list[float]) -> None:
    grid = [16 * (i + 1) for i in range(len(values))]
    curve = EmpiricalCurve(grid, values)
    hb, hv = curve.hull()
    upper = np.interp(grid, hb, hv, right=hv[-1])
    assert np.all(upper >= np.asarray(values) - 1e-9)
    slopes = np.diff(hv) / np.diff(hb)
    assert np.all(slopes > 0)
    assert np.all(np.diff(slopes) < 1e-12)


@pytest.mark.parametrize(
    ("budgets", "accuracy", "field"),
    [
        ([], [], "budgets"),
        ([16, 32], [0.1], "accuracy"),
        ([32, 16], [0.1, 0.2], "budgets"),
        ([16, 16], [0.1, 0.2], "budgets"),
        ([-16, 16], [0.1, 0.2], "budgets"),
        ([16.5, 32], [0.1, 0.2], "budgets"),
        ([16, 32], [0.1, math.nan], "accuracy"),
        ([16, 32], [0.1, math.inf], "accuracy"),
        ([16, 32], [0.1, 1.2], "accuracy"),
        ([16, 32], [-0.1, 0.2], "accuracy"),
        ([0, 32], [0.3, 0.2], "accuracy"),
    ],
)
def test_bad_points_name_the_field(budgets: list[float], accuracy: list[float], field: str) -> None:
    with pytest.raises(InvalidCurve) as caught:
        EmpiricalCurve(budgets, accuracy)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_bad_interpolation_is_refused() -> None:
    with pytest.raises(InvalidCurve, match="interpolation"):
        EmpiricalCurve([16], [0.1], interpolation="cubic")  # type: ignore[arg-type]


def test_isotonic_smoothing_removes_dips() -> None:
    curve = EmpiricalCurve([16, 32, 48, 64], [0.2, 0.1, 0.5, 0.4], smooth=True)
    assert curve.values.tolist() == pytest.approx([0.15, 0.15, 0.45, 0.45])


@given(st.lists(st.floats(-5, 5), min_size=1, max_size=30))
def test_isotonic_is_monotone_and_keeps_the_mean(values: list[float]) -> None:
    fitted = isotonic(values)
    assert np.all(np.diff(fitted) >= -1e-9)
    assert fitted.mean() == pytest.approx(np.mean(values), abs=1e-9)


def test_curves_are_immutable_values() -> None:
    curve = EmpiricalCurve([16, 32], [0.1, 0.2])
    with pytest.raises(ValueError, match="read-only"):
        curve.values[0] = 0.5
    assert curve == EmpiricalCurve([16, 32], [0.1, 0.2])
    assert curve != EmpiricalCurve([16, 32], [0.1, 0.3])


def test_batch_is_a_sequence_of_curves_and_scores_each_at_its_budget() -> None:
    batch = CurveBatch([16, 32], [[0.1, 0.2], [0.3, 0.9]])
    assert len(batch) == 2
    assert batch[1] == EmpiricalCurve([16, 32], [0.3, 0.9])
    assert batch.accuracy_at([40, 16]).tolist() == pytest.approx([0.2, 0.3])
    assert batch.accuracy_at([0, 15]).tolist() == [0.0, 0.0]
    assert len(batch[1:]) == 1
    assert CurveBatch.from_curves(list(batch)).matrix.tolist() == batch.matrix.tolist()


def test_batch_refuses_mixed_grids_and_bad_shapes() -> None:
    with pytest.raises(InvalidCurve, match=r"curves\[1\]"):
        CurveBatch.from_curves([EmpiricalCurve([16], [0.1]), EmpiricalCurve([32], [0.1])])
    with pytest.raises(InvalidCurve, match="accuracy"):
        CurveBatch([16, 32], [0.1, 0.2])
    with pytest.raises(InvalidCurve, match="budgets"):
        CurveBatch([16, 32], [[0.1, 0.2]]).accuracy_at([1, 2])
