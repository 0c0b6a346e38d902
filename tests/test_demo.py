"""The main job end to end on the real local model: a chain and an agent for two tenants, and the HTML report."""

from __future__ import annotations

from pathlib import Path

import pytest

from clear_integrations.cli.main import main


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::ResourceWarning")
def test_demo_runs_both_frameworks_and_holds_every_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llama_index.llms.llama_cpp")
    db, report = tmp_path / "demo.db", tmp_path / "report.html"
    code = main(["demo", "--ledger", f"sqlite:///{db}", "--questions", "2", "--threads", "1", "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 0  # no tenant over its budget, nothing held
    assert "CLEAR: priced per query" in out and "uniform caps" in out and "ReActAgent" in out
    assert out.count("acme") >= 4 and out.count("globex") >= 4
    page = report.read_text()
    assert "data:image/png;base64," in page and "<td>clear</td>" in page and "<td>uniform</td>" in page
