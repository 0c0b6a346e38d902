"""Tests of the parametric curve families and of the Lambert W helper they use."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clear_integrations.curves.curve import AccuracyCurve
from clear_integrations.curves.families import SATURATION_GAP, Logistic, ShiftedSurge, curve_from_dict
from clear_integrations.curves.lambertw import lambertw0, lambertwm1
from clear_integrations.errors import InvalidBudget, InvalidCurve

taus = st.floats(0, 300)
rates = st.floats(0.005, 0.5)
prices = st.floats(1e-5, 0.2)


@st.composite
def shapes(draw: st.DrawFn) -> tuple[float, float]:
    ceiling = draw(st.floats(0.0, 1.0))
    return ceiling, draw(st.floats(0.0, ceiling))


@st.composite
def surges(draw: st.DrawFn) -> ShiftedSurge:
    ceiling, floor = draw(shapes())
    return ShiftedSurge(draw(taus), ceiling=ceiling, rate=draw(rates), floor=floor)


@st.composite
def logistics(draw: st.DrawFn) -> Logistic:
    ceiling, floor = draw(shapes())
    return Logistic(draw(taus), steepness=draw(rates), ceiling=ceiling, floor=floor)


curves = st.one_of(surges(), logistics())


# --- Lambert W ----------------------------------------------------------------------------------------------


def _bisect(z: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Brute-force inverse of w e^w on [lo, hi], where it is monotone (increasing or decreasing)."""
    rising = lo * np.exp(lo) <= hi * np.exp(hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        below = (mid * np.exp(mid) < z) == rising
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def test_lambertw_known_values() -> None:
    np.testing.assert_allclose(lambertw0([0.0, math.e, -1 / math.e, 2 * math.exp(2)]), [0.0, 1.0, -1.0, 2.0])
    branch = [-1 / math.e, -2 * math.exp(-2), -5 * math.exp(-5)]
    np.testing.assert_allclose(lambertwm1(branch), [-1.0, -2.0, -5.0])
    assert lambertwm1(0.0) == -np.inf
    assert lambertw0(np.inf) == np.inf
    assert np.isnan(lambertw0([-0.5, np.nan])).all()
    assert np.isnan(lambertwm1([-0.5, 0.1, np.nan])).all()


def test_lambertw_against_bisection() -> None:
    z0 = np.concatenate([-1 / math.e + np.logspace(-12, -0.5, 50), np.linspace(-0.3, 5, 50)])
    z0 = np.concatenate([z0, np.logspace(1, 200, 50)])
    w0 = lambertw0(z0)
    brute = _bisect(z0, np.full_like(z0, -1.0), np.full_like(z0, 500.0))
    np.testing.assert_allclose(w0, brute, rtol=1e-9, atol=1e-6)
    zm = -np.concatenate([1 / math.e - np.logspace(-12, -0.5, 50), np.logspace(-300, -0.44, 100)])
    wm = lambertwm1(zm)
    np.testing.assert_allclose(wm, _bisect(zm, np.full_like(zm, -800.0), np.full_like(zm, -1.0)), rtol=1e-9, atol=1e-6)
    assert np.all(w0 >= -1)
    assert np.all(wm <= -1)


@given(st.floats(-1 / math.e, 1e12), st.floats(-1 / math.e, -1e-200))
def test_lambertw_inverts_w_exp_w(z0: float, zm: float) -> None:
    w0, wm = float(lambertw0(z0)), float(lambertwm1(zm))
    assert w0 * math.exp(w0) == pytest.approx(z0, rel=1e-10, abs=1e-14)
    assert wm * math.exp(wm) == pytest.approx(zm, rel=1e-10, abs=1e-14)


def test_lambertw_is_vectorised_over_any_shape() -> None:
    z = np.linspace(-0.3, -0.01, 12).reshape(3, 4)
    assert lambertw0(z).shape == (3, 4)
    assert lambertwm1(z).shape == (3, 4)


# --- formulas -----------------------------------------------------------------------------------------------


def test_shifted_surge_formula_at_known_points() -> None:
    curve = ShiftedSurge(10, ceiling=0.8, rate=0.1, floor=0.2)
    assert curve(0) == 0.0
    assert curve(5) == pytest.approx(0.2)
    assert curve(10) == pytest.approx(0.2)
    assert curve(20) == pytest.approx(0.2 + 0.6 * (1 - 2 / math.e))
    assert curve(40) == pytest.approx(0.2 + 0.6 * (1 - 4 * math.exp(-3)))
    assert curve(1e6) == pytest.approx(0.8)
    # the marginal accuracy: 0 at tau, peak (ceiling - floor) rate / e at tau + 1/rate
    np.testing.assert_allclose(curve.marginal([5, 10, 20]), [0.0, 0.0, 0.6 * 0.1 / math.e])


def test_logistic_formula_at_known_points() -> None:
    curve = Logistic(50, steepness=0.1, ceiling=0.9, floor=0.1)
    assert curve(0) == 0.0
    assert curve(50) == pytest.approx(0.5)
    assert curve(60) == pytest.approx(0.1 + 0.8 / (1 + math.exp(-1)))
    assert curve(1e6) == pytest.approx(0.9)
    assert float(curve.marginal(50)) == pytest.approx(0.8 * 0.1 / 4)


@pytest.mark.parametrize("curve", [ShiftedSurge(30, ceiling=0.9, rate=0.05), Logistic(30, steepness=0.05, ceiling=0.9)])
def test_accuracy_is_vectorised_and_is_an_accuracy_curve(curve: ShiftedSurge | Logistic) -> None:
    assert isinstance(curve, AccuracyCurve)
    grid = np.arange(12.0).reshape(3, 4) * 10
    values = curve.accuracy(grid)
    assert values.shape == (3, 4)
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values.ravel(), [curve(b) for b in grid.ravel()])
    assert curve.accuracy(np.inf) == pytest.approx(0.9)


