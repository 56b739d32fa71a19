"""``itemjax tune`` (Optuna) and the training loop's per-evaluation callback that prunes through it."""

from __future__ import annotations

import json

import pytest

from itemjax.commands import tune
from itemjax.config import TrainConfig
from itemjax.train.run import fit
from itemjax.runio import best_validation, read_jsonl

pytestmark = pytest.mark.integration  # trains runs


class Stop(Exception):
    pass


def test_on_evaluation_sees_each_saved_record_and_can_stop_the_run(tiny_csv, tmp_path):
    seen = []

    def callback(record):
        seen.append(record)
        assert (tmp_path / "run" / "checkpoints" / "latest").exists()
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(TrainConfig(dataset=str(tiny_csv), out=str(tmp_path / "run"), progress=False, dim=8, layers=1, epochs=5,
                        eval_every=1), on_evaluation=callback)
    assert seen == read_jsonl(tmp_path / "run" / "metrics.jsonl") and [r["epoch"] for r in seen] == [1, 2]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_tune_runs_trials_reports_the_best_and_resumes(tiny_csv, tmp_path, capsys):
    base = f"--dataset {tiny_csv} --dim 8 --layers 1 --epochs 3 --eval-every 1"
    argv = ["--base", base, "--loss", "bpr", "--trials", "3", "--startup-trials", "2", "--out", str(tmp_path / "t")]
    assert tune.main(argv) == 0
    best = json.loads((tmp_path / "t" / "best.json").read_text())
    runs = sorted((tmp_path / "t").glob("trial-*"))
    assert len(runs) == 3 and best["trials"] == 3
    values = {int(r.name.split("-")[1]): best_validation(r, "ndcg@20").get("ndcg@20") for r in runs}
    complete = {n: v for n, v in values.items() if (tmp_path / "t" / f"trial-{n:03d}" / "summary.json").exists()}
    assert best["best_value"] == max(complete.values())
    assert best["best_trial"] == max(complete, key=complete.get)
    config = json.loads((tmp_path / "t" / f"trial-{best['best_trial']:03d}" / "config.json").read_text())["config"]
    assert config["lr"] == pytest.approx(best["best_params"]["lr"]) and config["loss"] == "bpr"
    assert "Best: trial" in (tmp_path / "t" / "tune.md").read_text()
    # the same command with a larger budget continues the study: one more trial, the others kept
    argv[argv.index("3")] = "4"
    assert tune.main(argv) == 0
    assert len(sorted((tmp_path / "t").glob("trial-*"))) == 4
    assert json.loads((tmp_path / "t" / "best.json").read_text())["trials"] == 4


def test_a_resumed_study_draws_new_points_and_fails_a_cut_off_trial(tiny_csv, tmp_path):
    """Resuming during the random startup trials must not replay the first run's draws, and a
    trial left running by a killed process is marked failed (not counted, number not reused)."""
    import optuna

    base = f"--dataset {tiny_csv} --dim 8 --layers 1 --epochs 1 --eval-every 1"
    out = tmp_path / "t"
    argv = ["--base", base, "--loss", "bpr", "--trials", "1", "--startup-trials", "5", "--out", str(out)]
    assert tune.main(argv) == 0
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.load_study(study_name="itemjax", storage=storage).ask()  # trial 1: as if its process was killed
    argv[argv.index("1", argv.index("--trials"))] = "2"
    assert tune.main(argv) == 0
    trials = optuna.load_study(study_name="itemjax", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                                         optuna.trial.TrialState.COMPLETE]
    assert trials[2].params["lr"] != trials[0].params["lr"]
