"""Every example runs offline, as a user would run it (a fresh interpreter, no network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, *args: str) -> str:
    env = {**os.environ, "NO_PROXY": "*", "OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=240, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_langchain_chain_example() -> None:
    out = _run("langchain_chain.py")
    assert "acme spent" in out and out.count("words") == 10


def test_per_tenant_budgets_example(tmp_path: Path) -> None:
    out = _run("per_tenant_budgets.py", str(tmp_path / "budgets.db"))
    assert "applied 3 budgets" in out and "globex/batch-jobs" in out and "(soft)" in out


@pytest.mark.slow
def test_langchain_chain_example_on_the_local_model() -> None:
    pytest.importorskip("llama_cpp")
    out = _run("langchain_chain.py", "--local")
    assert "acme spent" in out


def test_langchain_agent_example() -> None:
    out = _run("langchain_agent.py")
    assert "acme: 3 model steps" in out
    assert "token budget for this task is spent" in out  # the tiny tenant ended gracefully
