from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clear_integrations.calibration.problems import (
    InvalidProblem,
    Problem,
    gsm8k_sample,
    load_gsm8k,
    load_math500,
    load_problems,
)


def _write(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


GSM = [
    {"question": "Janet has 3 eggs and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A house costs $80,000 plus $50,000.", "answer": "80,000+50,000=130,000\n#### 130,000"},
]
MATH: list[dict[str, Any]] = [
    {
        "problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?",
        "solution": "...",
        "answer": "\\frac{3}{4}",
        "subject": "Algebra",
        "level": 1,
        "unique_id": "test/algebra/1.json",
    },
    {"problem": "Compute $2+2$.", "solution": "...", "answer": " 4 ", "subject": "Prealgebra", "level": 1},
]


def test_load_gsm8k(tmp_path: Path) -> None:
    problems = load_gsm8k(_write(tmp_path / "test.jsonl", GSM))
    assert problems == [
        Problem("test_0", GSM[0]["question"], "7", "gsm8k"),
        Problem("test_1", GSM[1]["question"], "130000", "gsm8k"),
    ]
    assert [p.id for p in load_gsm8k(tmp_path / "test.jsonl", prefix="train", limit=1)] == ["train_0"]


def test_load_math500(tmp_path: Path) -> None:
    problems = load_math500(_write(tmp_path / "math.jsonl", MATH))
    assert problems[0] == Problem("test/algebra/1.json", MATH[0]["problem"], "\\frac{3}{4}", "math")
    assert problems[1].id == "math_1"
    assert problems[1].answer == "4"


def test_load_problems_guesses_kind(tmp_path: Path) -> None:
    assert load_problems(_write(tmp_path / "g.jsonl", GSM))[0].kind == "gsm8k"
    assert load_problems(_write(tmp_path / "m.jsonl", MATH))[0].kind == "math"
    with pytest.raises(InvalidProblem, match="kind"):
        load_problems(tmp_path / "g.jsonl", kind="aime")
    with pytest.raises(InvalidProblem, match="neither"):
        load_problems(_write(tmp_path / "x.jsonl", [{"text": "hi"}]))
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(InvalidProblem, match="no problems"):
        load_problems(tmp_path / "empty.jsonl")


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ([{"question": "q", "answer": "no final answer"}], "####"),
        ([{"question": "q", "answer": "#### "}], "empty"),
        ([{"question": "", "answer": "#### 1"}], "question"),
        ([{"answer": "#### 1"}], "question"),
        (["not an object"], "JSON object"),
    ],
)
def test_gsm8k_errors_name_the_field(tmp_path: Path, records: list[Any], match: str) -> None:
    with pytest.raises(InvalidProblem, match=match):
        load_gsm8k(_write(tmp_path / "bad.jsonl", records))


def test_bad_json_and_duplicate_ids(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text("{not json\n", encoding="utf-8")
    with pytest.raises(InvalidProblem, match=r"bad\.jsonl:1"):
        load_gsm8k(tmp_path / "bad.jsonl")
    twice = [dict(MATH[0]), dict(MATH[0])]
    with pytest.raises(InvalidProblem, match="twice"):
        load_math500(_write(tmp_path / "dup.jsonl", twice))


def test_shipped_sample() -> None:
    problems = gsm8k_sample()
    assert len(problems) == 20
    assert [p.id for p in problems[:2]] == ["test_0", "test_1"]
    assert problems[0].answer == "18"
    assert all(p.kind == "gsm8k" and p.answer for p in problems)
    assert len(gsm8k_sample(5)) == 5
