"""Measure accuracy-at-budget curves for your own model: ``calibrate(problems, generator, budgets=..., ...)``.

For every problem, every sample ``s`` and every budget ``b`` (ascending), the generator answers the question with
its reasoning capped at ``b`` completion tokens (``max_tokens=b``: the provider stops, nothing is cut afterwards).
If the reasoning was cut (``finish_reason == "length"``), a *forced-answer probe* asks for the final answer with a
few more tokens that do not count toward ``b``; if it ended by itself, its own text is graded. The accuracy at
``b`` is the share of the samples that were right. A sample that ended by itself within ``b`` is not re-run at the
larger budgets: a longer cap cannot change a trace that already ended (exactly so for a seeded local model), so its
answer is reused, as the predictive-scheduling data does with nested budgets. A :class:`NestedGenerator` (the
local llama.cpp model) goes further: it samples one trace per sample up to the largest budget and cuts its token
list at every budget, which equals separate capped calls (tested at temperature 0) and costs ``max(budgets)``
tokens per sample instead of ``sum(budgets)``.

One JSONL line per problem (our curve schema, readable by :func:`clear_integrations.bench.curvesets.load_jsonl`) is
written and flushed as soon as the problem is done, so an interrupted run resumes where it stopped: problems
whose id is already in the file are skipped; a file written with other budgets or samples is refused.

Generators (:class:`~.generators.Generator`; an optional ``name`` attribute names the model in
``meta``) live in :mod:`clear_integrations.calibration.generators`, re-exported here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..bench.curvesets import CurveSet, load_jsonl
from ..errors import CalibrationMismatch, InvalidInput, InvalidUsage
from ..validation import check_tokens
from .generators import (
    Generation,
    Generator,
    LangChainGenerator,
    LlamaCppGenerator,
    LlamaIndexGenerator,
    NestedGenerator,
    load_generator,
)
from .grading import Grader, grader_for
from .problems import Problem

__all__ = [
    "CalibrationMismatch",
    "Generation",
    "Generator",
    "LangChainGenerator",
    "LlamaCppGenerator",
    "LlamaIndexGenerator",
    "NestedGenerator",
    "ProblemGrader",
    "Progress",
    "calibrate",
    "check_budgets",
    "default_grade",
    "load_generator",
]

Progress = Callable[[int, int], None]
ProblemGrader = Callable[[Problem, str], bool]


def default_grade(problem: Problem, text: str) -> bool:
    """Grade ``text`` with the grader of ``problem.kind`` (numeric for GSM8K, boxed answer for MATH)."""
    grader: Grader = grader_for(problem.kind)
    return grader(text, problem.answer)


def check_budgets(budgets: Sequence[int]) -> list[int]:
    """Positive integer budgets, strictly increasing once sorted (duplicates are refused)."""
    if isinstance(budgets, str | bytes) or len(budgets) == 0:
        raise InvalidInput("budgets", budgets, "must be a non-empty sequence of token budgets")
    clean = sorted(check_tokens("budgets", b, minimum=1) for b in budgets)
    if len(set(clean)) != len(clean):
        raise InvalidInput("budgets", list(budgets), "must not repeat a budget")
    return clean


def _read_done(out: Path, budgets: list[int], samples: int) -> set[str]:
    """Ids already in ``out``; a torn last line (interrupted write) is dropped, other settings are refused."""
    if not out.exists():
        return set()
    raw = out.read_text(encoding="utf-8")
    lines = raw.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        try:
            json.loads(lines[-1])
            lines[-1] += "\n"
        except json.JSONDecodeError:
            lines.pop()
        out.write_text("".join(lines), encoding="utf-8")
    done: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput("out", f"{out}:{number}", f"is not a calibration JSONL line: {exc}") from exc
        found = [int(b) for b in record.get("budgets", [])]
        if found != budgets:
            raise CalibrationMismatch(
                "budgets", budgets, f"{out} was written with budgets {found} (line {number}); use another --out"
            )
        found_samples = (record.get("meta") or {}).get("samples")
        if found_samples != samples:
            raise CalibrationMismatch(
                "samples", samples, f"{out} was written with samples={found_samples} (line {number}); use another --out"
            )
        done.add(str(record["id"]))
    return done


def _measure(
    problem: Problem,
    generator: Generator,
    budgets: list[int],
    samples: int,
    seed: int,
    grade: ProblemGrader,
    nested: NestedGenerator | None,
) -> tuple[list[float], dict[str, Any]]:
    correct = [0] * len(budgets)
    tokens = [0] * len(budgets)
    finished = [0] * len(budgets)
    estimated = False
    for sample in range(samples):
        sample_seed = seed + sample
        cuts = nested.generate_nested(problem.question, budgets, seed=sample_seed) if nested is not None else None
        if cuts is not None and len(cuts) != len(budgets):
            raise InvalidUsage("generate_nested", len(cuts), f"must return one generation per budget ({len(budgets)})")
        ended: tuple[bool, int] | None = None  # (correct, tokens) of a trace that ended by itself
        for k, budget in enumerate(budgets):
            if ended is None:
                if cuts is not None:
                    generation = cuts[k]
                else:
                    generation = generator.generate(problem.question, budget, seed=sample_seed)
                used = check_tokens("completion_tokens", generation.completion_tokens, error=InvalidUsage)
                estimated = estimated or generation.estimated
                if used > budget and not generation.estimated:
                    raise InvalidUsage(
                        "completion_tokens", used, f"exceeds max_tokens={budget}: the generator did not honour the cap"
                    )
                if generation.finish_reason == "length":
                    right = grade(problem, generator.answer(problem.question, generation.text, seed=sample_seed))
                    correct[k] += right
                    tokens[k] += used
                    continue
                ended = (grade(problem, generation.text), used)
            correct[k] += ended[0]
            tokens[k] += ended[1]
            finished[k] += 1
    accuracy = [c / samples for c in correct]
    meta: dict[str, Any] = {
        "model": _name(generator),
        "samples": samples,
        "seed": seed,
        "kind": problem.kind,
        "gold": problem.answer,
        "method": "capped" if nested is None else "nested",
        "tokens": tokens,
        "finished": finished,
        "estimated": estimated,
    }
    return accuracy, meta


def _name(generator: Generator) -> str:
    name = getattr(generator, "name", None)
    return name if isinstance(name, str) and name else type(generator).__name__


def calibrate(
    problems: Sequence[Problem],
    generator: Generator,
    *,
    budgets: Sequence[int],
    samples: int,
    out: str | Path,
    grade: ProblemGrader = default_grade,
    progress: Progress | None = None,
    resume: bool = True,
    seed: int = 0,
    nested: bool = True,
) -> CurveSet:
    """Measure one accuracy-at-budget curve per problem and write them to ``out`` (JSONL, one line per problem).

    ``samples`` answers per problem and budget (sample ``s`` uses seed ``seed + s``). ``grade(problem, text)``
    decides correctness (default: by ``problem.kind``). ``progress(done, total)`` is called at the start and
    after every problem. With ``resume`` (default), problems already in ``out`` are skipped; without it, ``out`` is
    overwritten. With ``nested`` (default) a :class:`NestedGenerator` samples one trace per sample and cuts it at
    every budget; otherwise (or for a plain :class:`Generator`) every budget is a separate capped call.
    Returns the curves of ``problems``, in their order.

    ``meta`` per line: ``model``, ``samples``, ``seed``, ``kind``, ``gold``, ``grader``, ``tokens`` (completion
    tokens summed over the samples, per budget; probe tokens excluded), ``finished`` (samples that ended by
    themselves within each budget), ``estimated`` (whether any token count was estimated), ``method``
    (``"nested"`` or ``"capped"``), ``seconds``.
    """
    grid = check_budgets(budgets)
    count = check_tokens("samples", samples, minimum=1, error=InvalidInput)
    ids = [problem.id for problem in problems]
    if not ids:
        raise InvalidInput("problems", problems, "must not be empty")
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise InvalidInput("problems", duplicate, "ids must be unique")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if resume:
        done = _read_done(path, grid, count)
    else:
        path.write_text("", encoding="utf-8")
        done = set()
    grader_name = getattr(grade, "__name__", type(grade).__name__)
    cutter = generator if nested and isinstance(generator, NestedGenerator) else None
    total = len(problems)
    finished = sum(1 for problem in problems if problem.id in done)
    if progress is not None:
        progress(finished, total)
    with path.open("a", encoding="utf-8") as handle:
        for problem in problems:
            if problem.id in done:
                continue
            started = time.perf_counter()
            accuracy, meta = _measure(problem, generator, grid, count, seed, grade, cutter)
            meta["grader"] = grader_name
            meta["seconds"] = round(time.perf_counter() - started, 3)
            record = {"id": problem.id, "prompt": problem.question, "budgets": grid, "accuracy": accuracy, "meta": meta}
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            done.add(problem.id)
            finished += 1
            if progress is not None:
                progress(finished, total)
    curves = load_jsonl(path)
    index = {curve_id: i for i, curve_id in enumerate(curves.ids)}
    return curves.take([index[problem.id] for problem in problems])
