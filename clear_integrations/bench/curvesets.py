"""Loaders of measured accuracy-at-budget curves: the predictive-scheduling CSV folder and our JSONL schema.

Both return a :class:`CurveSet`: question ids, prompts, the curves as one
:class:`~clear_integrations.curves.curve.CurveBatch`, and per-question metadata.

- Predictive-scheduling layout (a folder, as in ``shared/data/predictive-scheduling-gsm8k``): CSV files with
  ``question_id``, ``question_text`` and ``early_stop_correct_proportions`` (a list of accuracies at 16, 32, ...,
  256 tokens; rounded to 2 decimals here, as measured). Files under a ``*with_difficulty`` folder add
  ``model_predicted_difficulty`` (a cheap model's label of the question, usable as an input); the ``difficulty``
  column is derived from the outcomes and is never loaded.
- JSONL, one object per line: ``{"id", "prompt", "budgets": [...], "accuracy": [...], "meta": {...}}``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..curves.curve import CurveBatch
from ..errors import InvalidCurve

__all__ = ["PS_BUDGETS", "CurveSet", "load_curves", "load_jsonl", "load_predictive_scheduling", "write_jsonl"]

PS_BUDGETS = tuple(range(16, 257, 16))
_LEAKY_COLUMNS = frozenset({"difficulty"})


@dataclass(frozen=True)
class CurveSet:
    """Measured curves with the prompts they belong to."""

    ids: list[str]
    prompts: list[str]
    curves: CurveBatch
    meta: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, indices: ArrayLike) -> CurveSet:
        """The subset at ``indices`` (in that order)."""
        index = np.asarray(indices, dtype=np.int64)
        meta = [self.meta[i] for i in index] if self.meta else []
        return CurveSet([self.ids[i] for i in index], [self.prompts[i] for i in index], self.curves.take(index), meta)


def _parse_curve(text: str, where: str) -> list[float]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidCurve("early_stop_correct_proportions", text[:80], f"is not a list ({where}): {exc}") from exc
    if not isinstance(values, list) or len(values) != len(PS_BUDGETS):
        raise InvalidCurve("early_stop_correct_proportions", text[:80], f"must list {len(PS_BUDGETS)} values ({where})")
    return [round(float(v), 2) for v in values]


def load_predictive_scheduling(path: str | Path) -> CurveSet:
    """Load a predictive-scheduling folder (or one CSV file), sorted by question id.

    If the folder has a ``gsm8k_results_with_difficulty`` subfolder, it is read instead of ``gsm8k_results`` so
    that ``model_predicted_difficulty`` lands in ``meta`` (the curves are identical in both).
    """
    root = Path(path)
    if root.is_file():
        files = [root]
    else:
        preferred = root / "gsm8k_results_with_difficulty"
        folder = (
            preferred if preferred.is_dir() else (root / "gsm8k_results" if (root / "gsm8k_results").is_dir() else root)
        )
        files = sorted(folder.glob("*.csv"))
    if not files:
        raise InvalidCurve("path", str(path), "holds no predictive-scheduling CSV files")
    rows: dict[str, tuple[str, list[float], dict[str, Any]]] = {}
    for file in files:
        with file.open(newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                meta = {
                    key: value
                    for key, value in row.items()
                    if key not in _LEAKY_COLUMNS
                    and key not in ("question_id", "question_text", "early_stop_correct_proportions")
                    and value not in (None, "")
                    and key != "gpt_assessment"
                }
                curve = _parse_curve(row["early_stop_correct_proportions"], f"{file.name}:{number}")
                rows[row["question_id"]] = (row["question_text"], curve, meta)
    ids = sorted(rows, key=lambda q: (q.rsplit("_", 1)[0], int(q.rsplit("_", 1)[1]) if q[-1].isdigit() else 0))
    matrix = np.array([rows[q][1] for q in ids])
    return CurveSet(ids, [rows[q][0] for q in ids], CurveBatch(PS_BUDGETS, matrix), [rows[q][2] for q in ids])


def load_jsonl(path: str | Path) -> CurveSet:
    """Load our JSONL schema. All lines must share one budget grid."""
    ids: list[str] = []
    prompts: list[str] = []
    values: list[list[float]] = []
    meta: list[dict[str, Any]] = []
    grid: list[int] | None = None
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            budgets = [int(b) for b in record["budgets"]]
            if grid is None:
                grid = budgets
            elif budgets != grid:
                raise InvalidCurve("budgets", budgets, f"line {number} differs from the first line's grid {grid}")
            ids.append(str(record["id"]))
            prompts.append(str(record["prompt"]))
            values.append([float(a) for a in record["accuracy"]])
            meta.append(dict(record.get("meta") or {}))
    if grid is None:
        raise InvalidCurve("path", str(path), "holds no curves")
    return CurveSet(ids, prompts, CurveBatch(grid, np.array(values)), meta)


def write_jsonl(curves: CurveSet, path: str | Path) -> None:
    """Write a curve set in our JSONL schema."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for i, curve in enumerate(curves.curves):
            record = {
                "id": curves.ids[i],
                "prompt": curves.prompts[i],
                "budgets": curve.budgets.tolist(),
                "accuracy": curve.values.tolist(),
                "meta": curves.meta[i] if curves.meta else {},
            }
            handle.write(json.dumps(record) + "\n")


def load_curves(path: str | Path) -> CurveSet:
    """Load by shape: a ``.jsonl`` file, else the predictive-scheduling layout."""
    return load_jsonl(path) if str(path).endswith(".jsonl") else load_predictive_scheduling(path)


def synthetic_curves(n: int, *, seed: int = 0, budgets: Sequence[int] = PS_BUDGETS) -> CurveSet:
    """S-shaped curves with random thresholds, plateaus and noise: a stand-in when no data is at hand."""
    rng = np.random.default_rng(seed)
    grid = np.asarray(budgets, dtype=np.float64)
    tau = rng.gamma(2.0, 40.0, size=n)
    ceiling = rng.beta(4, 1.5, size=n)
    rate = rng.uniform(0.02, 0.08, size=n)
    x = np.maximum(grid[None, :] - tau[:, None], 0.0)
    values = ceiling[:, None] * (1 - (1 + rate[:, None] * x) * np.exp(-rate[:, None] * x))
    noisy = np.clip(np.round(values + rng.normal(0, 0.03, size=values.shape), 2), 0, 1)
    ids = [f"synthetic_{i}" for i in range(n)]
    return CurveSet(ids, ids.copy(), CurveBatch(list(budgets), noisy), [{} for _ in range(n)])