@settings(max_examples=200)
@given(curves)
def test_bounded_monotone_and_zero_at_zero(curve: ShiftedSurge | Logistic) -> None:
    budgets = np.concatenate(([0.0], np.geomspace(0.01, 1e5, 400)))
    values = curve.accuracy(budgets)
    assert values[0] == 0.0
    assert np.all(np.diff(values[1:]) >= -1e-12)
    assert np.all(values[1:] >= curve.floor - 1e-12)
    assert np.all(values <= curve.ceiling + 1e-12)


@settings(max_examples=200)
@given(curves)
def test_marginal_is_the_derivative(curve: ShiftedSurge | Logistic) -> None:
    b = np.linspace(1.0, 600.0, 300)
    h = 1e-5
    numeric = (curve.accuracy(b + h) - curve.accuracy(b - h)) / (2 * h)
    np.testing.assert_allclose(curve.marginal(b), numeric, atol=1e-6)


@settings(max_examples=200)
@given(curves, st.integers(1, 64))
def test_knots_are_a_finite_grid_flat_after_the_horizon(curve: ShiftedSurge | Logistic, resolution: int) -> None:
    params = curve.to_dict()
    del params["horizon"]
    params["resolution"] = resolution
    curve = curve_from_dict(params)
    knots = curve.knots()
    assert knots.dtype == np.int64
    assert knots[0] >= 1
    assert np.all(np.diff(knots) > 0)
    assert np.all(np.diff(knots)[:-1] == resolution)
    assert knots[-1] == curve.horizon
    assert knots[-1] - (knots[-2] if len(knots) > 1 else 0) <= resolution
    beyond = curve.accuracy(curve.horizon + np.geomspace(1, 1e6, 50))
    assert np.all(curve.ceiling - beyond <= SATURATION_GAP + 1e-12)
    assert curve.ceiling - curve(curve.horizon) <= SATURATION_GAP + 1e-12


