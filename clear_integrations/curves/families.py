"""Parametric accuracy-at-budget curves: the paper's shifted surge, and a logistic S-curve.

Both families have one *location* per query (the threshold ``tau`` of the surge, the ``midpoint`` of the
logistic) and a *shape* shared by all queries of one model (``ceiling``, ``floor`` and a rate). Both are
``0`` at ``b = 0`` (no tokens, no answer) and, for ``b > 0``::

    A(b) = floor + (ceiling - floor) * F(b)

where ``F`` rises from 0 to 1: ``floor`` is the accuracy of a very short answer (a guess), ``ceiling`` the
plateau reached with ample tokens. Each curve satisfies :class:`~clear_integrations.curves.curve.AccuracyCurve`;
its :meth:`knots` are every ``resolution`` tokens up to ``horizon``, the budget from which the curve stays
within ``1e-3`` of its ceiling. :meth:`best_budget` maximises the surplus ``A(b) - price * b`` in closed form.
Fit shapes and locations to measured curves with :mod:`clear_integrations.curves.fitting`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import InvalidBudget, InvalidCurve
from ..validation import check_probability, check_rate, check_tokens
from .lambertw import lambertwm1

__all__ = ["SATURATION_GAP", "Logistic", "ShiftedSurge", "curve_from_dict", "logistic_cdf", "surge_cdf"]

SATURATION_GAP = 1e-3
"""The default ``horizon`` is the budget from which ``ceiling - A(b) <= SATURATION_GAP``."""

_MAX_KNOTS = 65_536


def surge_cdf(x: ArrayLike, rate: float) -> NDArray[np.float64]:
    """``F(x) = 1 - (1 + rate x) e^{-rate x}`` for ``x > 0``, 0 for ``x <= 0``: the gamma(2, rate) CDF."""
    rx = np.minimum(rate * np.maximum(np.asarray(x, dtype=np.float64), 0.0), 1e300)  # no inf * 0
    return 1.0 - (1.0 + rx) * np.exp(-rx)


def logistic_cdf(x: ArrayLike, steepness: float) -> NDArray[np.float64]:
    """``F(x) = 1 / (1 + e^{-steepness x})`` (computed without overflow)."""
    z = steepness * np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _check_budgets(budgets: ArrayLike) -> NDArray[np.float64]:
    b = np.asarray(budgets, dtype=np.float64)
    bad = np.isnan(b) | (b < 0)
    if np.any(bad):
        raise InvalidBudget("budgets", b[bad].flat[0], "must be non-negative token budgets (no NaN)")
    return b


class _SCurve:
    """What both families share: ``A(b) = floor + (ceiling - floor) * F(b)`` for ``b > 0``, 0 at 0."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]
    family: ClassVar[str]
    ceiling: float
    floor: float
    horizon: int
    resolution: int

    def _cdf(self, b: NDArray[np.float64]) -> NDArray[np.float64]:
        raise NotImplementedError

    def _density(self, b: NDArray[np.float64]) -> NDArray[np.float64]:
        raise NotImplementedError

    def _falling_root(self, price: float) -> float | None:
        """The budget past the steepest point where the marginal accuracy equals ``price``, if any."""
        raise NotImplementedError

    def _check_shape(self, *, ceiling: float, floor: float, resolution: int) -> None:
        ceiling = check_probability("ceiling", ceiling, error=InvalidCurve)
        floor = check_probability("floor", floor, error=InvalidCurve)
        if floor > ceiling:
            raise InvalidCurve("floor", floor, f"must not exceed ceiling ({ceiling})")
        object.__setattr__(self, "ceiling", ceiling)
        object.__setattr__(self, "floor", floor)
        resolution = check_tokens("resolution", resolution, minimum=1, error=InvalidCurve)
        object.__setattr__(self, "resolution", resolution)

    def _set_horizon(self, horizon: int | None, saturates_at: float) -> None:
        if horizon is None:
            horizon = max(self.resolution, math.ceil(min(saturates_at, 2.0**62)))
        else:
            horizon = check_tokens("horizon", horizon, minimum=1, error=InvalidCurve)
        if horizon / self.resolution > _MAX_KNOTS:
            raise InvalidCurve(
                "horizon",
                horizon,
                f"needs more than {_MAX_KNOTS} knots at resolution {self.resolution}: "
                "pass a coarser resolution or a smaller horizon",
            )
        object.__setattr__(self, "horizon", horizon)

    def accuracy(self, budgets: ArrayLike) -> NDArray[np.float64]:
        """``A(b)`` at each budget (any shape): 0 at ``b = 0``, ``floor + (ceiling - floor) F(b)`` above."""
        b = _check_budgets(budgets)
        value = self.floor + (self.ceiling - self.floor) * self._cdf(b)
        return np.where(b > 0, value, 0.0)

    def __call__(self, budget: float) -> float:
        return float(self.accuracy(np.asarray([budget], dtype=np.float64))[0])

    def marginal(self, budgets: ArrayLike) -> NDArray[np.float64]:
        """The derivative ``A'(b)`` for ``b > 0`` (at ``b = 0`` its right limit, jump aside)."""
        b = _check_budgets(budgets)
        return (self.ceiling - self.floor) * self._density(b)

    def knots(self) -> NDArray[np.int64]:
        """Every ``resolution`` tokens up to ``horizon`` (included); then ``A`` is within 1e-3 of ceiling."""
        grid = np.arange(self.resolution, self.horizon, self.resolution, dtype=np.int64)
        return np.append(grid, np.int64(self.horizon))

    def best_budget(self, price: float) -> int:
        """The whole number of tokens ``b >= 0`` that maximises the surplus ``A(b) - price * b``.

        Past the curve's steepest point the surplus is concave, so the interior optimum is where the marginal
        accuracy falls back to ``price`` (closed form, see the class docstring); the only other candidate is
        one token (``A = floor`` there, or close to it). 0 means *rational abandonment*: no budget has a
        positive surplus. At ``price = 0`` the answer is ``horizon`` (the accuracy is then within 1e-3 of
        its ceiling and keeps creeping up forever).
        """
        price = check_rate("price", price)
        if price == 0:
            candidates = [self.horizon]
        else:
            candidates = [1]
            root = self._falling_root(price) if self.ceiling > self.floor else None
            if root is not None:
                root = min(root, 2.0**53)
                candidates += [max(1, math.floor(root)), max(1, math.ceil(root))]
        budgets = np.asarray(sorted(set(candidates)), dtype=np.float64)
        surplus = self.accuracy(budgets) - price * budgets
        best = int(np.argmax(surplus))
        return int(budgets[best]) if surplus[best] > 0 else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly parameters, with ``family`` naming the class (see :func:`curve_from_dict`)."""
        return {"family": self.family, **asdict(self)}


@dataclass(frozen=True, slots=True, init=False)
class ShiftedSurge(_SCurve):
    """The paper's *shifted surge*, as an S-curve: nothing before the threshold ``tau``, then a surge.

    With ``x = max(b - tau, 0)``, ``A(0) = 0`` and for ``b > 0``::

        A(b)  = floor + (ceiling - floor) * (1 - (1 + rate x) e^{-rate x})
        A'(b) = (ceiling - floor) * rate^2 * x * e^{-rate x}               (the surge density)

    The accuracy is the integral of the surge density (a gamma(2) CDF in ``x``): the marginal accuracy is 0 at
    ``tau``, peaks at ``x = 1/rate`` with value ``(ceiling - floor) rate / e``, then decays, so ``A``
    saturates at ``ceiling``. ``tau`` (tokens, >= 0) is per query; ``ceiling``, ``rate`` (per token) and
    ``floor`` are the shape shared by one model.

    Best budget at a token price ``p``: on the falling side ``x > 1/rate``, ``A'(b) = p`` gives, with the
    lower Lambert W branch,

        x* = -W_{-1}(-p / ((ceiling - floor) rate)) / rate     (exists when p <= (ceiling - floor) rate / e)

    and the query is funded with ``tau + x*`` tokens (rounded to the better neighbour) when its surplus
    ``A(b) - p b`` is positive, else abandoned (0 tokens).

    ``horizon`` defaults to ``tau + x_h`` with ``x_h = (-W_{-1}(-g / (e (ceiling - floor))) - 1) / rate``,
    where ``g = 1e-3``: from there ``ceiling - A(b) <= g``. ``knots`` are every ``resolution`` tokens up to
    it.
    """

    family: ClassVar[str] = "shifted_surge"
    tau: float
    ceiling: float
    rate: float
    floor: float
    horizon: int
    resolution: int

    def __init__(
        self,
        tau: float,
        *,
        ceiling: float,
        rate: float,
        floor: float = 0.0,
        horizon: int | None = None,
        resolution: int = 8,
    ) -> None:
        object.__setattr__(self, "tau", check_rate("tau", tau, error=InvalidCurve))
        self._check_shape(ceiling=ceiling, floor=floor, resolution=resolution)
        rate = check_rate("rate", rate, error=InvalidCurve)
        if rate <= 0:
            raise InvalidCurve("rate", rate, "must be > 0")
        object.__setattr__(self, "rate", rate)
        gap = self.ceiling - self.floor
        span = 0.0
        if gap > SATURATION_GAP:
            span = (-float(lambertwm1(-SATURATION_GAP / (math.e * gap))) - 1.0) / rate
        self._set_horizon(horizon, self.tau + span)

    def _cdf(self, b: NDArray[np.float64]) -> NDArray[np.float64]:
        return surge_cdf(b - self.tau, self.rate)

    def _density(self, b: NDArray[np.float64]) -> NDArray[np.float64]:
        rx = np.minimum(self.rate * np.maximum(b - self.tau, 0.0), 1e300)
        return self.rate * rx * np.exp(-rx)

    def _falling_root(self, price: float) -> float | None:
        scale = (self.ceiling - self.floor) * self.rate  # the peak marginal accuracy is scale / e
        if price * math.e > scale:
            return None
        z = -price / scale
        return self.tau - float(lambertwm1(z)) / self.rate

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShiftedSurge:
        """The inverse of :meth:`to_dict`."""
        params = {k: v for k, v in data.items() if k not in ("family", "tau")}
        return cls(data["tau"], **params)


@dataclass(frozen=True, slots=True, init=False)
class Logistic(_SCurve):
    """A logistic S-curve around ``midpoint``: ``A(0) = 0`` and, for ``b > 0``, with ``s = steepness``::

        A(b)  = floor + (ceiling - floor) / (1 + e^{-s (b - midpoint)})
        A'(b) = (ceiling - floor) * s * F (1 - F)          where F = 1 / (1 + e^{-s (b - midpoint)})

    The marginal accuracy peaks at the midpoint with value ``(ceiling - floor) s / 4``. ``midpoint`` (tokens,
    >= 0) is per query; ``ceiling``, ``steepness`` (per token) and ``floor`` are shared per model.

    Best budget at a token price ``p``: with ``q = p / ((ceiling - floor) s) <= 1/4`` and
    ``r = sqrt(1 - 4q)``, the falling-side solution of ``A'(b) = p`` is ``F = (1 + r) / 2``, i.e.

        b* = midpoint + ln((1 + r)^2 / (4 q)) / s

    funded when its surplus ``A(b) - p b`` is positive, else 0 tokens. ``horizon`` defaults to
    ``midpoint + ln((ceiling - floor) / g - 1) / s`` with ``g = 1e-3``, where ``ceiling - A(b) <= g``.
    """

    family: ClassVar[str] = "logistic"
    midpoint: float
    steepness: float
    ceiling: float
    floor: float
    horizon: int
    resolution: int

    def __init__(
        self,
        midpoint: float,
        *,
        steepness: float,
        ceiling: float,
        floor: float = 0.0,
        horizon: int | None = None,
        resolution: int = 8,
    ) -> None:
        object.__setattr__(self, "midpoint", check_rate("midpoint", midpoint, error=InvalidCurve))
        self._check_shape(ceiling=ceiling, floor=floor, resolution=resolution)
        steepness = check_rate("steepness", steepness, error=InvalidCurve)
        if steepness <= 0:
            raise InvalidCurve("steepness", steepness, "must be > 0")
        object.__setattr__(self, "steepness", steepness)
        gap = self.ceiling - self.floor
        span = math.log(gap / SATURATION_GAP - 1.0) / steepness if gap > 2 * SATURATION_GAP else 0.0
        self._set_horizon(horizon, self.midpoint + span)

    def _cdf(self, b: NDArray[np.float64]) -> NDArray[np.float64]:
        return logistic_cdf(b - self.midpoint, self.steepness)

    def _density(self, b: NDArray[np.float64]) -> NDArray[np.float64]:
        f = self._cdf(b)
        return self.steepness * f * (1.0 - f)

    def _falling_root(self, price: float) -> float | None:
        scale = (self.ceiling - self.floor) * self.steepness  # the peak marginal accuracy is scale / 4
        if 4.0 * price > scale:
            return None
        q = max(price / scale, 1e-300)
        r = math.sqrt(1.0 - 4.0 * q)
        return self.midpoint + math.log((1.0 + r) ** 2 / (4.0 * q)) / self.steepness

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Logistic:
        """The inverse of :meth:`to_dict`."""
        params = {k: v for k, v in data.items() if k not in ("family", "midpoint")}
        return cls(data["midpoint"], **params)


def curve_from_dict(data: Mapping[str, Any]) -> ShiftedSurge | Logistic:
    """Rebuild a curve from :meth:`to_dict`'s output, dispatching on ``family``."""
    families: dict[str, type[ShiftedSurge] | type[Logistic]] = {
        ShiftedSurge.family: ShiftedSurge,
        Logistic.family: Logistic,
    }
    family = data.get("family")
    if family not in families:
        raise InvalidCurve("family", family, f"must be one of {sorted(families)}")
    return families[family].from_dict(data)
