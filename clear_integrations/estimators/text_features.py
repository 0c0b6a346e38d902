"""Cheap features of a prompt, computed before any token is generated.

Three groups, all deterministic and offline:

- hashed word uni- and bigrams (signed feature hashing into ``hash_dim`` buckets, crc32: stable across runs and
  machines, unlike Python's ``hash``);
- counts that track the work a maths word problem asks for: numbers, decimals, fractions, percentages, money,
  multiplicative and fractional words, rates, comparisons, totals, time units, sentences, conditionals;
- optional categorical labels the caller supplies per prompt (for example ``model_predicted_difficulty``, a cheap
  model's guess of the question's difficulty), one-hot over the values seen at fit time.

Chat-template markers such as ``<｜User｜>`` or ``<|im_start|>`` are removed first.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["COUNTS", "TextFeaturizer"]

_MARKERS = re.compile(r"<[｜|][^>]{0,40}[｜|]>")
_WORDS = re.compile(r"[a-z]+|\d+(?:\.\d+)?|[$%/]")
_NUMBERS = re.compile(r"\d+(?:[.,]\d+)*")

COUNTS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern)
    for name, pattern in {
        "numbers": r"\d+(?:[.,]\d+)*",
        "decimals": r"\d+\.\d+",
        "fractions": r"\d+/\d+",
        "percent": r"%|\bpercent",
        "money": r"\$|\bdollars?\b|\bcents?\b",
        "multiply": r"\btimes\b|\btwice\b|\bdouble\b|\btriple\b|\bmultipl",
        "parts": r"\bhalf\b|\bthirds?\b|\bquarters?\b|\bfifth",
        "rates": r"\beach\b|\bper\b|\bevery\b",
        "compare": r"\bmore\b|\bless\b|\bfewer\b|\bthan\b",
        "totals": r"\btotal\b|\baltogether\b|\bin all\b|\bcombined\b",
        "time": r"\b(?:hours?|minutes?|days?|weeks?|months?|years?)\b",
        "questions": r"\?",
        "sentences": r"[.!?](?:\s|$)",
        "commas": r",",
        "conditions": r"\bif\b|\bwhen\b|\bafter\b|\bbefore\b",
        "remainder": r"\bremain|\bleft\b|\brest\b",
        "average": r"\baverage\b|\bmean\b",
        "ratio": r"\bratio\b|\bproportion",
        "commerce": r"\bprofit\b|\bcost|\bprice\b|\bspen[dt]|\bearn|\bsell|\bbuy|\bbought\b|\bsold\b",
    }.items()
}


def _clean(prompt: str) -> str:
    return " ".join(_MARKERS.sub(" ", prompt).split()).lower()


class TextFeaturizer:
    """Turn prompts (and optional per-prompt labels) into a dense ``N x (hash_dim + counts + one-hot)`` matrix."""

    def __init__(self, *, hash_dim: int = 1024, categorical: Sequence[str] = ()) -> None:
        self.hash_dim = hash_dim
        self.categorical = tuple(categorical)
        self.levels: dict[str, list[str]] = {name: [] for name in self.categorical}

    @property
    def n_dense(self) -> int:
        """How many non-hashed columns follow the hashed ones."""
        return len(COUNTS) + 5 + sum(len(levels) for levels in self.levels.values())

    def learn_levels(self, meta: Sequence[Mapping[str, Any]] | None) -> None:
        """Remember the values each categorical feature takes in the training data."""
        for name in self.categorical:
            seen = {str(m[name]) for m in (meta or ()) if m.get(name) not in (None, "")}
            self.levels[name] = sorted(seen)

    def transform(self, prompts: Sequence[str], meta: Sequence[Mapping[str, Any]] | None = None) -> NDArray[np.float32]:
        """Feature rows for ``prompts``; ``meta[i]`` holds prompt ``i``'s categorical labels (missing = unknown)."""
        rows = np.zeros((len(prompts), self.hash_dim + self.n_dense), dtype=np.float32)
        for i, prompt in enumerate(prompts):
            self._fill(rows[i], prompt, meta[i] if meta is not None else {})
        return rows

    def _fill(self, row: NDArray[np.float32], prompt: str, labels: Mapping[str, Any]) -> None:
        text = _clean(prompt)
        words = _WORDS.findall(text)
        for token in [*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))]:
            code = zlib.crc32(token.encode())
            row[code % self.hash_dim] += 1.0 if (code >> 20) & 1 else -1.0
        column = self.hash_dim
        for pattern in COUNTS.values():
            row[column] = len(pattern.findall(text))
            column += 1
        numbers = [float(n.replace(",", "")) for n in _NUMBERS.findall(text)] or [0.0]
        row[column : column + 5] = (
            len(words),
            math.log1p(len(text)),
            math.log1p(max(numbers)),
            len(set(numbers)),
            math.log1p(sum(numbers)),
        )
        column += 5
        for name in self.categorical:
            value = str(labels.get(name, ""))
            for level in self.levels[name]:
                row[column] = 1.0 if value == level else 0.0
                column += 1

    def to_dict(self) -> dict[str, Any]:
        return {"hash_dim": self.hash_dim, "categorical": list(self.categorical), "levels": self.levels}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextFeaturizer:
        featurizer = cls(hash_dim=int(data["hash_dim"]), categorical=data["categorical"])
        featurizer.levels = {str(k): [str(v) for v in vs] for k, vs in data["levels"].items()}
        return featurizer
