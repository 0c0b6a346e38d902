"""Least-squares fits of the parametric families to many measured curves on one grid.

Model (both families, see :mod:`clear_integrations.curves.families`): query ``i`` measured at budgets ``b_k > 0``::

    y_ik ~ floor + (c_i - floor) * F(b_k - loc_i; rate)

with one location ``loc_i`` per query (``tau`` of a :class:`ShiftedSurge`, ``midpoint`` of a
:class:`Logistic`), a shared ``rate`` (``steepness``) and ``floor``, and a shared ceiling ``c_i = ceiling``
(or one per query with ``per_query_ceiling=True``). The fit minimises the sum of squared residuals by block
coordinate descent, alternating two steps, each a search over its whole block:

1. locations for a fixed shape: every query tries every candidate location on a grid (``step`` tokens, from
   0 to the last budget, or 1.5x it for the logistic) at once, through one ``(N x K) @ (K x T)`` product;
2. shape for fixed locations: ``floor`` and ``ceiling`` enter linearly (a 2-variable least squares under
   ``0 <= floor <= ceiling <= 1``), so only the rate is searched: a log grid, then golden section.

Each location is refined below the grid step by a parabola through the neighbouring errors. Coordinate
descent creeps where rate and locations trade off, so each round also tries a longer step along the last
move (doubled while it pays) and keeps the best shape seen. The fit is deterministic and vectorised over
queries: 7,450 curves x 16 budgets take 1 to 2 s of one core (about 3.5 s with per-query ceilings).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from operator import itemgetter
from typing import Any, ClassVar, Generic, Self, TypeVar, overload

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidCurve
from .curve import CurveBatch, EmpiricalCurve
from .families import Logistic, ShiftedSurge, logistic_cdf, surge_cdf

__all__ = ["LogisticFit", "SurgeFit", "fit_logistic", "fit_shifted_surge", "fit_tau"]

Curves = CurveBatch | Sequence[EmpiricalCurve]
Cdf = Callable[[NDArray[np.float64], float], NDArray[np.float64]]
Array = NDArray[np.float64]
_CHUNK = 2048
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_FIRST = itemgetter(0)


@dataclass(frozen=True)
class _Shape:
    rate: float
    floor: float
    ceiling: float


def _data(curves: Curves) -> tuple[Array, Array]:
    batch = curves if isinstance(curves, CurveBatch) else CurveBatch.from_curves(list(curves))
    if len(batch) == 0:
        raise InvalidCurve("curves", curves, "must not be empty")
    keep = batch.budgets > 0  # A(0) = 0 for every model: a zero budget carries no information
    if np.count_nonzero(keep) < 2:
        raise InvalidCurve("curves", batch, "need at least two positive budgets to fit a shape")
    return batch.budgets[keep].astype(np.float64), np.asarray(batch.matrix[:, keep], dtype=np.float64)


def _loc_search(y: Array, budgets: Array, cdf: Cdf, grid: Array, shape: _Shape, per_query: bool) -> tuple[Array, Array]:
    """The best grid location of every query (refined by a parabola) and its ceiling, for a fixed shape."""
    g = cdf(budgets[None, :] - grid[:, None], shape.rate)  # T x K
    g1, g2 = g.sum(axis=1), (g * g).sum(axis=1)
    ug, uu = g1 - g2, budgets.size - 2.0 * g1 + g2
    f, tilt = shape.floor, grid / max(float(grid[-1]), 1.0)
    locs, ceilings = np.empty(len(y)), np.empty(len(y))
    for start in range(0, len(y), _CHUNK):
        rows = y[start : start + _CHUNK]
        yg = rows @ g.T  # N x T
        if per_query:
            c = np.clip((yg - f * ug) / np.maximum(g2, 1e-12), f, 1.0)
            c = np.where(g2 > 1e-12, c, f)
            yu = rows.sum(axis=1)[:, None] - yg
            sse = -2.0 * f * yu - 2.0 * c * yg + f * f * uu + 2.0 * f * c * ug + c * c * g2
        else:  # the same error up to a per-query constant, with one N x T operation
            c = np.broadcast_to(np.float64(shape.ceiling), yg.shape)
            ce = shape.ceiling
            sse = 2.0 * (f - ce) * yg + (f * f * uu + 2.0 * f * ce * ug + ce * ce * g2)
        sse = sse - 1e-9 * tilt  # among equal fits (a flat curve), the latest location: "not on this grid"
        best = np.argmin(sse, axis=1)
        index = np.arange(len(rows))
        inner = np.clip(best, 1, grid.size - 2) if grid.size >= 3 else best
        left, mid, right = (sse[index, np.clip(inner + d, 0, grid.size - 1)] for d in (-1, 0, 1))
        curvature = left - 2.0 * mid + right
        safe = np.where(curvature > 0, curvature, 1.0)
        offset = np.where((curvature > 0) & (inner == best), 0.5 * (left - right) / safe, 0.0)
        step = grid[1] - grid[0] if grid.size > 1 else 0.0
        locs[start : start + _CHUNK] = grid[best] + np.clip(offset, -0.5, 0.5) * step
        ceilings[start : start + _CHUNK] = c[index, best]
    return np.clip(locs, grid[0], grid[-1]), ceilings


def _linear_shape(y: Array, g: Array) -> tuple[float, float, float]:
    """``(sse, floor, ceiling)`` minimising ``sum (y - floor (1 - g) - ceiling g)^2`` over the triangle
    ``0 <= floor <= ceiling <= 1``: the unconstrained solution if inside, else the best point of an edge."""
    u = 1.0 - g
    a, b, c = float(np.sum(u * u)), float(np.sum(u * g)), float(np.sum(g * g))
    d, e = float(np.sum(u * y)), float(np.sum(g * y))
    candidates = [(0.0, min(max(e / c, 0.0), 1.0) if c > 0 else 0.0)]
    candidates.append((min(max((d - b) / a, 0.0), 1.0) if a > 0 else 0.0, 1.0))
    level = min(max((d + e) / (a + 2 * b + c), 0.0), 1.0)
    candidates.append((level, level))
    det = a * c - b * b
    if det > 1e-12 * max(a * c, 1e-300):
        candidates.append(((d * c - b * e) / det, (a * e - b * d) / det))
    best = (math.inf, 0.0, 0.0)
    for fl, ce in candidates:
        if 0.0 <= fl <= ce <= 1.0:
            sse = a * fl * fl + 2 * b * fl * ce + c * ce * ce - 2 * d * fl - 2 * e * ce
            best = min(best, (sse, fl, ce))
    return best[0] + float(np.sum(y * y)), best[1], best[2]


def _per_query_shape(y: Array, g: Array, floor: float) -> tuple[float, float, Array]:
    """Shared floor, one ceiling per query: a few exact alternations between the two blocks."""
    u = 1.0 - g
    gg = (g * g).sum(axis=1)
    ceilings = np.full(len(y), floor)
    for _ in range(4):
        ceilings = np.clip(((y - floor * u) * g).sum(axis=1) / np.maximum(gg, 1e-12), floor, 1.0)
        ceilings = np.where(gg > 1e-12, ceilings, floor)
        rest = y - ceilings[:, None] * g
        floor = float(np.clip(np.sum(u * rest) / max(float(np.sum(u * u)), 1e-12), 0.0, ceilings.min()))
    sse = float(np.sum((y - floor * u - ceilings[:, None] * g) ** 2))
    return sse, floor, ceilings


def _shape_search(
    y: Array,
    budgets: Array,
    cdf: Cdf,
    locs: Array,
    bounds: tuple[float, float],
    current: _Shape,
    per_query: bool,
) -> tuple[float, _Shape]:
    """The best ``(rate, floor, ceiling)`` for fixed locations: log grid on the rate, then golden section."""
    x = budgets[None, :] - locs[:, None]
    cache: dict[float, tuple[float, _Shape]] = {}

    def evaluate(log_rate: float) -> float:
        rate = math.exp(log_rate)
        g = cdf(x, rate)
        if per_query:
            sse, fl, ce = _per_query_shape(y, g, current.floor)
            cache[log_rate] = (sse, _Shape(rate, fl, float(np.median(ce))))
        else:
            sse, fl, c = _linear_shape(y, g)
            cache[log_rate] = (sse, _Shape(rate, fl, c))
        return cache[log_rate][0]

    here = math.log(current.rate)
    evaluate(here)  # the current rate stays a candidate, so the error never rises
    grid = np.linspace(max(math.log(bounds[0]), here - 1.0), min(math.log(bounds[1]), here + 1.0), 13)
    k = int(np.argmin([evaluate(float(v)) for v in grid]))
    a, b = float(grid[max(k - 1, 0)]), float(grid[min(k + 1, grid.size - 1)])
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = evaluate(c), evaluate(d)
    while b - a > 1e-4:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = evaluate(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = evaluate(d)
    return min(cache.values(), key=_FIRST)


def _extrapolate(old: _Shape, new: _Shape, omega: float) -> _Shape:
    rate = new.rate * (new.rate / old.rate) ** omega
    floor = min(max(new.floor + omega * (new.floor - old.floor), 0.0), 1.0)
    ceiling = min(max(new.ceiling + omega * (new.ceiling - old.ceiling), floor), 1.0)
    return _Shape(rate, floor, ceiling)


def _grid(budgets: Array, reach: float, step: float) -> Array:
    if isinstance(step, bool) or not isinstance(step, int | float) or not (math.isfinite(step) and step > 0):
        raise InvalidCurve("step", step, "must be a positive number of tokens")
    return np.arange(0.0, reach * budgets[-1] + step / 2, step)


def _fit(kind: type[F], curves: Curves, per_query: bool, step: float, max_iter: int) -> F:
    cdf, reach = (surge_cdf, 1.0) if kind is SurgeFit else (logistic_cdf, 1.5)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise InvalidCurve("max_iter", max_iter, "must be a positive integer")
    budgets, y = _data(curves)
    grid = _grid(budgets, reach, step)
    spacing = float(np.min(np.diff(np.concatenate(([0.0], budgets)))))
    bounds = (0.05 / budgets[-1], 20.0 / spacing)
    level = float(np.clip(np.quantile(y[:, -1], 0.9), 0.05, 1.0))

    def descend(start: _Shape) -> tuple[float, _Shape]:  # one exact step on each block
        locs, _ = _loc_search(y, budgets, cdf, grid, start, per_query)
        return _shape_search(y, budgets, cdf, locs, bounds, start, per_query)

    # Start from the best of a coarse grid of rates.
    sse, shape = min((descend(_Shape(float(r), 0.0, level)) for r in np.geomspace(*bounds, 9)), key=_FIRST)
    iterations, omega = 0, 1.0
    while iterations < max_iter:
        iterations += 1
        new = descend(shape)
        # Coordinate descent creeps along the valley where rate and locations trade off: also try a longer
        # step in the same direction, doubling it while it pays.
        jump = descend(_extrapolate(shape, new[1], omega))
        new, omega = (jump, 2.0 * omega) if jump[0] < new[0] else (new, 1.0)
        done = sse - new[0] <= 1e-8 * sse
        sse, shape = min((sse, shape), new, key=_FIRST)
        if done:
            break
    locs, ceilings = _loc_search(y, budgets, cdf, grid, shape, per_query)
    if per_query:
        g = cdf(budgets[None, :] - locs[:, None], shape.rate)
        _, floor, ceilings = _per_query_shape(y, g, shape.floor)
        seen = locs < grid[-1] - step  # queries whose rise shows on the grid
        shape = _Shape(shape.rate, floor, float(np.median(ceilings[seen] if seen.any() else ceilings)))
    kept = ceilings if per_query else None
    top = np.full(locs.size, shape.ceiling) if kept is None else kept
    fitted = shape.floor + (top[:, None] - shape.floor) * cdf(budgets[None, :] - locs[:, None], shape.rate)
    rmse = float(np.sqrt(np.mean((y - fitted) ** 2)))
    grid_budgets = tuple(int(b) for b in budgets)
    return kind(shape.ceiling, shape.rate, shape.floor, locs, kept, rmse, grid_budgets, iterations)


C = TypeVar("C", ShiftedSurge, Logistic)
F = TypeVar("F", "SurgeFit", "LogisticFit")


class _FitMethods(Generic[C]):
    """Behaviour shared by :class:`SurgeFit` and :class:`LogisticFit` (both frozen dataclasses)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    _locations: ClassVar[str]
    ceiling: float
    floor: float
    ceilings: Array | None
    budgets: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in (self._locations, "ceilings"):
            if getattr(self, name) is not None:
                values = np.array(getattr(self, name), dtype=np.float64)
                values.setflags(write=False)
                object.__setattr__(self, name, values)
        object.__setattr__(self, "budgets", tuple(int(b) for b in self.budgets))

    def __len__(self) -> int:
        return int(getattr(self, self._locations).size)

    def _ceiling(self, i: int) -> float:
        return self.ceiling if self.ceilings is None else float(self.ceilings[i])

    def curve(self, i: int, *, horizon: int | None = None, resolution: int = 8) -> C:
        """Query ``i``'s fitted curve."""
        raise NotImplementedError

    def curves(self, *, resolution: int = 8) -> list[C]:
        """Every query's fitted curve, in input order."""
        return [self.curve(i, resolution=resolution) for i in range(len(self))]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: arrays and tuples become lists."""
        out: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.tolist() if isinstance(value, np.ndarray) else value
        out["budgets"] = list(out["budgets"])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The inverse of :meth:`to_dict`."""
        return cls(**{field.name: data.get(field.name) for field in fields(cls)})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _FitMethods) or type(other) is not type(self):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class SurgeFit(_FitMethods[ShiftedSurge]):
    """A :class:`ShiftedSurge` fit: the shared shape, one ``tau`` per query, and the fit's error.

    ``ceilings`` holds one ceiling per query when the fit was asked for them (``ceiling`` is then their
    median over the queries that rise on the grid), else None. ``rmse`` is the root mean squared residual
    over all fitted points (budget 0 aside); ``budgets`` the grid fitted on; ``iterations`` the descent
    steps taken.
    """

    _locations: ClassVar[str] = "taus"
    ceiling: float
    rate: float
    floor: float
    taus: Array
    ceilings: Array | None
    rmse: float
    budgets: tuple[int, ...]
    iterations: int

    def curve(self, i: int, *, horizon: int | None = None, resolution: int = 8) -> ShiftedSurge:
        return ShiftedSurge(
            float(self.taus[i]),
            ceiling=self._ceiling(i),
            rate=self.rate,
            floor=self.floor,
            horizon=horizon,
            resolution=resolution,
        )


