from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clear_integrations import CurveBatch, InvalidInput, NotFitted, PriorEstimator, load_estimator, save_estimator


def test_prior_predicts_the_training_mean_for_every_prompt() -> None:
    curves = CurveBatch([16, 32], [[0.0, 0.4], [0.2, 0.6]])
    model = PriorEstimator().fit(["a", "b"], curves)
    predicted = model.predict(["x", "y", "z"])
    assert len(predicted) == 3
    assert np.allclose(predicted.matrix, [[0.1, 0.5]] * 3)


def test_save_and_load_round_trip_as_versioned_json(tmp_path: Path) -> None:
    model = PriorEstimator().fit(["a"], CurveBatch([16, 32], [[0.1, 0.3]]))
    path = tmp_path / "prior.json"
    save_estimator(model, path)
    document = json.loads(path.read_text())
    assert document["format"] == "clear-integrations/estimator" and document["kind"] == "prior"
    loaded = load_estimator(path)
    assert np.allclose(loaded.predict(["q"]).matrix, model.predict(["q"]).matrix)


def test_unfitted_and_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFitted, match="prior"):
        PriorEstimator().predict(["q"])
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InvalidInput, match="format"):
        load_estimator(path)
    path.write_text(json.dumps({"format": "clear-integrations/estimator", "version": 99, "kind": "prior"}))
    with pytest.raises(InvalidInput, match="version"):
        load_estimator(path)
