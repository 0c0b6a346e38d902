"""``clear-integrations ledger show|set|reset|apply`` on memory and SQLite URLs."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from clear_integrations.cli.ledger import add_ledger_commands, main
from clear_integrations.ledger import Budget, open_ledger

ROOT = Path(__file__).resolve().parents[1]

BUDGETS = """
[budgets.acme]
tokens = 100000
window = "1d"

[budgets."acme/batch"]
tokens = 20000
mode = "soft"
"""


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://cli-{uuid.uuid4().hex}"
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_set_show_reset(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ledger", "set", url, "acme", "100_000", "--window", "1d")
    assert code == 0 and "100,000" in out
    ledger = open_ledger(url)
    assert ledger.get_budget("acme") == Budget(100_000, "1d")
    ledger.commit(ledger.reserve("acme/s1", 500), 320)
    held = ledger.reserve("acme", 40)
    code, out, _ = run(capsys, "show", url, "acme", "acme/s1")  # "ledger" may be left out
    header, acme, session = out.splitlines()
    assert header.split() == ["account", "limit", "window", "mode", "spent", "held", "remaining", "over"]
    assert acme.split() == ["acme", "100,000", "1d", "hard", "320", "40", "99,640", "0"]
    assert session.split() == ["acme/s1", "-", "-", "-", "320", "0", "-", "0"]
    code, out, _ = run(capsys, "ledger", "reset", url, "acme")
    assert code == 0 and out.splitlines()[1].split()[4:6] == ["0", "40"]
    ledger.release(held)
    code, out, _ = run(capsys, "ledger", "show", url)  # every account the log has seen
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["acme", "acme/s1"]
    ledger.close()


def test_apply_and_show_a_budgets_file(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(BUDGETS)
    assert run(capsys, "ledger", "apply", url, str(path))[1].strip().endswith("2 of 2 budgets changed")
    assert run(capsys, "ledger", "apply", url, str(path))[1].strip().endswith("0 of 2 budgets changed")
    code, out, _ = run(capsys, "ledger", "show", url, "--budgets", str(path))
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows == [
        ["acme", "100,000", "1d", "hard", "0", "0", "100,000", "0"],
        ["acme/batch", "20,000", "-", "soft", "0", "0", "20,000", "0"],
    ]


def test_an_empty_ledger_says_how_to_add_accounts(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ledger", "show", url)
    assert code == 0 and "ledger set URL ACCOUNT TOKENS" in out


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["set", "{url}", "acme", "lots"], "tokens="),
        (["set", "{url}", "acme", "-5"], "tokens="),
        (["set", "{url}", "acme", "5.5"], "tokens="),
        (["set", "{url}", "acme", "5", "--window", "1y"], "window="),
        (["set", "{url}", "a b", "5"], "account="),
        (["reset", "{url}", "acme/s/x"], "account="),
        (["show", "{url}", "bad account"], "account="),
        (["show", "ftp://x", "acme"], "url="),
        (["apply", "{url}", "{bad}"], "budgets.acme.window="),
        (["apply", "{url}", "{missing}"], "No such file"),
    ],
)
def test_bad_input_exits_2_naming_the_field(
    argv: list[str], field: str, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[budgets.acme]\ntokens = 5\nwindow = "monthly"\n')
    filled = [a.format(url=url, bad=bad, missing=tmp_path / "none.toml") for a in argv]
    code, out, err = run(capsys, "ledger", *filled)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and field in err


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["ledger", "set", "memory://", "acme", "5", "--mode", "medium"])
    assert caught.value.code == 2 and "--mode" in capsys.readouterr().err


def test_an_unreachable_store_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "ledger", "show", "redis://127.0.0.1:1/0", "acme")
    assert code == 1 and "unavailable" in err


def test_registers_on_a_host_parser(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="clear-integrations")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_ledger_commands(commands)
    args = parser.parse_args(["ledger", "set", url, "beta", "7", "--mode", "soft"])
    assert args.run(args) == 0
    assert open_ledger(url).get_budget("beta") == Budget(7, None, "soft")


def test_runs_as_a_module(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "clear_integrations.cli.ledger"]
    done = subprocess.run([*command, "set", url, "acme", "900"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*command, "show", url, "acme"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.splitlines()[1].split()[:2] == ["acme", "900"]
