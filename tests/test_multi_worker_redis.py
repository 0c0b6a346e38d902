"""The multi-process example against a real Redis: four spawned workers serve one tenant through one ledger.

They skip without a Redis server at REDIS_URL (default redis://127.0.0.1:6379/15), except when the CI environment
variable is set: then they fail, so CI cannot silently lose them. The example uses its own unique key prefix and
deletes its keys at the end; these tests check that too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "multi_worker_redis.py"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def _require_redis() -> None:
    """Skip without a Redis server, or fail when the CI environment variable is set."""
    try:
        import redis
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the redis package is required in CI")
        pytest.skip("the redis package is not installed")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI but does not answer at {REDIS_URL}")
        pytest.skip(f"no Redis server at {REDIS_URL}")
    finally:
        client.close()


def _keys_left(prefix: str) -> list[Any]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return list(client.scan_iter(match=f"{prefix}*", count=1000))
    finally:
        client.close()


def _run(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run the example as a user would (a fresh interpreter); its JSON summary and its output."""
    _require_redis()
    summary = tmp_path / "summary.json"
    env = {**os.environ, "NO_PROXY": "*", "OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--redis", REDIS_URL, "--json", str(summary), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(summary.read_text())
    assert result["failures"] == []
    assert _keys_left(result["prefix"]) == []  # the example cleans up after itself
    return result, done.stdout


def test_four_workers_share_one_budget_and_one_price(tmp_path: Path) -> None:
    result, out = _run(tmp_path, "--workers", "4", "--queries", "200")
    assert result["spent"] <= result["budget"]
    assert result["held"] == 0
    assert result["answered"] + result["abandoned"] == result["queries"] == 200
    assert result["lost"] == 0 and result["killed"] == []
    # the price funds the short questions and abandons the long ones, before the budget runs out
    assert result["answered"] > 0 and result["abandoned"] > 0 and result["exhausted"] == 0
    assert all(worker["answered"] > 0 for worker in result["per_worker"])
    # one price state in Redis took (nearly) every worker's decisions (a decision whose compare-and-set loses eight
    # races in a row is still served, at the price it read) ...
    assert result["shared_decisions"] >= 0.9 * 200
    # ... so the workers' final prices agree (measured: within 0.3-2% of each other)
    assert result["price_spread"] <= 1.5
    assert all(f"worker {i}:" in out for i in range(4))
    assert "spread max/min" in out


def test_the_hard_budget_holds_when_the_pacing_target_is_too_generous(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, "--queries", "120", "--budget", "6000", "--tokens-per-query", "200")
    assert result["exhausted"] > 0  # the ledger, not the price, stopped the late queries
    assert result["spent"] <= result["budget"] == 6000
    assert result["held"] == 0
    assert result["answered"] + result["abandoned"] == 120


def test_a_worker_killed_mid_call_holds_nothing_once_its_lease_runs_out(tmp_path: Path) -> None:
    result, out = _run(tmp_path, "--queries", "80", "--lease", "2", "--kill-worker-after", "3")
    assert result["killed"] == [0]
    assert result["lost"] > 0  # the dead worker's in-flight query and the rest of its share
    assert result["answered"] + result["abandoned"] + result["lost"] == 80
    assert result["held"] == 0  # its reservation expired with its lease
    assert result["expired"]  # ... as the ledger's audit log says
    assert result["spent"] <= result["budget"]
    assert "was killed holding" in out
