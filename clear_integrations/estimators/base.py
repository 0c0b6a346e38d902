"""Estimators: a query's accuracy-at-budget curve guessed from its prompt, before any token is spent.

An :class:`Estimator` is fitted on prompts with measured curves and predicts a curve per new prompt. Fitted
estimators are saved as versioned JSON (never pickle), so an app can ship one. :class:`PriorEstimator` is the
no-information baseline: every prompt gets the training set's mean curve. Even that beats spreading tokens
evenly, because the mean curve of reasoning models dips before it rises, so concentrating tokens pays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..curves.curve import CurveBatch
from ..errors import InvalidCurve, InvalidInput, NotFitted

__all__ = [
    "Estimator",
    "Meta",
    "PriorEstimator",
    "check_training_set",
    "estimators",
    "load_estimator",
    "save_estimator",
]

FORMAT = "clear-integrations/estimator"
FORMAT_VERSION = 1


Meta = Sequence[Mapping[str, Any]] | None


@runtime_checkable
class Estimator(Protocol):
    """Fit on prompts with measured curves; predict one curve per prompt.

    ``meta[i]`` carries optional per-prompt inputs the caller knows before generation (for example a cheap
    model's difficulty label); estimators ignore what they do not use, and must never be given outcomes.
    """

    name: ClassVar[str]

    def fit(self, prompts: Sequence[str], curves: CurveBatch, meta: Meta = None) -> Estimator: ...

    def predict(self, prompts: Sequence[str], meta: Meta = None) -> CurveBatch: ...

    def to_dict(self) -> dict[str, Any]: ...


def check_training_set(prompts: Sequence[str], curves: CurveBatch) -> None:
    """Refuse an empty training set or one whose prompts and curves do not pair up."""
    if len(prompts) != len(curves) or not len(curves):
        raise InvalidCurve("curves", f"{len(curves)} curves", f"must be non-empty, one per prompt ({len(prompts)})")


class PriorEstimator:
    """Every prompt gets the mean of the training curves: the floor any real estimator must beat."""

    name: ClassVar[str] = "prior"

    def __init__(self) -> None:
        self.budgets: np.ndarray[Any, Any] | None = None
        self.mean: np.ndarray[Any, Any] | None = None

    def fit(self, prompts: Sequence[str], curves: CurveBatch, meta: Meta = None) -> PriorEstimator:
        check_training_set(prompts, curves)
        self.budgets = np.asarray(curves.budgets)
        self.mean = curves.matrix.mean(axis=0)
        return self

    def predict(self, prompts: Sequence[str], meta: Meta = None) -> CurveBatch:
        if self.budgets is None or self.mean is None:
            raise NotFitted(self.name)
        return CurveBatch(self.budgets, np.broadcast_to(self.mean, (len(prompts), self.mean.size)))

    def to_dict(self) -> dict[str, Any]:
        if self.budgets is None or self.mean is None:
            raise NotFitted(self.name)
        return {"budgets": self.budgets.tolist(), "mean": self.mean.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriorEstimator:
        estimator = cls()
        estimator.budgets = np.asarray(data["budgets"], dtype=np.int64)
        estimator.mean = np.asarray(data["mean"], dtype=np.float64)
        return estimator


def estimators() -> dict[str, Any]:
    """Estimator classes by name (imported on first use, so the core stays light)."""
    from .embedding import EmbeddingEstimator
    from .text import TextFeatureEstimator

    return {cls.name: cls for cls in (PriorEstimator, TextFeatureEstimator, EmbeddingEstimator)}


def save_estimator(estimator: Estimator, path: str | Path) -> None:
    """Write a fitted estimator as versioned JSON."""
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": estimator.name,
        "state": estimator.to_dict(),
    }
    Path(path).write_text(json.dumps(document), encoding="utf-8")


def load_estimator(path: str | Path, **options: Any) -> Estimator:
    """Read an estimator written by :func:`save_estimator` (refuses other formats and newer versions).

    ``options`` go to the estimator's ``from_dict``: an embedding estimator needs ``embed=...`` again.
    """
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if document.get("format") != FORMAT:
        raise InvalidInput("format", document.get("format"), f"is not a {FORMAT} file")
    if document.get("version", 0) > FORMAT_VERSION:
        raise InvalidInput("version", document.get("version"), f"is newer than this library reads ({FORMAT_VERSION})")
    kind = document.get("kind")
    known = estimators()
    if kind not in known:
        raise InvalidInput("kind", kind, f"must be one of {sorted(known)}")
    loaded: Estimator = known[kind].from_dict(document["state"], **options)
    return loaded
