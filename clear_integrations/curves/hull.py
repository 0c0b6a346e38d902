"""Upper concave hulls of many curves at once, vectorised over queries.

A curve is given as points ``(budgets[i, k], values[i, k])`` for query ``i``; column 0 is the starting point
(``b = 0, A = 0`` unless a floor is set) and ``valid[i, k]`` masks padding. Walking from the start, the next
hull vertex is the point with the steepest slope from the current one (the farthest among ties, so that
collinear points merge into one segment). Every query needs at most ``K - 1`` steps, each an ``N x K`` array
operation, so ``N`` queries of ``K`` points cost ``O(N K^2)`` numpy work and no Python loop over queries.
Only segments with a strictly positive slope are kept: tokens that buy nothing are never bought.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["HullSegments", "upper_hull"]

_REL_TIE = 1e-12


@dataclass(frozen=True, slots=True)
class HullSegments:
    """The hull segments of all queries, in walking order within each query.

    ``row`` is the query index; ``start``/``end`` the column indices of the segment's end points in the
    point matrices; ``length`` its tokens; ``gain`` the accuracy it adds; ``slope = gain / length``.
    """

    row: NDArray[np.int64]
    start: NDArray[np.int64]
    end: NDArray[np.int64]
    length: NDArray[np.int64]
    gain: NDArray[np.float64]
    slope: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.row.size)


def upper_hull(budgets: NDArray[np.int64], values: NDArray[np.float64], valid: NDArray[np.bool_]) -> HullSegments:
    """Hull segments of every row of the ``N x K`` point matrices (column 0 is the starting point)."""
    n_rows, n_cols = budgets.shape
    columns = np.arange(n_cols)
    current = np.zeros(n_rows, dtype=np.int64)
    active = np.arange(n_rows)
    parts: list[tuple[NDArray[np.int64], ...]] = []
    while active.size:
        cur = current[active]
        b0 = budgets[active, cur]
        a0 = values[active, cur]
        db = budgets[active] - b0[:, None]
        da = values[active] - a0[:, None]
        ahead = valid[active] & (columns[None, :] > cur[:, None]) & (db > 0)
        slope = np.where(ahead, da / np.where(db > 0, db, 1), -np.inf)
        best = slope.max(axis=1)
        rising = best > 0
        if not rising.any():
            break
        active, slope, best, ahead, cur = (
            active[rising],
            slope[rising],
            best[rising],
            ahead[rising],
            cur[rising],
        )
        ties = ahead & (slope >= (best - np.abs(best) * _REL_TIE)[:, None])
        nxt = (n_cols - 1) - np.argmax(ties[:, ::-1], axis=1)
        parts.append((active, cur, nxt))
        current[active] = nxt
    if not parts:
        empty_i = np.zeros(0, dtype=np.int64)
        return HullSegments(empty_i, empty_i, empty_i, empty_i, np.zeros(0), np.zeros(0))
    row = np.concatenate([p[0] for p in parts])
    start = np.concatenate([p[1] for p in parts])
    end = np.concatenate([p[2] for p in parts])
    length = (budgets[row, end] - budgets[row, start]).astype(np.int64)
    gain = values[row, end] - values[row, start]
    return HullSegments(row, start, end, length, gain, gain / length)
