from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clear_integrations import CurveBatch, NotFitted, PriorEstimator, allocate, load_estimator, save_estimator
from clear_integrations.estimators.text import TextFeatureEstimator
from clear_integrations.estimators.text_features import COUNTS, TextFeaturizer

GRID = list(range(16, 257, 16))


def _problems(n: int, seed: int) -> tuple[list[str], CurveBatch, list[dict[str, str]]]:
    """Word problems whose threshold grows with the number of quantities they mention."""
    rng = np.random.default_rng(seed)
    prompts, rows, meta = [], [], []
    for _ in range(n):
        steps = int(rng.integers(1, 8))
        numbers = " and then ".join(
            f"{int(rng.integers(2, 99))} apples each costing ${int(rng.integers(1, 9))}" for _ in range(steps)
        )
        prompts.append(f"<｜User｜>Sam buys {numbers}. How much does he spend in total?<｜Assistant｜>")
        slow = bool(rng.random() < 0.5)  # hidden from the text, revealed by the label
        tau = 20 * steps + 60 * slow + rng.normal(0, 5)
        x = np.maximum(np.asarray(GRID) - tau, 0) / 25
        rows.append(np.clip(0.95 * (1 - (1 + x) * np.exp(-x)) + rng.normal(0, 0.02, len(GRID)), 0, 1))
        meta.append({"model_predicted_difficulty": "hard" if slow else "easy"})
    return prompts, CurveBatch(GRID, np.round(rows, 2)), meta


def test_featurizer_strips_chat_markers_and_counts_quantities() -> None:
    featurizer = TextFeaturizer(hash_dim=64)
    plain = featurizer.transform(["Sam buys 3 apples at $2 each."])
    marked = featurizer.transform(["<｜User｜>Sam buys 3 apples at $2 each.<|im_end|>"])
    assert np.array_equal(plain, marked)
    numbers_column = 64 + list(COUNTS).index("numbers")
    assert plain[0, numbers_column] == 2


def test_featurizer_is_stable_across_instances() -> None:
    a = TextFeaturizer(hash_dim=128).transform(["half of 12 is 6"])
    b = TextFeaturizer.from_dict(TextFeaturizer(hash_dim=128).to_dict()).transform(["half of 12 is 6"])
    assert np.array_equal(a, b)


def test_learns_that_longer_problems_need_more_tokens_and_allocates_better_than_the_prior() -> None:
    prompts, curves, _ = _problems(600, seed=0)
    test_prompts, test_curves, _ = _problems(300, seed=1)
    model = TextFeatureEstimator(alpha=10.0).fit(prompts, curves)
    predicted = model.predict(test_prompts)
    assert predicted.matrix.shape == test_curves.matrix.shape
    assert np.all((predicted.matrix >= 0) & (predicted.matrix <= 1))
    short = model.predict(["Sam buys 3 apples each costing $2. How much does he spend in total?"])
    long = model.predict([test_prompts[int(np.argmax([p.count("and then") for p in test_prompts]))]])
    assert short.matrix[0, 3] > long.matrix[0, 3]  # at 64 tokens the short problem is further along
    budget = 64 * len(test_curves)
    prior = PriorEstimator().fit(prompts, curves).predict(test_prompts)
    with_text = test_curves.accuracy_at(allocate(predicted, budget).budgets).mean()
    without = test_curves.accuracy_at(allocate(prior, budget).budgets).mean()
    assert with_text > without


def test_optional_labels_are_used_when_given_and_may_be_missing() -> None:
    prompts, curves, meta = _problems(400, seed=2)
    model = TextFeatureEstimator(alpha=10.0, categorical=("model_predicted_difficulty",)).fit(prompts, curves, meta)
    same = ["Sam buys 5 apples each costing $3. How much does he spend in total?"]
    easy = model.predict(same, [{"model_predicted_difficulty": "easy"}]).matrix[0]
    hard = model.predict(same, [{"model_predicted_difficulty": "hard"}]).matrix[0]
    unknown = model.predict(same).matrix[0]
    assert easy[4] > hard[4]
    assert unknown.shape == easy.shape


def test_round_trips_through_json(tmp_path: Path) -> None:
    prompts, curves, meta = _problems(100, seed=3)
    model = TextFeatureEstimator(categorical=("model_predicted_difficulty",)).fit(prompts, curves, meta)
    save_estimator(model, tmp_path / "text.json")
    loaded = load_estimator(tmp_path / "text.json")
    assert isinstance(loaded, TextFeatureEstimator)
    assert np.allclose(loaded.predict(prompts[:5], meta[:5]).matrix, model.predict(prompts[:5], meta[:5]).matrix)


def test_unfitted_is_refused() -> None:
    with pytest.raises(NotFitted, match="text"):
        TextFeatureEstimator().predict(["q"])
