"""Readable tables, JSON and the Pareto plot for replay records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .replay import BenchRecord

__all__ = ["format_table", "write_json", "write_plot"]


def _ratio(value: float, base: float) -> str:
    return f"{value / base:5.2f}x" if base > 0 else "    -"


def _share(value: float, base: float, top: float) -> str:
    return f"{(value - base) / (top - base):5.0%}" if top - base > 1e-9 else "    -"


def format_table(records: Sequence[BenchRecord]) -> str:
    """One table per mode: accuracy of each policy by average budget, CLEAR against uniform and the oracle."""
    lines: list[str] = []
    for mode, stream in dict.fromkeys((r.mode, r.stream) for r in records):
        rows = [r for r in records if (r.mode, r.stream) == (mode, stream)]
        policies = list(dict.fromkeys(r.policy for r in rows))
        cell = {(r.policy, r.avg_budget): r for r in rows}
        estimated = [r for r in rows if r.predict_us is not None]
        estimators = sorted({r.estimator for r in estimated})
        lines.append(
            f"mode: {mode}   stream: {stream}   estimator: {', '.join(estimators) or '-'}   "
            f"queries scored: {max(r.queries for r in rows)}"
            + (
                f"   predict: {estimated[0].predict_us:.0f} us/prompt batched, "
                f"{estimated[0].predict_us_single:.0f} us one at a time"
                if estimated
                else ""
            )
        )
        header = "avg tokens " + "".join(f"{p:>16}" for p in policies)
        compare = "clear" in policies and "uniform" in policies
        online = mode == "online"
        if online:
            header += "".join(f"{p + ' online/batch':>22}" for p in policies)
        if compare:
            header += "   clear/uniform  share of oracle gain  clear tokens  abandoned   price"
        lines.append(header)
        for avg in sorted({r.avg_budget for r in rows}):
            line = f"{avg:>10} " + "".join(
                f"{cell[(p, avg)].accuracy:>16.3f}" if (p, avg) in cell else f"{'':>16}" for p in policies
            )
            if online:
                line += "".join(
                    f"{_ratio(cell[(p, avg)].accuracy, cell[(p, avg)].batch_accuracy or 0):>22}"
                    for p in policies
                    if (p, avg) in cell
                )
            if compare and ("clear", avg) in cell and ("uniform", avg) in cell:
                clear, base = cell[("clear", avg)], cell[("uniform", avg)].accuracy
                oracle = cell[("oracle", avg)].accuracy if ("oracle", avg) in cell else float("nan")
                price = f"{clear.shadow_price:8.2e}" if clear.shadow_price is not None else "       -"
                line += (
                    f"   {_ratio(clear.accuracy, base):>13}  {_share(clear.accuracy, base, oracle):>20}"
                    f"  {clear.tokens_spent:>12.1f}  {clear.abandoned_fraction:>9.1%}  {price}"
                )
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def write_json(records: Sequence[BenchRecord], path: str | Path) -> None:
    """One JSON object per record, in a list."""
    Path(path).write_text(json.dumps([r.to_dict() for r in records], indent=1), encoding="utf-8")


def write_plot(records: Sequence[BenchRecord], path: str | Path) -> None:
    """The Pareto chart: accuracy against tokens spent per query, one line per policy and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key in dict.fromkeys((r.mode, r.stream, r.policy) for r in records):
        rows = sorted((r for r in records if (r.mode, r.stream, r.policy) == key), key=lambda r: r.avg_budget)
        axes.plot(
            [r.tokens_spent for r in rows],
            [r.accuracy for r in rows],
            marker="o",
            label=f"{key[2]} ({key[0]}, {key[1]})",
        )
    axes.set_xlabel("tokens spent per query")
    axes.set_ylabel("mean accuracy")
    axes.set_title("Accuracy vs token cost")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
