from __future__ import annotations

import json
from pathlib import Path

import pytest

from clear_integrations.cli.main import main


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_calibrate_then_bench_on_the_local_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("llama_cpp")
    out = tmp_path / "curves.jsonl"
    args = ["calibrate", "--limit", "4", "--budgets", "8,16", "--samples", "1", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and all(line["budgets"] == [8, 16] for line in lines)
    assert all(0.0 <= a <= 1.0 for line in lines for a in line["accuracy"])
    assert main(args) == 0  # resumed: nothing left to run, same file
    assert len(out.read_text().splitlines()) == 4
    assert main(["bench", "--train", str(out), "--folds", "2", "--budgets", "8,16"]) == 0
    assert "oracle" in capsys.readouterr().out
