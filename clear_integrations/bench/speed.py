"""How allocation time grows with the number of queries: sizes measured side by side in one run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..allocate import allocate
from .curvesets import synthetic_curves

__all__ = ["SpeedRow", "format_speed", "measure_speed"]


@dataclass(frozen=True, slots=True)
class SpeedRow:
    queries: int
    seconds: float
    segments_per_second: float


def measure_speed(
    sizes: Sequence[int] = (10_000, 100_000), *, avg_budget: int = 64, repeats: int = 3
) -> list[SpeedRow]:
    """Best-of-``repeats`` wall time of :func:`allocate` on synthetic 16-point curves of each size."""
    rows = []
    for size in sizes:
        curves = synthetic_curves(size, seed=size).curves
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            allocate(curves, avg_budget * size)
            best = min(best, time.perf_counter() - started)
        segments = size * len(curves.budgets)
        rows.append(SpeedRow(size, best, segments / best))
    return rows


def format_speed(rows: Sequence[SpeedRow]) -> str:
    lines = [f"{'queries':>10} {'seconds':>9} {'points/s':>12} {'time ratio':>11} {'size ratio':>11}"]
    for row in rows:
        first = rows[0]
        lines.append(
            f"{row.queries:>10} {row.seconds:>9.3f} {row.segments_per_second:>12.3g} "
            f"{row.seconds / first.seconds:>11.2f} {row.queries / first.queries:>11.1f}"
        )
    return "\n".join(lines)
