"""Curves predicted as the mean of the measured curves of the ``k`` nearest reference points.

Used twice: by the embedding estimator (nearest prompts in an embedding space) and to calibrate the text
estimator (nearest *predictions*: what do measured curves look like when the regression predicted this?).
Distances are squared Euclidean, computed in blocks so that memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInput

__all__ = ["NearestCurves"]

_BLOCK = 512


@dataclass
class NearestCurves:
    """Reference ``points`` (``N x D``) with their measured ``curves`` (``N x K``); ``k`` neighbours per query."""

    points: NDArray[np.float64]
    curves: NDArray[np.float64]
    k: int

    def __post_init__(self) -> None:
        if self.points.ndim != 2 or len(self.points) != len(self.curves) or not len(self.points):
            raise InvalidInput(
                "points", f"shape {self.points.shape}", f"must be one row per curve ({len(self.curves)})"
            )
        if self.k < 1:
            raise InvalidInput("k", self.k, "must be >= 1")
        self._norms = (self.points**2).sum(axis=1)

    def predict(self, queries: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """Mean curve of each query's ``k`` nearest reference points."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float64))
        if queries.shape[1] != self.points.shape[1]:
            raise InvalidInput("queries", f"shape {queries.shape}", f"must have {self.points.shape[1]} columns")
        k = min(self.k, len(self.points))
        out = np.empty((len(queries), self.curves.shape[1]))
        for start in range(0, len(queries), _BLOCK):
            block = queries[start : start + _BLOCK]
            distance = self._norms[None, :] - 2.0 * block @ self.points.T
            nearest = np.argpartition(distance, k - 1, axis=1)[:, :k]
            out[start : start + _BLOCK] = self.curves[nearest].mean(axis=1)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "points": np.round(self.points, 4).tolist(), "curves": self.curves.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NearestCurves:
        return cls(
            np.asarray(data["points"], dtype=np.float64), np.asarray(data["curves"], dtype=np.float64), int(data["k"])
        )
