from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clear_integrations import CurveBatch, InvalidInput, NotFitted, load_estimator, save_estimator
from clear_integrations.estimators.embedding import EmbeddingEstimator
from clear_integrations.estimators.neighbours import NearestCurves

GRID = [16, 32, 64]
VOCAB = ["apples", "trains", "percent", "speed", "interest", "hours"]


def bag_of_words(texts: list[str]) -> list[list[float]]:
    return [[float(text.count(word)) + 0.01 for word in VOCAB] for text in texts]


def _topics() -> tuple[list[str], CurveBatch]:
    prompts = ["apples apples", "apples", "trains speed hours", "speed hours trains", "percent interest"] * 4
    easy, hard, middle = [0.5, 0.9, 0.95], [0.0, 0.0, 0.4], [0.1, 0.5, 0.8]
    rows = [easy, easy, hard, hard, middle] * 4
    return prompts, CurveBatch(GRID, rows)


def test_neighbours_average_the_closest_reference_curves() -> None:
    index = NearestCurves(np.array([[0.0], [1.0], [10.0]]), np.array([[0.0, 1.0], [1.0, 1.0], [0.5, 0.5]]), k=2)
    assert index.predict(np.array([[0.2], [9.0]])).tolist() == [[0.5, 1.0], [0.75, 0.75]]
    with pytest.raises(InvalidInput, match="queries"):
        index.predict(np.zeros((1, 2)))
    with pytest.raises(InvalidInput, match="k"):
        NearestCurves(np.zeros((1, 1)), np.zeros((1, 1)), k=0)


def test_a_plain_callable_groups_prompts_by_topic() -> None:
    prompts, curves = _topics()
    model = EmbeddingEstimator(bag_of_words, k=4).fit(prompts, curves)
    predicted = model.predict(["how many apples", "a train at speed for hours"]).matrix
    assert predicted[0].tolist() == pytest.approx([0.5, 0.9, 0.95])
    assert predicted[1].tolist() == pytest.approx([0.0, 0.0, 0.4])


def test_langchain_and_llama_index_embeddings_are_accepted() -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from llama_index.core.embeddings import MockEmbedding

    prompts, curves = _topics()
    for embed in (DeterministicFakeEmbedding(size=8), MockEmbedding(embed_dim=8)):
        model = EmbeddingEstimator(embed, k=3).fit(prompts, curves)
        out = model.predict(["anything"])
        assert out.matrix.shape == (1, 3) and np.all((out.matrix >= 0) & (out.matrix <= 1))


def test_round_trip_needs_the_embedding_function_again(tmp_path: Path) -> None:
    prompts, curves = _topics()
    model = EmbeddingEstimator(bag_of_words, k=4).fit(prompts, curves)
    save_estimator(model, tmp_path / "knn.json")
    with pytest.raises(InvalidInput, match="embed"):
        load_estimator(tmp_path / "knn.json")
    loaded = load_estimator(tmp_path / "knn.json", embed=bag_of_words)
    assert np.allclose(loaded.predict(["apples"]).matrix, model.predict(["apples"]).matrix)


def test_bad_sources_and_outputs_are_refused() -> None:
    with pytest.raises(InvalidInput, match="embed"):
        EmbeddingEstimator(42)
    with pytest.raises(NotFitted):
        EmbeddingEstimator(bag_of_words).predict(["q"])
    prompts, curves = _topics()
    with pytest.raises(InvalidInput, match="one vector per prompt"):
        EmbeddingEstimator(lambda texts: [[1.0]]).fit(prompts, curves)