def test_horizon_and_resolution_can_be_set() -> None:
    curve = ShiftedSurge(20, ceiling=0.9, rate=0.05, horizon=100, resolution=16)
    np.testing.assert_array_equal(curve.knots(), [16, 32, 48, 64, 80, 96, 100])
    assert Logistic(20, steepness=0.1, ceiling=0.5, horizon=8).knots().tolist() == [8]
    with pytest.raises(InvalidCurve) as error:
        ShiftedSurge(20, ceiling=0.9, rate=1e-7)  # saturates only after ~1e8 tokens: too many knots
    assert error.value.field == "horizon"
    assert ShiftedSurge(20, ceiling=0.9, rate=1e-7, resolution=10_000).knots()[-1] > 10**7


# --- best budget --------------------------------------------------------------------------------------------


def _brute_force(curve: ShiftedSurge | Logistic, price: float) -> tuple[int, float]:
    """Best whole budget by exhaustive search (no budget past ceiling / price can have a positive surplus)."""
    budgets = np.arange(0, math.ceil(curve.ceiling / price) + 2, dtype=np.float64)
    surplus = curve.accuracy(budgets) - price * budgets
    best = int(np.argmax(surplus))
    return best, float(surplus[best])


@settings(max_examples=300, deadline=None)
@given(curves, prices)
def test_best_budget_matches_brute_force(curve: ShiftedSurge | Logistic, price: float) -> None:
    best = curve.best_budget(price)
    _, brute_surplus = _brute_force(curve, price)
    surplus = curve(best) - price * best
    assert surplus >= brute_surplus - 1e-12
    if brute_surplus > 1e-12:
        assert best > 0
    if best == 0:
        assert brute_surplus <= 1e-12


def test_best_budget_many_random_parameter_sets() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        ceiling = rng.uniform(0.05, 1.0)
        floor = rng.uniform(0, ceiling) * (rng.random() < 0.5)
        kind = rng.random() < 0.5
        curve: ShiftedSurge | Logistic = (
            ShiftedSurge(rng.uniform(0, 300), ceiling=ceiling, rate=rng.uniform(0.005, 0.3), floor=floor)
            if kind
            else Logistic(rng.uniform(0, 300), steepness=rng.uniform(0.005, 0.3), ceiling=ceiling, floor=floor)
        )
        price = float(10 ** rng.uniform(-5, -1))
        brute, brute_surplus = _brute_force(curve, price)
        best = curve.best_budget(price)
        assert curve(best) - price * best == pytest.approx(brute_surplus, abs=1e-12), (curve, price, brute)


def test_best_budget_is_the_closed_form_on_the_falling_side() -> None:
    curve = ShiftedSurge(40, ceiling=0.9, rate=0.05, floor=0.1)
    price = 0.001
    x = -float(lambertwm1(-price / (0.8 * 0.05))) / 0.05
    assert curve.best_budget(price) in (math.floor(40 + x), math.ceil(40 + x))
    assert float(curve.marginal(40 + x)) == pytest.approx(price)
    assert 40 + x > 40 + 1 / 0.05  # past the steepest point


def test_rational_abandonment() -> None:
    hopeless = ShiftedSurge(200, ceiling=0.5, rate=0.05)
    assert hopeless.best_budget(0.01) == 0  # the surge cannot pay for the 200 tokens before it
    assert hopeless.best_budget(0.001) > 200  # cheap tokens: funded past its threshold
    assert ShiftedSurge(0, ceiling=0.5, rate=0.05).best_budget(1.0) == 0  # price above every marginal gain
    assert Logistic(100, steepness=0.05, ceiling=0.3).best_budget(0.01) == 0
    assert ShiftedSurge(0, ceiling=0.0, rate=0.1).best_budget(0.0) == 0  # nothing to buy, even for free


