"""Draw docs/img/concepts.png: an S-shaped accuracy curve, its concave hull and two prices.

    python docs/scripts/concepts_figure.py            # needs matplotlib (the `plot` extra)

Everything plotted comes from the library: `ShiftedSurge` for the curve, `EmpiricalCurve.hull()` for the hull,
`ShiftedSurge.best_budget(price)` for the budget a query buys at a price.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from clear_integrations import EmpiricalCurve, ShiftedSurge

OUT = Path(__file__).resolve().parents[1] / "img" / "concepts.png"
LOW_PRICE, HIGH_PRICE = 0.004, 0.008  # accuracy per token


def main(out: Path = OUT) -> Path:
    curve = ShiftedSurge(60, ceiling=0.9, rate=0.06)
    grid = np.arange(0, 257, 1)
    accuracy = curve.accuracy(grid)
    hull_b, hull_a = EmpiricalCurve(grid[1:], accuracy[1:], interpolation="linear").hull()
    abandon_price = hull_a[1] / hull_b[1]  # slope of the hull's first segment: above it the query gets nothing

    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=100)
    ax.plot(grid, accuracy, color="tab:blue", lw=2.2, label="accuracy at budget A(b) (S-shaped)")
    ax.plot(hull_b, hull_a, color="tab:blue", ls="--", lw=1.2, label="upper concave hull through (0, 0)")

    best = curve.best_budget(LOW_PRICE)
    line = curve.accuracy(np.array([best]))[0] + LOW_PRICE * (grid - best)
    ax.plot(grid, line, color="tab:green", lw=1.2,
            label=f"price {LOW_PRICE}/token: buys b = {best} (max of A(b) - price x b)")
    ax.plot([best], curve.accuracy(np.array([best])), "o", color="tab:green")
    ax.plot(grid, HIGH_PRICE * grid, color="tab:red", lw=1.2,
            label=f"price {HIGH_PRICE}/token > {abandon_price:.4f}: b = 0, abandoned")

    ax.axvline(curve.tau, color="grey", lw=0.8, ls=":")
    ax.text(curve.tau + 2, 0.1, "threshold tau", color="grey", fontsize=8)
    for x, name in ((22, "strict"), (95, "surge"), (200, "ample")):
        ax.text(x, 0.02, name, color="grey", fontsize=9, ha="center")

    ax.set_xlim(0, 256)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("completion tokens b")
    ax.set_ylabel("expected accuracy")
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, 0.93), fontsize=7.5, frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