@dataclass(frozen=True, eq=False)
class LogisticFit(_FitMethods[Logistic]):
    """A :class:`Logistic` fit: the shared shape, one ``midpoint`` per query, and the fit's error.

    Fields as in :class:`SurgeFit`, with ``steepness`` for the rate and ``midpoints`` for the locations.
    """

    _locations: ClassVar[str] = "midpoints"
    ceiling: float
    steepness: float
    floor: float
    midpoints: Array
    ceilings: Array | None
    rmse: float
    budgets: tuple[int, ...]
    iterations: int

    def curve(self, i: int, *, horizon: int | None = None, resolution: int = 8) -> Logistic:
        return Logistic(
            float(self.midpoints[i]),
            steepness=self.steepness,
            ceiling=self._ceiling(i),
            floor=self.floor,
            horizon=horizon,
            resolution=resolution,
        )


def fit_shifted_surge(
    curves: Curves, *, per_query_ceiling: bool = False, step: float = 1.0, max_iter: int = 100
) -> SurgeFit:
    """Fit :class:`ShiftedSurge` curves: shared ``(ceiling, rate, floor)``, one ``tau`` per query.

    ``curves`` is a :class:`CurveBatch` or a sequence of :class:`EmpiricalCurve` on one grid. Taus are
    searched every ``step`` tokens from 0 to the last budget (then refined below the step); a query that
    never surges on the grid gets the last budget (its threshold is only known to lie past it).
    """
    return _fit(SurgeFit, curves, per_query_ceiling, step, max_iter)


