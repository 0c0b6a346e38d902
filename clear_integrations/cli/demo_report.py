"""The demo's HTML report: the decision table and the Pareto chart, in one self-contained file."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..allocate import allocate
from ..baselines import uniform
from ..calibration.problems import Problem

__all__ = ["pareto_png", "write_report"]


def pareto_png(problems: Sequence[Problem]) -> bytes:
    """Expected correct answers against tokens per query, CLEAR and uniform, on the demo estimator's curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .demo import QuantityEstimator

    curves = QuantityEstimator().predict([p.question for p in problems])
    averages = [16, 32, 48, 64, 96, 128, 192]
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for name, allocator in (("CLEAR", allocate), ("uniform", uniform)):
        points = [allocator(curves, avg * len(curves)) for avg in averages]
        axes.plot(
            [p.spent / len(curves) for p in points], [p.expected_accuracy for p in points], marker="o", label=name
        )
    axes.set_xlabel("tokens per query")
    axes.set_ylabel("expected accuracy (estimator's curves)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def write_report(path: Path, rows: Sequence[Any], problems: Sequence[Problem], budgets: dict[str, int]) -> None:
    """Write the report: budgets, the per-query decisions of every policy, and the Pareto chart."""
    cells = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(value))}</td>"
            for value in (
                row.policy,
                row.tenant,
                row.question,
                f"{row.threshold:.0f}",
                "-" if row.price is None else f"{row.price:.2e}",
                row.decision,
                row.tokens,
                row.answer,
            )
        )
        + "</tr>"
        for row in rows
    )
    chart = base64.b64encode(pareto_png(problems)).decode()
    spent = {(r.policy, r.tenant): 0 for r in rows}
    for row in rows:
        spent[(row.policy, row.tenant)] += row.tokens
    summary = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{b}</td><td>{spent.get(('clear', t), 0)}</td>"
        f"<td>{spent.get(('uniform', t), 0)}</td></tr>"
        for t, b in budgets.items()
    )
    path.write_text(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>clear-integrations demo</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style></head>
<body><h1>clear-integrations demo</h1>
<h2>Budgets</h2><table><tr><th>tenant</th><th>budget</th><th>CLEAR spent</th><th>uniform spent</th></tr>
{summary}</table>
<h2>Pareto chart</h2><img alt="Pareto chart" src="data:image/png;base64,{chart}">
<h2>Decisions</h2><table><tr><th>policy</th><th>tenant</th><th>question</th><th>threshold</th><th>price</th>
<th>decision</th><th>tokens</th><th>answer</th></tr>{cells}</table></body></html>
""",
        encoding="utf-8",
    )