def test_best_budget_edge_prices() -> None:
    guess = ShiftedSurge(500, ceiling=0.3, rate=0.1, floor=0.3)  # flat at its floor: one token buys a guess
    assert guess.best_budget(0.1) == 1
    assert guess.best_budget(0.5) == 0
    curve = Logistic(50, steepness=0.1, ceiling=0.9)
    assert curve.best_budget(0) == curve.horizon
    with pytest.raises(InvalidBudget) as error:
        curve.best_budget(-0.1)
    assert error.value.field == "price"


# --- validation, identity, serialisation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tau": -1.0}, "tau"),
        ({"tau": math.nan}, "tau"),
        ({"tau": math.inf}, "tau"),
        ({"ceiling": 1.5}, "ceiling"),
        ({"ceiling": -0.1}, "ceiling"),
        ({"floor": 0.95}, "floor"),
        ({"floor": -0.1}, "floor"),
        ({"rate": 0.0}, "rate"),
        ({"rate": -1.0}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"rate": "fast"}, "rate"),
        ({"resolution": 0}, "resolution"),
        ({"resolution": 2.5}, "resolution"),
        ({"horizon": 0}, "horizon"),
    ],
)
def test_shifted_surge_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    params: dict[str, object] = {"tau": 10.0, "ceiling": 0.9, "rate": 0.1, "floor": 0.1, **kwargs}
    tau = params.pop("tau")
    with pytest.raises(InvalidCurve) as error:
        ShiftedSurge(tau, **params)  # type: ignore[arg-type]
    assert error.value.field == field
    assert field in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"midpoint": -1.0}, "midpoint"),
        ({"steepness": 0.0}, "steepness"),
        ({"steepness": math.nan}, "steepness"),
        ({"floor": 1.0}, "floor"),
        ({"ceiling": math.nan}, "ceiling"),
    ],
)
def test_logistic_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    params: dict[str, object] = {"midpoint": 10.0, "ceiling": 0.9, "steepness": 0.1, "floor": 0.1, **kwargs}
    midpoint = params.pop("midpoint")
    with pytest.raises(InvalidCurve) as error:
        Logistic(midpoint, **params)  # type: ignore[arg-type]
    assert error.value.field == field


@pytest.mark.parametrize("bad", [-1.0, math.nan, [5.0, -2.0]])
def test_bad_budgets_are_refused(bad: object) -> None:
    with pytest.raises(InvalidBudget) as error:
        ShiftedSurge(10, ceiling=0.9, rate=0.1).accuracy(bad)  # type: ignore[arg-type]
    assert error.value.field == "budgets"


def test_equality_hash_repr_and_immutability() -> None:
    a = ShiftedSurge(10, ceiling=0.9, rate=0.1)
    assert a == ShiftedSurge(10.0, ceiling=0.9, rate=0.1, floor=0.0, horizon=a.horizon)
    assert a != ShiftedSurge(11, ceiling=0.9, rate=0.1)
    assert a != Logistic(10, steepness=0.1, ceiling=0.9)
    assert len({a, ShiftedSurge(10, ceiling=0.9, rate=0.1)}) == 1
    expected = f"ShiftedSurge(tau=10.0, ceiling=0.9, rate=0.1, floor=0.0, horizon={a.horizon}, resolution=8)"
    assert repr(a) == expected
    assert repr(Logistic(5, steepness=0.2, ceiling=0.5)).startswith("Logistic(midpoint=5.0, steepness=0.2, ")
    with pytest.raises(AttributeError):
        a.tau = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "curve",
    [ShiftedSurge(10, ceiling=0.9, rate=0.1, floor=0.05), Logistic(70, steepness=0.03, ceiling=0.7, resolution=4)],
)
def test_json_round_trip(curve: ShiftedSurge | Logistic) -> None:
    data = json.loads(json.dumps(curve.to_dict()))
    assert curve_from_dict(data) == curve
    assert type(curve).from_dict(data) == curve
    with pytest.raises(InvalidCurve) as error:
        curve_from_dict({**data, "family": "cubic"})
    assert error.value.field == "family"
