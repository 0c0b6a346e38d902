"""The real branches of the Lambert W function, vectorised with numpy (no scipy).

``W(z)`` solves ``w * exp(w) = z``. For real ``z`` there are two branches:

- ``W_0`` (:func:`lambertw0`): defined for ``z >= -1/e``, values ``w >= -1``;
- ``W_{-1}`` (:func:`lambertwm1`): defined for ``-1/e <= z < 0``, values ``w <= -1`` (``-inf`` at ``z = 0``).

Both start from a series or asymptotic guess and refine it with Halley's iteration on
``f(w) = w e^w - z``::

    w <- w - f / (e^w (w + 1) - (w + 2) f / (2 w + 2))

which converges cubically; a few steps reach machine precision. Inputs outside a branch's domain (and NaN)
give NaN, as numpy does for the logarithm of a negative number.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["lambertw0", "lambertwm1"]

_INV_E = float(np.exp(-1.0))
_MAX_STEPS = 20


def _branch_point_series(z: NDArray[np.float64], sign: float) -> NDArray[np.float64]:
    """Series about the branch point ``z = -1/e``: ``w = -1 + s p - p^2/3 + s 11/72 p^3`` (s = +-1)."""
    p = np.sqrt(np.maximum(2.0 * (np.e * z + 1.0), 0.0))
    return -1.0 + sign * p - p * p / 3.0 + sign * (11.0 / 72.0) * p**3


def _halley(w: NDArray[np.float64], z: NDArray[np.float64]) -> NDArray[np.float64]:
    for _ in range(_MAX_STEPS):
        ew = np.exp(w)
        f = w * ew - z
        wp1 = w + 1.0
        denominator = ew * wp1 - (w + 2.0) * f / (2.0 * np.where(wp1 == 0.0, 1.0, wp1))
        ok = (denominator != 0.0) & np.isfinite(denominator) & np.isfinite(f)
        step = np.where(ok, f / np.where(ok, denominator, 1.0), 0.0)
        w = w - step
        if np.all(np.abs(step) <= 1e-13 * (1.0 + np.abs(w))):
            break
    return w


def lambertw0(z: ArrayLike) -> NDArray[np.float64]:
    """Principal branch ``W_0(z)`` for real ``z >= -1/e`` (elementwise; NaN outside the domain)."""
    x = np.asarray(z, dtype=np.float64)
    with np.errstate(all="ignore"):
        valid = x >= -_INV_E
        xv = np.where(valid, x, 0.0)
        near = _branch_point_series(xv, 1.0)
        log1p = np.log1p(np.maximum(xv, -_INV_E))
        # Winitzki's approximation, good to a few percent over the whole domain away from the branch point.
        far = log1p * (1.0 - np.log1p(log1p) / (2.0 + log1p))
        guess = np.where(xv < -0.25, near, np.where(np.isfinite(far), far, xv))
        big = xv > 1e300
        w = _halley(np.where(big, 0.0, guess), np.where(big, 0.0, xv))
        # ln z - ln ln z is already exact to double precision this far out (where w e^w would overflow).
        w = np.where(big, np.log(xv) - np.log(np.log(xv)), w)
        w = np.where(xv == np.inf, np.inf, w)
        w = np.where(xv == -_INV_E, -1.0, w)
        return np.where(valid, w, np.nan)


def lambertwm1(z: ArrayLike) -> NDArray[np.float64]:
    """Lower branch ``W_{-1}(z)`` for real ``-1/e <= z < 0`` (``-inf`` at ``z = 0``, NaN elsewhere)."""
    x = np.asarray(z, dtype=np.float64)
    with np.errstate(all="ignore"):
        valid = (x >= -_INV_E) & (x < 0.0)
        xv = np.where(valid, x, -0.1)
        near = _branch_point_series(xv, -1.0)
        l1 = np.log(-xv)
        l2 = np.log(-l1)
        far = l1 - l2 + l2 / l1
        w = _halley(np.where(xv < -0.25, near, far), xv)
        w = np.where(xv == -_INV_E, -1.0, w)
        w = np.where(valid, w, np.nan)
        return np.where(x == 0.0, -np.inf, w)
