from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from clear_integrations import InvalidCurve, InvalidInput
from clear_integrations.bench.curvesets import (
    PS_BUDGETS,
    load_curves,
    load_jsonl,
    load_predictive_scheduling,
    synthetic_curves,
    write_jsonl,
)
from clear_integrations.bench.replay import cross_validation_splits, replay
from clear_integrations.bench.report import format_table, write_json
from clear_integrations.cli.main import main


def _write_ps_folder(root: Path, n: int = 40) -> Path:
    """A small folder in the predictive-scheduling layout, with the leaky `difficulty` column present."""
    folder = root / "gsm8k_results_with_difficulty"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    fields = [
        "dataset",
        "question_id",
        "question_text",
        "split",
        "early_stop_correct_proportions",
        "difficulty",
        "model_predicted_difficulty",
    ]
    for part in range(2):
        with (folder / f"gsm8k_Y_train_{part}_with_difficulty.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            for i in range(part * n // 2, (part + 1) * n // 2):
                tau = rng.integers(0, 12)
                values = [0.0] * tau + [0.1 * (k + 1) + 1e-17 for k in range(16 - tau)]
                writer.writerow(
                    {
                        "dataset": "gsm8k",
                        "question_id": f"train_{i}",
                        "question_text": f"<q>{i}</q>",
                        "split": "train",
                        "early_stop_correct_proportions": json.dumps([min(v, 1.0) for v in values]),
                        "difficulty": "hard",
                        "model_predicted_difficulty": "easy",
                    }
                )
    return root


def test_predictive_scheduling_loader_rounds_values_and_drops_the_leaky_column(tmp_path: Path) -> None:
    data = load_predictive_scheduling(_write_ps_folder(tmp_path))
    assert len(data) == 40 and data.ids[:3] == ["train_0", "train_1", "train_2"]
    assert data.curves.budgets.tolist() == list(PS_BUDGETS)
    assert np.all(data.curves.matrix == np.round(data.curves.matrix, 2))
    assert data.meta[0]["model_predicted_difficulty"] == "easy"
    assert all("difficulty" not in m for m in data.meta)


def test_jsonl_round_trip_and_grid_check(tmp_path: Path) -> None:
    data = synthetic_curves(5)
    path = tmp_path / "curves.jsonl"
    write_jsonl(data, path)
    again = load_curves(path)
    assert again.ids == data.ids and np.allclose(again.curves.matrix, data.curves.matrix)
    lines = path.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["budgets"] = bad["budgets"][:-1]
    bad["accuracy"] = bad["accuracy"][:-1]
    path.write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InvalidCurve, match="line 2"):
        load_jsonl(path)


def test_cross_validation_never_scores_a_curve_it_fitted() -> None:
    splits = cross_validation_splits(103, 5, seed=1)
    seen = np.concatenate([test for _, test in splits])
    assert sorted(seen.tolist()) == list(range(103))
    for train, test in splits:
        assert not set(train.tolist()) & set(test.tolist())
    with pytest.raises(InvalidInput, match="folds"):
        cross_validation_splits(3, 5, seed=0)


def test_replay_scores_clear_above_uniform_when_budgets_are_scarce() -> None:
    data = synthetic_curves(300, seed=4)
    records = replay(data, budgets=[32, 64], policies=["uniform", "clear", "oracle"], modes=["batch", "online"])
    cell = {(r.mode, r.policy, r.avg_budget): r for r in records}
    for avg in (32, 64):
        uniform, clear, oracle = (cell[("batch", p, avg)] for p in ("uniform", "clear", "oracle"))
        assert oracle.accuracy >= clear.accuracy >= uniform.accuracy
        assert clear.tokens_spent <= avg and uniform.tokens_spent <= avg
        assert cell[("online", "oracle", avg)].accuracy >= 0.9 * oracle.accuracy
    assert {
        "policy",
        "estimator",
        "mode",
        "stream",
        "avg_budget",
        "accuracy",
        "tokens_spent",
        "abandoned_fraction",
        "shadow_price",
    } <= set(records[0].to_dict())
    table = format_table(records)
    assert "clear/uniform" in table and "mode: online" in table


def test_cli_bench_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = tmp_path / "train.jsonl"
    write_jsonl(synthetic_curves(120, seed=2), train)
    out, plot = tmp_path / "out.json", tmp_path / "pareto.png"
    code = main(
        ["bench", "--train", str(train), "--budgets", "32,64", "--folds", "3", "--json", str(out), "--plot", str(plot)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "3-fold cross-validation" in printed and "oracle" in printed
    records = json.loads(out.read_text())
    assert {r["policy"] for r in records} == {"uniform", "proportional", "clear", "oracle"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_version_help_and_bad_budgets(capsys: pytest.CaptureFixture[str]) -> None:
    from clear_integrations import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "bench" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        main(["bench", "--budgets", "16,-3"])
    assert bad.value.code == 2 and "positive integers" in capsys.readouterr().err


def test_write_json_is_a_list_of_records(tmp_path: Path) -> None:
    records = replay(synthetic_curves(60), budgets=[48], folds=2)
    write_json(records, tmp_path / "r.json")
    assert len(json.loads((tmp_path / "r.json").read_text())) == len(records) == 3


def test_real_curves_load_when_shared_data_is_present(shared_data: Path) -> None:
    data = load_predictive_scheduling(shared_data / "predictive-scheduling-gsm8k")
    assert len(data) == 7450
    assert data.curves.matrix.shape == (7450, 16)
    assert all("difficulty" not in m for m in data.meta[:100])
