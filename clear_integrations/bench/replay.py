"""Replay measured curves through the allocators: every policy, on the same queries, side by side.

Batch mode allocates a whole fold at once; online mode feeds a stream of queries one at a time to a
:class:`~clear_integrations.pricing.ShadowPrice`. A query's score at ``b`` tokens is its measured accuracy at the
largest grid budget ``<= b`` (0 below the first: no call is made). Without a test set, the estimator is
cross-validated: fitted on ``K - 1`` folds, scored on the held-out fold, so it never sees a curve it is scored on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..allocate import allocate
from ..baselines import ALLOCATORS
from ..curves.curve import CurveBatch
from ..errors import InvalidInput
from ..estimators.base import Estimator, PriorEstimator
from ..estimators.text import TextFeatureEstimator
from ..pricing import ShadowPrice
from .curvesets import CurveSet
from .streams import STREAMS, make_stream

__all__ = ["ESTIMATOR_PRESETS", "POLICIES", "BenchRecord", "cross_validation_splits", "replay"]

POLICIES = ("uniform", "proportional", "greedy_marginal", "clear", "oracle")
ESTIMATOR_PRESETS: dict[str, Callable[[], Estimator]] = {
    "prior": PriorEstimator,
    "text": TextFeatureEstimator,
    "text+label": lambda: TextFeatureEstimator(categorical=("model_predicted_difficulty",)),
}
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class BenchRecord:
    """One (policy, estimator, mode, stream, avg_budget) cell, averaged over folds."""

    policy: str
    estimator: str
    mode: str
    stream: str
    avg_budget: int
    accuracy: float
    tokens_spent: float
    abandoned_fraction: float
    shadow_price: float | None
    queries: int
    batch_accuracy: float | None = None
    predict_us: float | None = None
    predict_us_single: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cross_validation_splits(n: int, folds: int, seed: int) -> list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    """``folds`` (train, test) index pairs over a seeded shuffle of ``range(n)``."""
    if folds < 2 or folds > n:
        raise InvalidInput("folds", folds, f"must be between 2 and the number of queries ({n})")
    parts = np.array_split(np.random.default_rng(seed).permutation(n), folds)
    return [(np.concatenate(parts[:i] + parts[i + 1 :]), parts[i]) for i in range(folds)]


@dataclass
class _Cell:
    accuracy: float = 0.0
    spent: float = 0.0
    abandoned: float = 0.0
    price: float = 0.0
    priced: bool = False
    queries: int = 0
    folds: int = 0
    batch: float = 0.0

    def add(self, true: CurveBatch, budgets: np.ndarray[Any, Any], price: float | None, batch: float = 0.0) -> None:
        self.batch += batch
        self.accuracy += float(true.accuracy_at(budgets).mean())
        self.spent += float(budgets.mean())
        self.abandoned += float((budgets == 0).mean())
        if price is not None and np.isfinite(price):
            self.price += price
            self.priced = True
        self.queries += int(budgets.size)
        self.folds += 1


def _batch(policy: str, predicted: CurveBatch, true: CurveBatch, avg: int, max_tokens: int | None) -> tuple[Any, float]:
    budget = avg * len(true)
    if policy == "oracle":
        result = allocate(true, budget, max_tokens=max_tokens)
    else:
        result = ALLOCATORS[policy](predicted, budget, max_tokens=max_tokens)
    return result.budgets, result.shadow_price


class _ReplayClock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _online(
    curves: CurveBatch, avg: int, max_tokens: int | None, arrivals: np.ndarray[Any, Any] | None
) -> tuple[np.ndarray[Any, Any], float]:
    """Feed the stream to a pacer: per query, or per second on the stream's own clock when it has arrival times."""
    clock = _ReplayClock()
    if arrivals is None:
        pacer = ShadowPrice(tokens_per_query=avg, max_tokens=max_tokens)
    else:
        span = float(arrivals[-1] - arrivals[0]) or 1.0
        pacer = ShadowPrice(tokens_per_second=avg * len(curves) / span, max_tokens=max_tokens, clock=clock)
    budgets = np.empty(len(curves), dtype=np.int64)
    for i, curve in enumerate(curves):
        if arrivals is not None:
            clock.now = float(arrivals[i])
        budgets[i] = pacer.decide(curve).budget
    return budgets, float(pacer.price or 0.0)


