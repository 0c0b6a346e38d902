from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clear_integrations import CurveBatch, EmpiricalCurve, InvalidBudget, PriceState, ShadowPrice, allocate
from clear_integrations.bench.curvesets import synthetic_curves

GRID = [16, 32, 64, 128]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hopeless_queries_are_abandoned_and_good_ones_funded() -> None:
    pacer = ShadowPrice(tokens_per_query=64, max_tokens=128)
    good = EmpiricalCurve(GRID, [0.0, 0.3, 0.9, 0.95])
    hopeless = EmpiricalCurve(GRID, [0.0, 0.0, 0.0, 0.01])
    for _ in range(50):  # let the price learn what traffic looks like
        pacer.decide(good)
        pacer.decide(hopeless)
    funded, dropped = pacer.decide(good), pacer.decide(hopeless)
    assert funded.budget >= 64 and not funded.abandoned
    assert funded.expected_accuracy == pytest.approx(good(funded.budget))
    assert dropped.budget == 0 and dropped.abandoned and dropped.expected_accuracy == 0.0
    assert dropped.best_accuracy == pytest.approx(0.01)


@pytest.mark.parametrize("avg", [16, 48, 128])
def test_online_price_reaches_90_percent_of_batch_and_never_overspends(avg: int) -> None:
    curves = synthetic_curves(500, seed=avg).curves
    pacer = ShadowPrice(tokens_per_query=avg, max_tokens=256)
    budgets = []
    for i, curve in enumerate(curves):
        budgets.append(pacer.decide(curve).budget)
        assert sum(budgets) <= avg * (i + 1) + 256  # the target so far plus one query's cap
    batch = allocate(curves, avg * len(curves))
    online = curves.accuracy_at(np.array(budgets)).mean()
    assert online >= 0.9 * batch.expected_accuracy


def test_price_rises_when_traffic_outgrows_the_target() -> None:
    curves = synthetic_curves(400, seed=3).curves
    scarce, ample = ShadowPrice(tokens_per_query=16), ShadowPrice(tokens_per_query=200)
    for curve in curves:
        scarce.decide(curve)
        ample.decide(curve)
    assert scarce.price is not None and ample.price is not None
    assert scarce.price > 3 * ample.price


def test_time_target_uses_the_injected_clock() -> None:
    clock = FakeClock()
    pacer = ShadowPrice(tokens_per_second=10.0, clock=clock, max_tokens=128)
    curve = EmpiricalCurve(GRID, [0.0, 0.4, 0.8, 0.9])
    granted = []
    for _ in range(100):
        clock.now += 5.0  # 50 tokens of target per query
        granted.append(pacer.decide(curve).budget)
    assert sum(granted) <= 10.0 * 5.0 * 100 + 128
    assert sum(granted) >= 0.5 * 10.0 * 5.0 * 100
    frozen = sum(pacer.decide(curve).budget for _ in range(20))  # the clock stops: only the burst is left
    assert frozen <= 128 + 10.0 * 5.0 * 100 - sum(granted) + 1


def test_refund_returns_unused_tokens_to_the_pace() -> None:
    pacer = ShadowPrice(tokens_per_query=32, max_tokens=128)
    decision = pacer.decide(EmpiricalCurve(GRID, [0.0, 0.4, 0.8, 0.9]))
    spent = pacer.state.spent
    pacer.refund(decision.budget // 2)
    assert pacer.state.spent == spent - decision.budget // 2
    with pytest.raises(InvalidBudget, match="tokens"):
        pacer.refund(-1)


def test_state_round_trips_through_a_dict_and_resumes() -> None:
    curves = synthetic_curves(60, seed=1).curves
    first = ShadowPrice(tokens_per_query=48)
    for curve in curves[:30]:
        first.decide(curve)
    saved = first.state.to_dict()
    second = ShadowPrice(tokens_per_query=48, state=PriceState.from_dict(saved))
    for curve in curves[30:]:
        assert first.decide(curve) == second.decide(curve)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "tokens_per_query"),
        ({"tokens_per_query": 10, "tokens_per_second": 1.0}, "tokens_per_query"),
        ({"tokens_per_query": -1}, "tokens_per_query"),
        ({"tokens_per_query": float("nan")}, "tokens_per_query"),
        ({"tokens_per_query": 10, "window": 0}, "window"),
        ({"tokens_per_query": 10, "max_tokens": 1.5}, "max_tokens"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidBudget) as caught:
        ShadowPrice(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_works_on_batches_of_one_grid() -> None:
    curves = CurveBatch(GRID, [[0.0, 0.3, 0.9, 0.95]] * 5)
    pacer = ShadowPrice(tokens_per_query=64)
    assert all(pacer.decide(c).budget >= 0 for c in curves)


@pytest.mark.parametrize("avg", [16, 48, 128, 256])
def test_online_price_on_real_curves(shared_data: Path, avg: int) -> None:
    from clear_integrations.bench.curvesets import load_predictive_scheduling

    data = load_predictive_scheduling(shared_data / "predictive-scheduling-gsm8k")
    curves = data.curves.take(np.random.default_rng(avg).permutation(len(data))[:500])
    pacer = ShadowPrice(tokens_per_query=avg, max_tokens=256)
    budgets = np.array([pacer.decide(curve).budget for curve in curves])
    assert np.all(np.cumsum(budgets) <= avg * np.arange(1, 501) + 256)
    assert curves.accuracy_at(budgets).mean() >= 0.9 * allocate(curves, avg * 500).expected_accuracy


def test_bursty_arrivals_on_a_time_target() -> None:
    from clear_integrations.bench.streams import make_stream

    pool = synthetic_curves(2000, seed=9).curves
    stream = make_stream("bursty", pool, 500, seed=1)
    assert stream.arrivals is not None
    curves, clock = pool.take(stream.indices), FakeClock()
    rate = 48 * 500 / float(stream.arrivals[-1] - stream.arrivals[0])
    pacer = ShadowPrice(tokens_per_second=rate, clock=clock, max_tokens=256)
    budgets = []
    for at, curve in zip(stream.arrivals, curves, strict=True):
        clock.now = float(at)
        budgets.append(pacer.decide(curve).budget)
    assert curves.accuracy_at(np.array(budgets)).mean() >= 0.85 * allocate(curves, 48 * 500).expected_accuracy


def test_transition_is_pure_so_a_ledger_can_share_the_state() -> None:
    pacer = ShadowPrice(tokens_per_query=48)
    curve = EmpiricalCurve(GRID, [0.0, 0.4, 0.8, 0.9])
    start = PriceState.from_dict(pacer.state.to_dict())
    first, after_first = pacer.transition(start, curve)
    again, after_again = pacer.transition(start, curve)
    assert (first, after_first) == (again, after_again)
    assert pacer.state == start  # nothing stored
    assert after_first.queries == 1 and after_first.spent == first.budget


def test_a_funded_query_also_pays_its_overhead() -> None:
    curve = EmpiricalCurve(GRID, [0.0, 0.4, 0.8, 0.9])
    cheap, costly = ShadowPrice(tokens_per_query=200), ShadowPrice(tokens_per_query=200)
    plain = cheap.decide(curve)
    with_prompt = costly.decide(curve, overhead=80)
    assert with_prompt.budget == plain.budget > 0
    assert costly.state.spent == cheap.state.spent + 80  # the prompt counts against the pace
    pricey = ShadowPrice(tokens_per_query=40)
    for _ in range(30):
        pricey.decide(curve, overhead=500)  # queries whose prompt alone eats the target are abandoned
    assert pricey.decide(curve, overhead=500).abandoned
