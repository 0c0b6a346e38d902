"""Predict a query's curve as the mean measured curve of its nearest training prompts in an embedding space.

Any embedding function the app already has works: a LangChain ``Embeddings`` (``embed_documents``), a LlamaIndex
``BaseEmbedding`` (``get_text_embedding_batch``), or a plain callable from a list of texts to a list of vectors.
The fitted state (reference vectors and curves) is saved as JSON; the embedding function is not, so pass it
again to :func:`~clear_integrations.estimators.base.load_estimator` (``embed=...``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from ..curves.curve import CurveBatch
from ..errors import InvalidInput, NotFitted
from .base import Meta, check_training_set
from .neighbours import NearestCurves

__all__ = ["EmbeddingEstimator", "embedding_function"]

EmbedFn = Callable[[list[str]], Sequence[Sequence[float]]]


def embedding_function(source: Any) -> EmbedFn:
    """Adapt a LangChain ``Embeddings``, a LlamaIndex ``BaseEmbedding`` or a callable to ``list[str] -> vectors``."""
    if hasattr(source, "embed_documents"):
        return source.embed_documents  # type: ignore[no-any-return]
    if hasattr(source, "get_text_embedding_batch"):
        return source.get_text_embedding_batch  # type: ignore[no-any-return]
    if callable(source):
        return source  # type: ignore[no-any-return]
    raise InvalidInput(
        "embed", type(source).__name__, "must be a LangChain Embeddings, a LlamaIndex BaseEmbedding or a callable"
    )


class EmbeddingEstimator:
    """k-nearest-neighbour curves over prompt embeddings (cosine distance when ``normalize``, the default)."""

    name: ClassVar[str] = "embedding"

    def __init__(self, embed: Any, *, k: int = 100, normalize: bool = True) -> None:
        self.embed = embedding_function(embed)
        self.k = k
        self.normalize = normalize
        self.index: NearestCurves | None = None
        self.budgets: NDArray[np.int64] | None = None

    def _vectors(self, prompts: Sequence[str]) -> NDArray[np.float64]:
        vectors = np.asarray(self.embed(list(prompts)), dtype=np.float64)
        if vectors.ndim != 2 or len(vectors) != len(prompts):
            raise InvalidInput(
                "embed", f"output of shape {vectors.shape}", f"must be one vector per prompt ({len(prompts)})"
            )
        if self.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def fit(self, prompts: Sequence[str], curves: CurveBatch, meta: Meta = None) -> EmbeddingEstimator:
        check_training_set(prompts, curves)
        self.index = NearestCurves(self._vectors(prompts), np.asarray(curves.matrix, dtype=np.float64), self.k)
        self.budgets = np.asarray(curves.budgets, dtype=np.int64)
        return self

    def predict(self, prompts: Sequence[str], meta: Meta = None) -> CurveBatch:
        if self.index is None or self.budgets is None:
            raise NotFitted(self.name)
        return CurveBatch(self.budgets, np.clip(self.index.predict(self._vectors(prompts)), 0.0, 1.0))

    def to_dict(self) -> dict[str, Any]:
        if self.index is None or self.budgets is None:
            raise NotFitted(self.name)
        return {"budgets": self.budgets.tolist(), "normalize": self.normalize, "index": self.index.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, embed: Any = None) -> EmbeddingEstimator:
        if embed is None:
            raise InvalidInput("embed", None, "an embedding estimator needs its embedding function to load: embed=...")
        index = NearestCurves.from_dict(data["index"])
        estimator = cls(embed, k=index.k, normalize=bool(data["normalize"]))
        estimator.index = index
        estimator.budgets = np.asarray(data["budgets"], dtype=np.int64)
        return estimator
