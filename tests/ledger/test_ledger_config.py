"""Budgets from TOML and YAML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from clear_integrations.errors import InvalidAccount, InvalidBudget
from clear_integrations.ledger import Budget, Ledger, load_budgets

TOML = """
[budgets.acme]
tokens = 100000
window = "1d"

[budgets."acme/batch-jobs"]
tokens = 20000
mode = "soft"
"""

EXPECTED = {"acme": Budget(100_000, "1d"), "acme/batch-jobs": Budget(20_000, mode="soft")}


def test_load_toml(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(TOML)
    assert load_budgets(path) == EXPECTED
    assert load_budgets(str(path)) == EXPECTED


def test_load_yaml(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "budgets.yaml"
    path.write_text(
        "budgets:\n  acme: {tokens: 100000, window: 1d}\n  acme/batch-jobs:\n    tokens: 20000\n    mode: soft\n"
    )
    assert load_budgets(path) == EXPECTED


@pytest.mark.parametrize(
    ("text", "error", "field"),
    [
        ("[budgets.acme]\ntokens = -1\n", InvalidBudget, "budgets.acme.tokens"),
        ("[budgets.acme]\ntokens = 1.5\n", InvalidBudget, "budgets.acme.tokens"),
        ('[budgets.acme]\ntokens = 10\nwindow = "1 month"\n', InvalidBudget, "budgets.acme.window"),
        ('[budgets.acme]\ntokens = 10\nmode = "loose"\n', InvalidBudget, "budgets.acme.mode"),
        ('[budgets.acme]\nwindow = "1d"\n', InvalidBudget, "budgets.acme.tokens"),
        ("[budgets.acme]\ntokens = 10\nlimit = 5\n", InvalidBudget, "budgets.acme"),
        ('[budgets."a/b/c"]\ntokens = 10\n', InvalidAccount, "budgets.a/b/c"),
        ("[budgets]\nacme = 10\n", InvalidBudget, "budgets.acme"),
        ("[other]\nx = 1\n", InvalidBudget, "budgets"),
        ("budgets = [\n", InvalidBudget, "path"),
    ],
)
def test_bad_files_name_the_entry(tmp_path: Path, text: str, error: type[Exception], field: str) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(text)
    with pytest.raises(error) as refused:
        load_budgets(path)
    assert getattr(refused.value, "field", None) == field


def test_apply_a_file(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(TOML)
    assert ledger.apply_budgets(load_budgets(path)) == 2
    assert ledger.get_budget("acme/batch-jobs") == Budget(20_000, mode="soft")
    path.write_text(TOML.replace("20000", "25000"))
    assert ledger.apply_budgets(load_budgets(path)) == 1
    assert ledger.balance("acme/batch-jobs").limit == 25_000