def fit_logistic(
    curves: Curves, *, per_query_ceiling: bool = False, step: float = 1.0, max_iter: int = 100
) -> LogisticFit:
    """Fit :class:`Logistic` curves: shared ``(ceiling, steepness, floor)``, one ``midpoint`` per query.

    As :func:`fit_shifted_surge`; midpoints are searched from 0 to 1.5 times the last budget.
    """
    return _fit(LogisticFit, curves, per_query_ceiling, step, max_iter)


Shape = SurgeFit | LogisticFit | ShiftedSurge | Logistic


@overload
def fit_tau(curves: EmpiricalCurve, shape: Shape, *, step: float = ..., per_query_ceiling: bool = ...) -> float: ...
@overload
def fit_tau(curves: Curves, shape: Shape, *, step: float = ..., per_query_ceiling: bool = ...) -> Array: ...
def fit_tau(
    curves: EmpiricalCurve | Curves, shape: Shape, *, step: float = 1.0, per_query_ceiling: bool = False
) -> float | Array:
    """The least-squares location of each measured curve under a known shape (its paper-style label).

    ``shape`` is a fit, or a curve whose own location is ignored; the result is a ``tau`` for a surge shape
    and a ``midpoint`` for a logistic one, searched as in the fit, with the shape's shared ceiling (or, with
    ``per_query_ceiling=True``, each curve's own best ceiling). One curve gives a float, several an array.
    """
    cdf: Cdf
    if isinstance(shape, SurgeFit | ShiftedSurge):
        rate, cdf, reach = shape.rate, surge_cdf, 1.0
    else:
        rate, cdf, reach = shape.steepness, logistic_cdf, 1.5
    budgets, y = _data([curves] if isinstance(curves, EmpiricalCurve) else curves)
    known = _Shape(rate, shape.floor, shape.ceiling)
    locs, _ = _loc_search(y, budgets, cdf, _grid(budgets, reach, step), known, per_query_ceiling)
    return float(locs[0]) if isinstance(curves, EmpiricalCurve) else locs