def replay(
    train: CurveSet,
    *,
    test: CurveSet | None = None,
    budgets: Sequence[int],
    policies: Sequence[str] = ("uniform", "clear", "oracle"),
    estimator: str = "prior",
    modes: Sequence[str] = ("batch",),
    streams: Sequence[str] = ("uniform",),
    folds: int = 5,
    stream_size: int = 500,
    max_tokens: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[BenchRecord]:
    """Score every policy at every average budget; see the module docstring for the protocol."""
    for policy in policies:
        if policy not in POLICIES:
            raise InvalidInput("policies", policy, f"must be among {', '.join(POLICIES)}")
    for mode in modes:
        if mode not in ("batch", "online"):
            raise InvalidInput("modes", mode, "must be 'batch' or 'online'")
    for name in streams:
        if name not in STREAMS:
            raise InvalidInput("streams", name, f"must be among {', '.join(STREAMS)}")
    if estimator not in ESTIMATOR_PRESETS:
        raise InvalidInput("estimator", estimator, f"must be one of {sorted(ESTIMATOR_PRESETS)}")
    if test is not None:
        pairs = [(train, test)]
    else:
        pairs = [(train.take(a), train.take(b)) for a, b in cross_validation_splits(len(train), folds, seed)]
    runs = [("batch", "all")] if "batch" in modes else []
    runs += [("online", name) for name in streams] if "online" in modes else []
    cells: dict[tuple[str, str, str, int], _Cell] = {}
    total, done = len(pairs) * len(runs) * len(budgets), 0
    cost = [0.0, 0.0]  # seconds per prompt: batched, one at a time
    for fold, (fit_set, score_set) in enumerate(pairs):
        model = ESTIMATOR_PRESETS[estimator]().fit(fit_set.prompts, fit_set.curves, fit_set.meta)
        started = time.perf_counter()
        predicted = model.predict(score_set.prompts, score_set.meta)
        cost[0] += (time.perf_counter() - started) / len(score_set)
        started = time.perf_counter()
        for i in range(min(20, len(score_set))):
            model.predict(score_set.prompts[i : i + 1], score_set.meta[i : i + 1] if score_set.meta else None)
        cost[1] += (time.perf_counter() - started) / min(20, len(score_set))
        for mode, name in runs:
            stream = None if mode == "batch" else make_stream(name, score_set.curves, stream_size, seed=seed + fold)
            for avg in budgets:
                for policy in policies:
                    if stream is None:
                        chosen, price = _batch(policy, predicted, score_set.curves, avg, max_tokens)
                        true, batch = score_set.curves, 0.0
                    elif policy == "uniform":  # a fixed cap needs no price: online and batch are the same
                        true = score_set.curves.take(stream.indices)
                        chosen, price = _batch(policy, true, true, avg, max_tokens)
                        batch = float(true.accuracy_at(chosen).mean())
                    elif policy in ("clear", "oracle"):
                        source = (score_set.curves if policy == "oracle" else predicted).take(stream.indices)
                        true = score_set.curves.take(stream.indices)
                        chosen, price = _online(source, avg, max_tokens, stream.arrivals)
                        batch = float(true.accuracy_at(_batch("clear", source, true, avg, max_tokens)[0]).mean())
                    else:
                        continue
                    cells.setdefault((mode, name, policy, avg), _Cell()).add(true, chosen, price, batch)
                done += 1
                if progress is not None:
                    progress(done, total)
    return [
        BenchRecord(
            policy=policy,
            estimator="true curves" if policy == "oracle" else ("none" if policy == "uniform" else estimator),
            mode=mode,
            stream=name,
            avg_budget=avg,
            accuracy=cell.accuracy / cell.folds,
            tokens_spent=cell.spent / cell.folds,
            abandoned_fraction=cell.abandoned / cell.folds,
            shadow_price=cell.price / cell.folds if cell.priced else None,
            queries=cell.queries,
            batch_accuracy=cell.batch / cell.folds if mode == "online" else None,
            predict_us=None if policy in ("uniform", "oracle") else 1e6 * cost[0] / len(pairs),
            predict_us_single=None if policy in ("uniform", "oracle") else 1e6 * cost[1] / len(pairs),
        )
        for (mode, name, policy, avg), cell in cells.items()
    ]
