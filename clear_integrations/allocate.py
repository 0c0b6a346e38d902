"""CLEAR's batch allocation: buy concave-hull segments in order of slope until the budget is spent.

Maximise ``sum_i A_i(b_i)`` subject to ``sum_i b_i <= B``. Replace each curve by its upper concave hull through
its starting point; at a token price ``lam`` query ``i`` buys every hull segment whose slope (accuracy per
token) is at least ``lam``. Sorting all segments by slope and buying them greedily solves the relaxed problem
exactly, in ``O(S log S)`` for ``S`` segments; only one segment can end up bought in part. The integer answer
buys whole segments only, then gives what is left of the budget where it adds the most accuracy. Queries that
buy nothing are *rationally abandoned*: no budget they could get pays for its tokens at the price.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .curves.curve import AccuracyCurve
from .curves.hull import upper_hull
from .curves.points import CurvePoints, curve_points
from .errors import InvalidBudget
from .validation import check_tokens

__all__ = ["Allocation", "allocate", "check_limits", "finish_allocation"]


@dataclass(frozen=True, slots=True, eq=False)
class Allocation:
    """The result of an allocator.

    - ``budgets``: integer tokens per query (0 = no call is made).
    - ``shadow_price``: lambda*, the accuracy one more token buys at the optimum: the slope of the last hull
      segment bought in full (0 when the budget does not bind). Every funded query's last segment is worth at
      least this much per token. Baselines that set no price report ``nan``.
    - ``abandoned``: per query, whether it received nothing above ``min_tokens``.
    - ``expected_accuracy``: mean accuracy of the queries at their budgets, on the curves given.
    - ``spent``: ``budgets.sum()``, never more than ``budget``.
    - ``upper_bound``: mean accuracy of the Lagrangian relaxation (fractional segments allowed); no allocation
      of ``budget`` on these curves can do better. ``nan`` for baselines.
    """

    budgets: NDArray[np.int64]
    shadow_price: float
    abandoned: NDArray[np.bool_]
    expected_accuracy: float
    spent: int
    budget: int
    upper_bound: float = float("nan")

    def __len__(self) -> int:
        return int(self.budgets.size)


def check_limits(
    n_queries: int, budget: int, min_tokens: int, max_tokens: int | None, granularity: int
) -> tuple[int, int, int | None, int]:
    """Validate the allocators' shared arguments; return ``(budget, floor, cap, granularity)``.

    ``floor`` is ``min_tokens`` rounded up and ``cap`` is ``max_tokens`` rounded down to ``granularity``.
    """
    budget = check_tokens("budget", budget)
    min_tokens = check_tokens("min_tokens", min_tokens)
    granularity = check_tokens("granularity", granularity, minimum=1)
    floor = -(-min_tokens // granularity) * granularity
    cap = None
    if max_tokens is not None:
        cap = check_tokens("max_tokens", max_tokens) // granularity * granularity
        if cap < floor:
            raise InvalidBudget("max_tokens", max_tokens, f"must be >= min_tokens ({min_tokens}) after rounding")
    if floor * n_queries > budget:
        raise InvalidBudget(
            "min_tokens", min_tokens, f"{n_queries} queries x {floor} tokens exceed the budget of {budget}"
        )
    return budget, floor, cap, granularity


def finish_allocation(
    points: CurvePoints,
    column: NDArray[np.int64],
    budget: int,
    *,
    shadow_price: float,
    upper_bound: float = float("nan"),
) -> Allocation:
    """Package the chosen point (``column``) of every row as an :class:`Allocation`."""
    rows = np.arange(len(points))
    budgets = points.budgets[rows, column].astype(np.int64)
    values = points.values[rows, column]
    n = max(len(points), 1)
    budgets.setflags(write=False)
    abandoned = column == 0
    abandoned.setflags(write=False)
    return Allocation(
        budgets=budgets,
        shadow_price=shadow_price,
        abandoned=abandoned,
        expected_accuracy=float(values.sum() / n),
        spent=int(budgets.sum()),
        budget=budget,
        upper_bound=upper_bound,
    )


def _spend_leftover(points: CurvePoints, column: NDArray[np.int64], leftover: int) -> None:
    """Give ``leftover`` tokens, one move at a time, to the point that adds the most accuracy and fits."""
    rows = np.arange(len(points))
    while leftover > 0 and len(points):
        base_b = points.budgets[rows, column]
        extra = points.budgets - base_b[:, None]
        fits = points.valid & (extra > 0) & (extra <= leftover)
        gain = np.where(fits, points.values - points.values[rows, column][:, None], -np.inf)
        best = int(np.argmax(gain))
        i, k = divmod(best, gain.shape[1])
        if not gain[i, k] > 0:
            return
        leftover -= int(extra[i, k])
        column[i] = k


def allocate(
    curves: Sequence[AccuracyCurve],
    budget: int,
    *,
    min_tokens: int = 0,
    max_tokens: int | None = None,
    granularity: int = 1,
) -> Allocation:
    """Share ``budget`` tokens among queries so that the expected number of correct answers is largest.

    ``curves`` are the queries' accuracy-at-budget curves (predicted, or measured for an oracle).
    ``min_tokens`` is a floor given to every query first (a minimum service level); ``max_tokens`` caps any
    single query; budgets are multiples of ``granularity``. Raises :class:`InvalidBudget` on bad arguments.
    """
    budget, floor, cap, granularity = check_limits(len(curves), budget, min_tokens, max_tokens, granularity)
    points = curve_points(curves, floor=floor, cap=cap, granularity=granularity)
    column = np.zeros(len(points), dtype=np.int64)
    available = budget - floor * len(points)
    segments = upper_hull(points.budgets, points.values, points.valid)
    order = np.argsort(-segments.slope, kind="stable")
    spent = np.cumsum(segments.length[order])
    n_bought = int(np.searchsorted(spent, available, side="right"))
    bought = order[:n_bought]
    # Segments of one query come in walking order (their slopes fall), so the last bought one is its vertex.
    column[segments.row[bought]] = segments.end[bought]
    relaxed = float(segments.gain[bought].sum() + points.values[:, 0].sum())
    if n_bought < order.size:
        marginal = order[n_bought]
        fraction = (available - (int(spent[n_bought - 1]) if n_bought else 0)) / int(segments.length[marginal])
        relaxed += fraction * float(segments.gain[marginal])
        shadow_price = float(segments.slope[order[n_bought - 1] if n_bought else marginal])
    else:
        shadow_price = 0.0
    leftover = available - (int(spent[n_bought - 1]) if n_bought else 0)
    _spend_leftover(points, column, leftover)
    return finish_allocation(
        points, column, budget, shadow_price=shadow_price, upper_bound=relaxed / max(len(points), 1)
    )
