from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clear_integrations.bench.curvesets import load_jsonl, write_jsonl
from clear_integrations.bench.rollouts import OFFLINE_ENCODING, load_rollouts
from clear_integrations.errors import InvalidInput


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _qwen_like(idx: int, words: list[int], score: list[bool]) -> dict[str, Any]:
    """A record shaped like math_cot_100.jsonl: texts in ``code``/``response``, correctness in ``score``."""
    texts = [" ".join(["step"] * n) for n in words]
    return {
        "idx": idx,
        "question": f"problem {idx}",
        "query": f"problem {idx}",
        "gt": "4",
        "answer": "4",
        "level": "Level 1",
        "code": texts,
        "response": texts,
        "pred": ["4"] * len(words),
        "score": score,
    }


def test_lengths_counted_offline_and_curves(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "r.jsonl",
        [
            _qwen_like(0, [10, 30, 50, 70], [True, True, False, True]),
            _qwen_like(1, [5, 100], [False, True]),
        ],
    )
    rollouts = load_rollouts(path)
    assert rollouts.ids == ["0", "1"]
    assert rollouts.prompts == ["problem 0", "problem 1"]
    assert rollouts.lengths[0].tolist() == [10, 30, 50, 70]  # " step" is one cl100k token
    assert rollouts.meta[0]["length_source"] == OFFLINE_ENCODING
    assert rollouts.finished_within(0, 40).tolist() == [True, True, False, False]
    assert rollouts.correct_within(0, 60).tolist() == [True, True, False, False]
    assert rollouts.samples(1) == 2
    curves = rollouts.curves([8, 32, 64, 128])
    assert curves.curves.matrix.tolist() == [[0.0, 0.5, 0.5, 0.75], [0.0, 0.0, 0.0, 0.5]]
    assert curves.meta[1]["samples"] == 2
    write_jsonl(curves, tmp_path / "c.jsonl")
    assert np.array_equal(load_jsonl(tmp_path / "c.jsonl").curves.matrix, curves.curves.matrix)
    assert rollouts.take([1]).ids == ["1"]


def test_length_field_and_custom_counter(tmp_path: Path) -> None:
    record = {"id": "p", "prompt": "hi", "lengths": [3, 9], "correct": [1, 0]}
    rollouts = load_rollouts(_write(tmp_path / "l.jsonl", [record]))
    assert rollouts.lengths[0].tolist() == [3, 9]
    assert rollouts.correct[0].tolist() == [True, False]
    assert rollouts.meta[0]["length_source"] == "lengths"
    counted = load_rollouts(
        _write(tmp_path / "t.jsonl", [_qwen_like(0, [4, 8], [True, True])]), count_tokens=lambda text: len(text)
    )
    assert counted.lengths[0].tolist() == [len(" ".join(["step"] * 4)), len(" ".join(["step"] * 8))]


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"question": "q", "response": ["a", "b"], "score": [True]}, "score"),
        ({"question": "q", "response": ["a"]}, "score"),
        ({"question": "q", "score": [True]}, "response"),
        ({"response": ["a"], "score": [True]}, "question"),
        ({"question": "q", "response": ["a"], "score": ["yes"]}, "booleans"),
        ({"question": "q", "lengths": [-1], "score": [True]}, "lengths"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, record: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        load_rollouts(_write(tmp_path / "bad.jsonl", [record]))


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(InvalidInput, match="no rollouts"):
        load_rollouts(tmp_path / "e.jsonl")


def test_real_qwen_rollouts(shared_data: Path) -> None:
    rollouts = load_rollouts(shared_data / "qwen25-math-rm-maj-example" / "math_cot_100.jsonl")
    assert len(rollouts) == 100
    assert all(rollouts.samples(i) == 8 for i in range(len(rollouts)))
    matrix = rollouts.curves([256, 1024, 100_000]).curves.matrix
    assert np.all(np.diff(matrix, axis=1) >= 0)  # more tokens never finish fewer samples
    assert 0.85 <= matrix[:, -1].mean() <= 0.95  # README: mean pass@1 0.91 with no cap
