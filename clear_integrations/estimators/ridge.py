"""Multi-output ridge regression in numpy, with its state as plain lists for JSON.

Columns after ``scaled_from`` are standardised with the training mean and deviation and multiplied by
``dense_weight`` (so a few informative counts are not drowned by many hashed columns under one penalty); columns
before it (hashed counts) are used as they are. The intercept is the training mean of the targets, unpenalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import NotFitted

__all__ = ["Ridge"]


@dataclass
class Ridge:
    """``Y ~ (X - center) / scale @ weights + intercept``, fitted by :meth:`fit`."""

    alpha: float = 1000.0
    dense_weight: float = 3.0
    center: NDArray[np.float64] | None = None
    scale: NDArray[np.float64] | None = None
    weights: NDArray[np.float64] | None = None
    intercept: NDArray[np.float64] | None = None

    def fit(self, x: NDArray[np.floating[Any]], y: NDArray[np.floating[Any]], *, scaled_from: int) -> Ridge:
        center = np.zeros(x.shape[1])
        scale = np.ones(x.shape[1])
        dense = x[:, scaled_from:].astype(np.float64)
        center[scaled_from:] = dense.mean(axis=0)
        scale[scaled_from:] = (dense.std(axis=0) + 1e-6) / self.dense_weight
        z = (x - center) / scale
        gram = z.T @ z
        gram[np.diag_indices_from(gram)] += self.alpha
        self.intercept = y.mean(axis=0).astype(np.float64)
        self.weights = np.linalg.solve(gram, z.T @ (y - self.intercept)).astype(np.float64)
        self.center, self.scale = center, scale
        return self

    def predict(self, x: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        if self.weights is None or self.center is None or self.scale is None or self.intercept is None:
            raise NotFitted("Ridge")
        result: NDArray[np.float64] = ((x - self.center) / self.scale) @ self.weights + self.intercept
        return result

    def to_dict(self) -> dict[str, Any]:
        arrays = {"center": self.center, "scale": self.scale, "weights": self.weights, "intercept": self.intercept}
        return {"alpha": self.alpha, "dense_weight": self.dense_weight} | {
            key: None if value is None else value.tolist() for key, value in arrays.items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ridge:
        def array(key: str) -> NDArray[np.float64] | None:
            return None if data.get(key) is None else np.asarray(data[key], dtype=np.float64)

        return cls(
            alpha=float(data["alpha"]),
            dense_weight=float(data["dense_weight"]),
            center=array("center"),
            scale=array("scale"),
            weights=array("weights"),
            intercept=array("intercept"),
        )
