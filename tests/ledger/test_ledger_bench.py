"""The ledger benchmark runs (tiny sizes; the figures themselves are not asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clear_integrations.bench.ledger_bench import main, run_ledger_bench


def test_run_ledger_bench_rows(tmp_path: Path) -> None:
    rows = run_ledger_bench(["memory://", f"sqlite:///{tmp_path / 'b.db'}"], pairs=40, clients=4, repeat=1)
    assert [(row["backend"], row["mode"]) for row in rows] == [
        ("memory", "single"),
        ("memory", "threads"),
        ("memory", "async"),
        ("sqlite", "single"),
        ("sqlite", "threads"),
        ("sqlite", "async"),
    ]
    assert all(row["pairs_per_s"] > 0 for row in rows)
    assert rows[0]["vs_single"] == 1.0
    assert rows[3]["context"].startswith("fsync")


def test_main_prints_a_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "rows.json"
    argv = ["--url", "memory://", "--pairs", "20", "--clients", "2", "--repeat", "1", "--json", str(out_json)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pairs/s" in printed
    assert "memory" in printed
    assert out_json.exists()
