"""Baseline allocators with the same call shape as :func:`~clear_integrations.allocate.allocate`.

Each takes ``(curves, budget, *, min_tokens=0, max_tokens=None, granularity=1)`` and returns an
:class:`~clear_integrations.allocate.Allocation`, so a benchmark compares like with like:

- :func:`uniform`: every query gets the same cap, ``budget / N``.
- :func:`proportional`: caps in proportion to each query's predicted need (the budget at which its curve
  reaches half of its best accuracy), the paper's "predictor-proportional" baseline.
- :func:`greedy_marginal`: hands out tokens step by step to the query whose *next* step buys the most accuracy
  per token; it looks only one step ahead, so it stalls on the flat start of S-shaped curves.
- ``ALLOCATORS`` maps the policy names used by the benchmark to these functions and to CLEAR's
  :func:`~clear_integrations.allocate.allocate` (``"clear"``; the oracle is ``allocate`` on the true curves).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from .allocate import Allocation, allocate, check_limits, finish_allocation
from .curves.curve import AccuracyCurve
from .curves.points import CurvePoints, curve_points

__all__ = ["ALLOCATORS", "Allocator", "greedy_marginal", "proportional", "uniform"]

_NO_PRICE = float("nan")


class Allocator(Protocol):
    """The shared call shape of every allocator."""

    def __call__(
        self,
        curves: Sequence[AccuracyCurve],
        budget: int,
        *,
        min_tokens: int = 0,
        max_tokens: int | None = None,
        granularity: int = 1,
    ) -> Allocation: ...


def _column_at_most(points: CurvePoints, caps: NDArray[np.int64]) -> NDArray[np.int64]:
    """Per row, the last valid point whose budget is ``<= caps[row]`` (column 0 if none)."""
    fits = points.valid & (points.budgets <= caps[:, None])
    width = points.budgets.shape[1]
    column: NDArray[np.int64] = ((width - 1) - np.argmax(fits[:, ::-1], axis=1)).astype(np.int64)
    return column


def _with_caps(points: CurvePoints, caps: NDArray[np.int64], budget: int) -> Allocation:
    """An allocation that gives every query exactly its cap, scored at the last knot within it.

    The cap (not the knot) is what the query may spend, so ``budgets`` holds the caps themselves.
    """
    result = finish_allocation(points, _column_at_most(points, caps), budget, shadow_price=_NO_PRICE)
    budgets = caps.astype(np.int64)
    budgets.setflags(write=False)
    abandoned = budgets == points.budgets[:, 0]
    abandoned.setflags(write=False)
    return Allocation(
        budgets=budgets,
        shadow_price=_NO_PRICE,
        abandoned=abandoned,
        expected_accuracy=result.expected_accuracy,
        spent=int(budgets.sum()),
        budget=budget,
    )


def uniform(
    curves: Sequence[AccuracyCurve],
    budget: int,
    *,
    min_tokens: int = 0,
    max_tokens: int | None = None,
    granularity: int = 1,
) -> Allocation:
    """The same cap for every query: ``budget // N`` rounded down to ``granularity``, within the limits."""
    budget, floor, cap, granularity = check_limits(len(curves), budget, min_tokens, max_tokens, granularity)
    points = curve_points(curves, floor=floor, cap=cap, granularity=granularity)
    share = budget // max(len(curves), 1) // granularity * granularity
    share = max(floor, share if cap is None else min(share, cap))
    return _with_caps(points, np.full(len(curves), share, dtype=np.int64), budget)


def _need(points: CurvePoints) -> NDArray[np.float64]:
    """The budget at which each curve first reaches half of its best accuracy (its predicted threshold)."""
    values = np.where(points.valid, points.values, -np.inf)
    half = values.max(axis=1) / 2
    reached = points.valid & (points.values >= half[:, None]) & (points.values > 0)
    first = np.argmax(reached, axis=1)
    last_valid = points.valid.sum(axis=1) - 1
    column = np.where(reached.any(axis=1), first, last_valid)
    need: NDArray[np.float64] = points.budgets[np.arange(len(points)), column].astype(np.float64)
    return need


def proportional(
    curves: Sequence[AccuracyCurve],
    budget: int,
    *,
    min_tokens: int = 0,
    max_tokens: int | None = None,
    granularity: int = 1,
) -> Allocation:
    """Caps proportional to each query's predicted need (see :func:`_need`), rounded down to ``granularity``."""
    budget, floor, cap, granularity = check_limits(len(curves), budget, min_tokens, max_tokens, granularity)
    points = curve_points(curves, floor=floor, cap=cap, granularity=granularity)
    need = np.maximum(_need(points), 1.0)
    share = need / need.sum() * budget if len(curves) else need
    caps = (np.floor(share / granularity) * granularity).astype(np.int64)
    caps = np.maximum(caps, floor)
    if cap is not None:
        caps = np.minimum(caps, cap)
    while caps.sum() > budget:  # the floor can push the sum over: take back from the largest caps
        caps[int(np.argmax(caps))] -= granularity
    return _with_caps(points, caps, budget)


def greedy_marginal(
    curves: Sequence[AccuracyCurve],
    budget: int,
    *,
    min_tokens: int = 0,
    max_tokens: int | None = None,
    granularity: int = 1,
) -> Allocation:
    """Repeatedly fund the next step (to the next knot) with the best accuracy per token, until none fits."""
    budget, floor, cap, granularity = check_limits(len(curves), budget, min_tokens, max_tokens, granularity)
    points = curve_points(curves, floor=floor, cap=cap, granularity=granularity)
    column = np.zeros(len(points), dtype=np.int64)
    left = budget - floor * len(points)
    width = points.budgets.shape[1]

    def step(i: int) -> tuple[float, int, int, int] | None:
        k = int(column[i]) + 1
        if k >= width or not points.valid[i, k]:
            return None
        cost = int(points.budgets[i, k] - points.budgets[i, k - 1])
        gain = float(points.values[i, k] - points.values[i, k - 1])
        return (-gain / cost, i, k, cost)

    heap = [s for i in range(len(points)) if (s := step(i)) is not None]
    heapq.heapify(heap)
    while heap:
        _, i, k, cost = heapq.heappop(heap)
        if cost > left:
            continue
        left -= cost
        column[i] = k
        if (nxt := step(i)) is not None:
            heapq.heappush(heap, nxt)
    return finish_allocation(points, column, budget, shadow_price=_NO_PRICE)


ALLOCATORS: dict[str, Allocator] = {
    "uniform": uniform,
    "proportional": proportional,
    "greedy_marginal": greedy_marginal,
    "clear": allocate,
}
