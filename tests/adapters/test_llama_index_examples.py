"""The LlamaIndex examples run offline, as a user would run them (a fresh interpreter, no network)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(name: str) -> str:
    env = {**os.environ, "NO_PROXY": "*", "OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": "", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_llama_index_agent_example() -> None:
    out = _run("llama_index_agent.py")
    assert "[acme] add({'a': 1, 'b': 2}) -> 3" in out and "[acme] multiply({'a': 3, 'b': 4}) -> 12" in out
    assert "tiny-co: \"I can't answer this within the token budget.\"" in out  # ended gracefully
    assert "acme spent" in out and "tiny-co spent" in out and "0 held" in out


def test_llama_index_query_example() -> None:
    out = _run("llama_index_query.py")
    assert out.count("Q: ") == 4 and "within the token budget" in out
    spent = int(re.search(r"acme spent (\d+) of 600 tokens", out).group(1))  # type: ignore[union-attr]
    assert 600 - 130 <= spent <= 600  # the last question that fits its prompt plus min_tokens got what was left
