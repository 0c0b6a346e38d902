"""Estimators: from a prompt to its predicted accuracy-at-budget curve (prior, text features, embedding kNN)."""

from .base import Estimator, PriorEstimator, load_estimator, save_estimator
from .embedding import EmbeddingEstimator
from .text import TextFeatureEstimator

__all__ = [
    "EmbeddingEstimator",
    "Estimator",
    "PriorEstimator",
    "TextFeatureEstimator",
    "load_estimator",
    "save_estimator",
]
