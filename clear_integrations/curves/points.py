"""The candidate budgets of many curves as padded ``N x K`` matrices, the allocators' common input.

Row ``i`` holds query ``i``'s starting point in column 0 (the floor ``min_tokens`` and its accuracy), then its
knots snapped up to multiples of ``granularity`` and cut at ``max_tokens`` (plus ``max_tokens`` itself), each
with the curve's accuracy there. ``valid`` masks padding. Curves measured on one grid (a
:class:`~.curve.CurveBatch`, or :class:`~.curve.EmpiricalCurve` objects
sharing their budgets) are read as one matrix without a Python loop over queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidCurve
from .curve import AccuracyCurve, CurveBatch, EmpiricalCurve

__all__ = ["CurvePoints", "curve_points"]


@dataclass(frozen=True, slots=True)
class CurvePoints:
    """Candidate budgets (``budgets``), accuracy there (``values``) and the padding mask (``valid``)."""

    budgets: NDArray[np.int64]
    values: NDArray[np.float64]
    valid: NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.budgets.shape[0])


def _snap(knots: NDArray[np.int64], floor: int, cap: int | None, granularity: int) -> NDArray[np.int64]:
    snapped = -(-knots // granularity) * granularity
    if cap is not None:
        snapped = np.append(snapped[snapped < cap], cap)
    return np.unique(snapped[snapped > floor])


def _shared_grid(curves: Sequence[AccuracyCurve]) -> CurveBatch | None:
    if isinstance(curves, CurveBatch):
        return curves
    if not curves or not all(type(c) is EmpiricalCurve for c in curves):
        return None
    empirical: Sequence[EmpiricalCurve] = curves  # type: ignore[assignment]
    first = empirical[0]
    if all(c.budgets is first.budgets or np.array_equal(c.budgets, first.budgets) for c in empirical) and all(
        c.interpolation == first.interpolation for c in empirical
    ):
        return CurveBatch.from_curves(empirical)
    return None


def curve_points(
    curves: Sequence[AccuracyCurve], *, floor: int = 0, cap: int | None = None, granularity: int = 1
) -> CurvePoints:
    """Build the point matrices for ``curves`` (see the module docstring)."""
    batch = _shared_grid(curves)
    if batch is not None and batch.interpolation == "step":
        grid = _snap(batch.budgets, floor, cap, granularity)
        n = len(batch)
        budgets = np.empty((n, grid.size + 1), dtype=np.int64)
        budgets[:, 0] = floor
        budgets[:, 1:] = grid
        index = np.searchsorted(batch.budgets, budgets[0], side="right") - 1
        values = np.where(index >= 0, batch.matrix[:, np.maximum(index, 0)], 0.0)
        return CurvePoints(budgets, values, np.ones_like(budgets, dtype=np.bool_))
    rows = [_snap(np.asarray(c.knots(), dtype=np.int64), floor, cap, granularity) for c in curves]
    width = 1 + max((r.size for r in rows), default=0)
    budgets = np.full((len(rows), width), floor, dtype=np.int64)
    values = np.zeros((len(rows), width))
    valid = np.zeros((len(rows), width), dtype=np.bool_)
    valid[:, 0] = True
    for i, (curve, row) in enumerate(zip(curves, rows, strict=True)):
        at = np.concatenate(([floor], row))
        acc = np.asarray(curve.accuracy(at), dtype=np.float64)
        if acc.shape != at.shape or not np.all(np.isfinite(acc)) or np.any((acc < 0) | (acc > 1)):
            raise InvalidCurve(f"curves[{i}]", curve, "accuracy() must return values in [0, 1], one per budget")
        budgets[i, : at.size] = at
        values[i, : at.size] = acc
        valid[i, : at.size] = True
    if floor == 0:
        values[:, 0] = 0.0
    return CurvePoints(budgets, values, valid)
