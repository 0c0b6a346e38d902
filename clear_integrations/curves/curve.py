"""Accuracy-at-budget curves: the ``AccuracyCurve`` protocol and curves built from measured points.

A curve says how likely a query is to be answered correctly when its reasoning is cut at ``b`` tokens. The
allocator needs two things from it: the accuracy at any budget (``accuracy``), and the budgets at which the
curve can change (``knots``), where it looks for hull vertices. Parametric families live in
:mod:`clear_integrations.curves.families`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, Protocol, overload, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import InvalidCurve
from .hull import upper_hull

__all__ = ["AccuracyCurve", "CurveBatch", "EmpiricalCurve", "isotonic", "scalar_accuracy"]

Interpolation = Literal["step", "linear"]


@runtime_checkable
class AccuracyCurve(Protocol):
    """Expected accuracy in [0, 1] of one query as a function of its token budget (0 at budget 0)."""

    def accuracy(self, budgets: ArrayLike) -> NDArray[np.float64]:
        """Accuracy at each budget in ``budgets`` (any shape, tokens >= 0)."""
        ...

    def knots(self) -> NDArray[np.int64]:
        """Sorted positive budgets where the curve may bend; past the last one the curve is flat."""
        ...


def scalar_accuracy(curve: AccuracyCurve, budget: float) -> float:
    """``curve.accuracy`` at one budget, as a float."""
    return float(curve.accuracy(np.asarray([budget], dtype=np.float64))[0])


def isotonic(values: ArrayLike, weights: ArrayLike | None = None) -> NDArray[np.float64]:
    """The non-decreasing sequence closest to ``values`` in weighted least squares (pool adjacent violators)."""
    y = np.asarray(values, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    means: list[float] = []
    sizes: list[float] = []
    counts: list[int] = []
    for value, weight in zip(y.tolist(), w.tolist(), strict=True):
        means.append(value)
        sizes.append(weight)
        counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            total = sizes[-2] + sizes[-1]
            means[-2] = (means[-2] * sizes[-2] + means[-1] * sizes[-1]) / total
            sizes[-2] = total
            counts[-2] += counts[-1]
            del means[-1], sizes[-1], counts[-1]
    return np.repeat(np.asarray(means), counts)


def _check_points(budgets: ArrayLike, accuracy: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    raw_b = np.asarray(budgets)
    raw_a = np.asarray(accuracy, dtype=np.float64)
    if raw_b.ndim != 1 or raw_b.size == 0:
        raise InvalidCurve("budgets", budgets, "must be a non-empty 1-d sequence of token budgets")
    if raw_a.shape[-1:] != raw_b.shape:
        raise InvalidCurve("accuracy", accuracy, f"must have the same length as budgets ({raw_b.size})")
    if raw_b.dtype.kind not in "iu":
        as_float = raw_b.astype(np.float64)
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
            raise InvalidCurve("budgets", budgets, "must be finite whole numbers of tokens")
    b = raw_b.astype(np.int64)
    if b[0] < 0:
        raise InvalidCurve("budgets", budgets, "must be non-negative")
    if np.any(np.diff(b) <= 0):
        raise InvalidCurve("budgets", budgets, "must be strictly increasing")
    if not np.all(np.isfinite(raw_a)):
        raise InvalidCurve("accuracy", accuracy, "must be finite (no NaN or inf)")
    if np.any(raw_a < 0) or np.any(raw_a > 1):
        raise InvalidCurve("accuracy", accuracy, "must lie in [0, 1]")
    if b[0] == 0 and np.any(raw_a[..., 0] != 0):
        raise InvalidCurve("accuracy", accuracy, "must be 0 at budget 0 (no tokens, no answer)")
    return b, raw_a


def _frozen_points(
    budgets: ArrayLike, accuracy: ArrayLike, smooth: bool, interpolation: str, *, ndim: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Checked, optionally smoothed, read-only points: one curve (``ndim=1``) or a matrix of curves (2)."""
    if interpolation not in ("step", "linear"):
        raise InvalidCurve("interpolation", interpolation, "must be 'step' or 'linear'")
    b, a = _check_points(budgets, accuracy)
    if a.ndim != ndim:
        shape = "1-d" if ndim == 1 else "a 2-d matrix (queries x budgets)"
        raise InvalidCurve("accuracy", f"array of shape {a.shape}", f"must be {shape}")
    if smooth and a.size:
        a = isotonic(a) if ndim == 1 else np.vstack([isotonic(row) for row in a])
    b.setflags(write=False)
    a.setflags(write=False)
    return b, a


def _lookup(
    grid: NDArray[np.int64],
    values: NDArray[np.float64],
    at: NDArray[np.float64],
    interpolation: Interpolation,
) -> NDArray[np.float64]:
    if interpolation == "linear":
        xs = np.concatenate(([0.0], grid.astype(np.float64)))
        ys = np.concatenate(([0.0], values))
        return np.interp(at, xs, ys)
    index = np.searchsorted(grid, at, side="right") - 1
    return np.where(index >= 0, values[np.maximum(index, 0)], 0.0)


