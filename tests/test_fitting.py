"""Tests of the least-squares fits of the parametric families (synthetic data generated here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clear_integrations.curves.curve import CurveBatch, EmpiricalCurve
from clear_integrations.curves.families import Logistic, ShiftedSurge, logistic_cdf, surge_cdf
from clear_integrations.curves.fitting import LogisticFit, SurgeFit, fit_logistic, fit_shifted_surge, fit_tau
from clear_integrations.errors import InvalidCurve

GRID = np.arange(16, 257, 16)


def _surge_batch(
    n: int,
    *,
    ceiling: float = 0.85,
    rate: float = 0.04,
    floor: float = 0.05,
    noise: float = 0.0,
    seed: int = 0,
    ceilings: np.ndarray | None = None,
) -> tuple[CurveBatch, np.ndarray]:
    rng = np.random.default_rng(seed)
    taus = rng.uniform(0, 180, n)
    top = np.full(n, ceiling) if ceilings is None else ceilings
    clean = floor + (top[:, None] - floor) * surge_cdf(GRID[None, :] - taus[:, None], rate)
    noisy = np.clip(clean + rng.normal(0, noise, clean.shape), 0, 1) if noise else clean
    return CurveBatch(GRID, noisy), taus


def _rmse(fit_matrix: np.ndarray, data: np.ndarray) -> float:
    return float(np.sqrt(np.mean((fit_matrix - data) ** 2)))


def test_recovers_exact_parameters_without_noise() -> None:
    batch, taus = _surge_batch(300)
    fit = fit_shifted_surge(batch)
    assert fit.ceiling == pytest.approx(0.85, rel=1e-3)
    assert fit.rate == pytest.approx(0.04, rel=1e-3)
    assert fit.floor == pytest.approx(0.05, abs=1e-3)
    assert np.max(np.abs(fit.taus - taus)) < 0.5
    assert fit.rmse < 1e-3


_SHAPES = np.random.default_rng(2026).uniform([0.5, 0.02, 0.05], [0.95, 0.12, 0.2], (6, 3))


@pytest.mark.parametrize(("ceiling", "rate", "floor"), _SHAPES.tolist())
def test_recovers_shape_and_taus_from_noisy_curves(ceiling: float, rate: float, floor: float) -> None:
    batch, taus = _surge_batch(500, ceiling=ceiling, rate=rate, floor=floor, noise=0.03, seed=int(rate * 1e6))
    fit = fit_shifted_surge(batch)
    assert fit.ceiling == pytest.approx(ceiling, rel=0.03)
    assert fit.rate == pytest.approx(rate, rel=0.05)
    assert fit.floor == pytest.approx(floor, abs=0.01)
    errors = np.abs(fit.taus - taus)
    assert np.median(errors) < 3
    assert np.quantile(errors, 0.9) < 8
    assert fit.rmse == pytest.approx(0.03, rel=0.1)  # the noise level: nothing is left to explain


def test_recovers_per_query_ceilings() -> None:
    ceilings = np.random.default_rng(3).uniform(0.5, 0.95, 400)
    batch, taus = _surge_batch(400, ceilings=ceilings, noise=0.02, seed=3)
    fit = fit_shifted_surge(batch, per_query_ceiling=True)
    assert fit.ceilings is not None
    assert fit.ceilings.shape == (400,)
    visible = taus < 120  # the plateau is reached on the grid
    assert np.median(np.abs(fit.ceilings - ceilings)[visible]) < 0.02
    assert fit.rate == pytest.approx(0.04, rel=0.05)
    assert np.median(np.abs(fit.taus - taus)) < 3
    assert fit.rmse < fit_shifted_surge(batch).rmse
    assert fit.curve(0).ceiling == pytest.approx(fit.ceilings[0])


def test_recovers_logistic_parameters() -> None:
    rng = np.random.default_rng(5)
    midpoints = rng.uniform(20, 220, 400)
    clean = 0.1 + 0.8 * logistic_cdf(GRID[None, :] - midpoints[:, None], 0.06)
    batch = CurveBatch(GRID, np.clip(clean + rng.normal(0, 0.03, clean.shape), 0, 1))
    fit = fit_logistic(batch)
    assert isinstance(fit, LogisticFit)
    assert fit.steepness == pytest.approx(0.06, rel=0.05)
    assert fit.ceiling == pytest.approx(0.9, rel=0.03)
    assert fit.floor == pytest.approx(0.1, abs=0.01)
    assert np.median(np.abs(fit.midpoints - midpoints)) < 3
    assert isinstance(fit.curve(0), Logistic)
    assert fit.curve(0).midpoint == fit.midpoints[0]


def _real_like(n: int, seed: int) -> np.ndarray:
    """S-shaped curves like measured ones: binomial noise (100 rollouts), varied shapes, a late decline."""
    rng = np.random.default_rng(seed)
    tau, rate = rng.gamma(2.0, 50.0, n), rng.uniform(0.02, 0.1, n)
    top, decline = rng.uniform(0.3, 1.0, n), rng.uniform(0.0, 0.001, n)
    rx = rate[:, None] * np.maximum(GRID[None, :] - tau[:, None], 0)
    p = top[:, None] * (1 - (1 + rx) * np.exp(-rx))
    p = np.clip(p - decline[:, None] * np.maximum(GRID - 128, 0), 0, 1)
    return np.round(rng.binomial(100, p) / 100, 2)


@pytest.mark.parametrize("fit_function", [fit_shifted_surge, fit_logistic])
def test_beats_the_mean_curve_on_real_like_data(fit_function: object) -> None:
    data = _real_like(1000, seed=11)
    fit = fit_function(CurveBatch(GRID, data))  # type: ignore[operator]
    baseline = _rmse(np.broadcast_to(data.mean(axis=0), data.shape), data)
    assert fit.rmse < 0.6 * baseline
    fitted = np.vstack([curve.accuracy(GRID) for curve in fit.curves()])
    assert _rmse(fitted, data) == pytest.approx(fit.rmse)


def test_fit_tau_with_a_known_shape() -> None:
    batch, taus = _surge_batch(200, noise=0.02, seed=9)
    shape = ShiftedSurge(0, ceiling=0.85, rate=0.04, floor=0.05)
    found = fit_tau(batch, shape)
    assert found.shape == (200,)
    assert np.median(np.abs(found - taus)) < 3
    single = fit_tau(batch[4], shape)
    assert isinstance(single, float)
    assert single == pytest.approx(found[4])
    fit = fit_shifted_surge(batch)
    np.testing.assert_allclose(fit_tau(batch, fit), fit.taus)
    held_out, held_taus = _surge_batch(100, noise=0.02, seed=10)
    assert np.median(np.abs(fit_tau(held_out, fit) - held_taus)) < 3
    with_ceilings = fit_tau(held_out, fit, per_query_ceiling=True)
    assert np.median(np.abs(with_ceilings - held_taus)) < 3


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 240), st.floats(0.01, 0.2), st.floats(0.3, 1.0), st.floats(0.0, 0.25))
def test_fit_tau_inverts_a_noiseless_curve(tau: float, rate: float, ceiling: float, floor: float) -> None:
    curve = ShiftedSurge(tau, ceiling=ceiling, rate=rate, floor=floor)
    found = fit_tau(EmpiricalCurve(GRID, curve.accuracy(GRID)), curve, step=0.5)
    visible = curve(GRID[-1]) - floor > 1e-3  # the rise shows on the grid
    if visible:
        assert found == pytest.approx(tau, abs=0.25)
    else:
        assert found >= GRID[-1] - 16


def test_fit_tau_with_a_logistic_shape_gives_midpoints() -> None:
    midpoints = np.array([40.0, 100.0, 150.0])
    data = 0.9 * logistic_cdf(GRID[None, :] - midpoints[:, None], 0.05)
    found = fit_tau(CurveBatch(GRID, data), Logistic(0, steepness=0.05, ceiling=0.9))
    np.testing.assert_allclose(found, midpoints, atol=0.5)


def test_inputs_sequence_or_batch_and_zero_budget() -> None:
    batch, _ = _surge_batch(50, noise=0.02, seed=2)
    from_list = fit_shifted_surge(list(batch))
    assert from_list == fit_shifted_surge(batch)  # deterministic, same input either way
    with_zero = CurveBatch(np.concatenate(([0], GRID)), np.hstack([np.zeros((50, 1)), batch.matrix]))
    assert fit_shifted_surge(with_zero).taus == pytest.approx(from_list.taus)
    assert from_list.budgets == tuple(GRID.tolist())


def test_hopeless_curves_get_the_last_budget() -> None:
    batch, _ = _surge_batch(100, noise=0.0, seed=4)
    data = np.vstack([batch.matrix, np.zeros((3, GRID.size))])
    fit = fit_shifted_surge(CurveBatch(GRID, data))
    assert np.all(fit.taus[-3:] >= GRID[-1] - 1)


def test_result_is_frozen_and_json_round_trips() -> None:
    batch, _ = _surge_batch(30, noise=0.02, seed=1)
    fits = (fit_shifted_surge(batch), fit_shifted_surge(batch, per_query_ceiling=True), fit_logistic(batch))
    for fit in fits:
        data = json.loads(json.dumps(fit.to_dict()))
        again = type(fit).from_dict(data)
        assert again == fit
        assert len(again) == 30
        assert isinstance(again.budgets, tuple)
        with pytest.raises(AttributeError):
            fit.rmse = 0.0  # type: ignore[misc]
        locations = fit.taus if isinstance(fit, SurgeFit) else fit.midpoints
        with pytest.raises(ValueError, match="read-only"):
            locations[0] = 1.0
    surge = fit_shifted_surge(batch)
    curves = surge.curves(resolution=4)
    assert len(curves) == 30
    assert all(isinstance(c, ShiftedSurge) and c.resolution == 4 for c in curves)
    assert curves[2] == surge.curve(2, resolution=4)
    assert surge.curve(2).tau == surge.taus[2]
    assert surge.curve(2).rate == surge.rate


def test_invalid_input_names_the_field() -> None:
    batch, _ = _surge_batch(10)
    cases = [
        (lambda: fit_shifted_surge([]), "curves"),
        (lambda: fit_shifted_surge(batch, step=0), "step"),
        (lambda: fit_logistic(batch, max_iter=0), "max_iter"),
        (lambda: fit_tau(batch, ShiftedSurge(0, ceiling=0.5, rate=0.1), step=-1.0), "step"),
        (lambda: fit_shifted_surge(CurveBatch([0, 16], np.zeros((2, 2)))), "curves"),
        (
            lambda: fit_shifted_surge([EmpiricalCurve([16, 32], [0, 0.5]), EmpiricalCurve([16, 48], [0, 0.5])]),
            "curves[1]",
        ),
    ]
    for call, field in cases:
        with pytest.raises(InvalidCurve) as error:
            call()
        assert error.value.field == field
