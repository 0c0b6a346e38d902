"""Problem sets with gold answers, for calibration: GSM8K and MATH-500 JSONL files.

Both load into a list of :class:`Problem` ``(id, question, answer, kind)``; ``kind`` picks the grader
(``"gsm8k"``: numeric match, ``"math"``: boxed-answer match, see :mod:`clear_integrations.calibration.grading`).

- GSM8K (``{"question", "answer"}`` per line): the gold answer is what follows the last ``####`` in ``answer``,
  commas removed. Ids are ``{prefix}_{line index}`` (``test_0``, ...), the ids of the predictive-scheduling curves.
- MATH-500 (``{"problem", "answer", "unique_id", ...}`` per line): ``answer`` is the LaTeX final answer; the id
  is ``unique_id`` when present, else ``math_{line index}``.

A small GSM8K sample (20 test questions, MIT) ships in the package: :func:`gsm8k_sample`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ..errors import InvalidProblem

__all__ = [
    "InvalidProblem",
    "Problem",
    "ProblemKind",
    "gsm8k_sample",
    "load_gsm8k",
    "load_math500",
    "load_problems",
]

ProblemKind = Literal["gsm8k", "math"]
PROBLEM_KINDS: tuple[ProblemKind, ...] = ("gsm8k", "math")


@dataclass(frozen=True)
class Problem:
    """One question with its gold final answer. ``kind`` names the grader: ``"gsm8k"`` or ``"math"``."""

    id: str
    question: str
    answer: str
    kind: ProblemKind


def gsm8k_gold(solution: str) -> str:
    """The final answer of a GSM8K worked solution: the text after the last ``####``, commas removed."""
    if "####" not in solution:
        raise InvalidProblem("answer", solution[-80:], "has no '#### <number>' final answer")
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise InvalidProblem("answer", solution[-80:], "has an empty final answer after '####'")
    return gold


def _records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    records: list[tuple[int, dict[str, Any]]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidProblem("line", f"{path.name}:{number}", f"is not JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise InvalidProblem("line", f"{path.name}:{number}", "must be a JSON object")
            records.append((number, record))
    return records


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidProblem(key, value, f"must be a non-empty string ({where})")
    return value


def _check_unique(problems: list[Problem], path: Path) -> list[Problem]:
    seen: set[str] = set()
    for problem in problems:
        if problem.id in seen:
            raise InvalidProblem("id", problem.id, f"appears twice in {path}")
        seen.add(problem.id)
    return problems


def load_gsm8k(path: str | Path, *, prefix: str | None = None, limit: int | None = None) -> list[Problem]:
    """Load a GSM8K JSONL file. ``prefix`` defaults to the file stem (``test`` -> ids ``test_0``, ``test_1``, ...)."""
    file = Path(path)
    stem = prefix if prefix is not None else file.stem
    problems: list[Problem] = []
    for index, (number, record) in enumerate(_records(file)):
        where = f"{file.name}:{number}"
        question = _text(record, "question", where)
        try:
            gold = gsm8k_gold(_text(record, "answer", where))
        except InvalidProblem as exc:
            raise InvalidProblem("answer", exc.value, f"{exc.reason} ({where})") from exc
        problems.append(Problem(f"{stem}_{index}", question, gold, "gsm8k"))
        if limit is not None and len(problems) >= limit:
            break
    return _check_unique(problems, file)


def load_math500(path: str | Path, *, limit: int | None = None) -> list[Problem]:
    """Load a MATH(-500) JSONL file: ``problem`` and ``answer`` (LaTeX) per line, id from ``unique_id``."""
    file = Path(path)
    problems: list[Problem] = []
    for index, (number, record) in enumerate(_records(file)):
        where = f"{file.name}:{number}"
        question = _text(record, "problem", where)
        gold = _text(record, "answer", where).strip()
        unique = record.get("unique_id")
        problem_id = str(unique) if isinstance(unique, str) and unique else f"math_{index}"
        problems.append(Problem(problem_id, question, gold, "math"))
        if limit is not None and len(problems) >= limit:
            break
    return _check_unique(problems, file)


def load_problems(path: str | Path, *, kind: str | None = None, limit: int | None = None) -> list[Problem]:
    """Load by ``kind`` (``"gsm8k"`` or ``"math"``), or guess it from the first record's fields."""
    file = Path(path)
    if kind is None:
        first = next(iter(_records(file)), None)
        if first is None:
            raise InvalidProblem("path", str(file), "holds no problems")
        fields = first[1]
        if "problem" in fields:
            kind = "math"
        elif "question" in fields:
            kind = "gsm8k"
        else:
            raise InvalidProblem("path", str(file), "is neither GSM8K (question/answer) nor MATH (problem/answer)")
    if kind == "gsm8k":
        return load_gsm8k(file, limit=limit)
    if kind == "math":
        return load_math500(file, limit=limit)
    raise InvalidProblem("kind", kind, f"must be one of {', '.join(PROBLEM_KINDS)}")


def gsm8k_sample(limit: int | None = None) -> list[Problem]:
    """The 20 GSM8K test questions shipped with the package (MIT; ids ``test_0`` .. ``test_19``)."""
    source = resources.files("clear_integrations") / "data" / "gsm8k_sample.jsonl"
    with resources.as_file(source) as file:
        return load_gsm8k(file, prefix="test", limit=limit)