class EmpiricalCurve:
    """A curve from measured points, e.g. the share of correct rollouts cut at 16, 32, ..., 256 tokens.

    ``interpolation="step"`` (default) reads the accuracy at ``b`` as the value at the largest measured
    budget ``<= b`` and 0 below the first: exactly what was measured, never more. ``"linear"`` joins the
    points (and the origin) with straight lines. ``smooth=True`` replaces the values by their isotonic
    (non-decreasing) fit, which removes sampling noise before slopes are taken.
    """

    __slots__ = ("_accuracy", "_budgets", "interpolation")

    def __init__(
        self,
        budgets: ArrayLike,
        accuracy: ArrayLike,
        *,
        smooth: bool = False,
        interpolation: Interpolation = "step",
    ) -> None:
        b, a = _frozen_points(budgets, accuracy, smooth, interpolation, ndim=1)
        self._budgets = b
        self._accuracy = a
        self.interpolation: Interpolation = interpolation

    @property
    def budgets(self) -> NDArray[np.int64]:
        """The measured budgets (read-only)."""
        return self._budgets

    @property
    def values(self) -> NDArray[np.float64]:
        """The accuracy at each measured budget (read-only; smoothed if asked)."""
        return self._accuracy

    def accuracy(self, budgets: ArrayLike) -> NDArray[np.float64]:
        at = np.asarray(budgets, dtype=np.float64)
        return _lookup(self._budgets, self._accuracy, at, self.interpolation)

    def __call__(self, budget: float) -> float:
        return scalar_accuracy(self, budget)

    def knots(self) -> NDArray[np.int64]:
        return self._budgets[self._budgets > 0]

    def hull(self) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Vertices ``(budgets, accuracy)`` of the upper concave hull through the origin, origin included.

        Only rising segments are kept, so the last vertex is where the hull peaks. At a shadow price
        ``lam`` the query buys every hull segment whose slope is at least ``lam``.
        """
        knots = self.knots()
        budgets = np.concatenate(([0], knots))[None, :]
        values = np.concatenate(([0.0], self.accuracy(knots)))[None, :]
        segments = upper_hull(budgets, values, np.ones_like(budgets, dtype=np.bool_))
        vertices = np.concatenate(([0], segments.end)).astype(np.int64)
        return budgets[0, vertices], values[0, vertices]

    def __repr__(self) -> str:
        return (
            f"EmpiricalCurve(budgets={self._budgets.tolist()}, accuracy={self._accuracy.tolist()}, "
            f"interpolation={self.interpolation!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EmpiricalCurve):
            return NotImplemented
        return (
            self.interpolation == other.interpolation
            and np.array_equal(self._budgets, other._budgets)
            and np.array_equal(self._accuracy, other._accuracy)
        )

    __hash__ = None  # type: ignore[assignment]


class CurveBatch(Sequence[EmpiricalCurve]):
    """Many empirical curves measured on one grid, held as one ``N x K`` matrix.

    It is a sequence of :class:`EmpiricalCurve` (items are built on access), and the allocator reads the
    matrix directly, so 100,000 curves cost no Python loop. Validation is the same as for one curve.
    """

    def __init__(
        self,
        budgets: ArrayLike,
        accuracy: ArrayLike,
        *,
        smooth: bool = False,
        interpolation: Interpolation = "step",
    ) -> None:
        b, a = _frozen_points(budgets, accuracy, smooth, interpolation, ndim=2)
        self.budgets = b
        self.matrix = a
        self.interpolation: Interpolation = interpolation

    @classmethod
    def from_curves(cls, curves: Sequence[EmpiricalCurve]) -> CurveBatch:
        """Stack curves that share one grid and one interpolation."""
        if not curves:
            raise InvalidCurve("curves", curves, "must not be empty")
        first = curves[0]
        for i, curve in enumerate(curves):
            if not np.array_equal(curve.budgets, first.budgets) or curve.interpolation != first.interpolation:
                raise InvalidCurve(f"curves[{i}]", curve, "does not share the first curve's grid")
        matrix = np.vstack([curve.values for curve in curves])
        return cls(first.budgets, matrix, interpolation=first.interpolation)

    @overload
    def __getitem__(self, index: int) -> EmpiricalCurve: ...
    @overload
    def __getitem__(self, index: slice) -> CurveBatch: ...
    def __getitem__(self, index: int | slice) -> EmpiricalCurve | CurveBatch:
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        return EmpiricalCurve(self.budgets, self.matrix[index], interpolation=self.interpolation)

    def take(self, indices: ArrayLike) -> CurveBatch:
        """The curves at ``indices``, as a batch."""
        return CurveBatch(
            self.budgets, self.matrix[np.asarray(indices, dtype=np.int64)], interpolation=self.interpolation
        )

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def __iter__(self) -> Iterator[EmpiricalCurve]:
        for i in range(len(self)):
            yield self[i]

    def accuracy_at(self, budgets: ArrayLike) -> NDArray[np.float64]:
        """Each query's accuracy at its own budget: ``budgets`` has one entry per query."""
        at = np.asarray(budgets, dtype=np.float64)
        if at.shape != (len(self),):
            raise InvalidCurve("budgets", f"array of shape {at.shape}", f"must have one entry per curve ({len(self)})")
        rows = np.arange(len(self))
        if self.interpolation == "linear":
            xs = np.concatenate(([0.0], self.budgets))
            ys = np.hstack([np.zeros((len(self), 1)), self.matrix])
            left = np.clip(np.searchsorted(xs, at, side="right") - 1, 0, xs.size - 2)
            share = np.clip((at - xs[left]) / (xs[left + 1] - xs[left]), 0.0, 1.0)
            result: NDArray[np.float64] = ys[rows, left] + (ys[rows, left + 1] - ys[rows, left]) * share
            return result
        index = np.searchsorted(self.budgets, at, side="right") - 1
        picked = self.matrix[rows, np.maximum(index, 0)]
        return np.where(index >= 0, picked, 0.0)

    def __repr__(self) -> str:
        return f"CurveBatch({len(self)} curves on budgets {self.budgets.tolist()})"
