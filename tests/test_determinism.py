"""Reproducibility: same seed and config -> bit-identical metrics on CPU; config.json is enough
to rerun a run (every option, package versions, JAX backend and devices, data checksums)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import pathlib

import jax
import pytest
from conftest import write_tiny_interactions

from itemjax.config import LOSS_DEFAULTS, TrainConfig
from itemjax.train.run import fit
from itemjax.runio import read_jsonl

pytestmark = pytest.mark.integration  # trains whole runs / starts subprocesses


def small_config(csv, out, **overrides) -> TrainConfig:
    return TrainConfig(dataset=str(csv), out=str(out), dim=8, layers=2, epochs=4, eval_every=2, patience=100,
                       progress=False, **overrides)


def config_from_run_dir(run_dir: pathlib.Path, **overrides) -> TrainConfig:
    """Rebuild the TrainConfig of a run from its config.json alone (JSON lists back to tuples)."""
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(saved) == fields, "config.json must record every TrainConfig option"
    return dataclasses.replace(TrainConfig.from_dict(saved), **overrides)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    csv = write_tiny_interactions(root / "clicks.csv", n_users=50, n_items=70, n_rows=1200, seed=1)
    out = root / "a"
    summary = fit(small_config(csv, out))
    return csv, out, summary


def metrics_of(record: dict) -> dict:
    return {k: v for k, v in record.items() if "@" in k or k in ("loss", "epoch", "step", "n_users")}


def test_same_seed_and_config_give_bit_identical_metrics(first_run, tmp_path):
    csv, out_a, summary_a = first_run
    out_b = tmp_path / "b"
    summary_b = fit(config_from_run_dir(out_a, out=str(out_b)))  # rerun from the directory alone
    assert metrics_of(summary_b) == metrics_of(summary_a)  # exact float equality
    assert summary_b["selected_epoch"] == summary_a["selected_epoch"]
    on_disk = json.loads((out_b / "summary.json").read_text())
    assert metrics_of(on_disk) == metrics_of(json.loads((out_a / "summary.json").read_text()))
    records_a, records_b = read_jsonl(out_a / "metrics.jsonl"), read_jsonl(out_b / "metrics.jsonl")
    assert [r["epoch"] for r in records_a] == [2, 4]
    assert [metrics_of(r) for r in records_b] == [metrics_of(r) for r in records_a]


def test_train_config_file_reproduces_the_run_bit_for_bit(first_run, tmp_path):
    """``train.py --config RUN/config.json`` (a new --out) gives RUN's metrics exactly; a flag
    beside it overrides the file."""
    from itemjax.cli import run_main

    from itemjax.commands import train
    csv, out_a, summary_a = first_run
    out_b = tmp_path / "from-config"
    assert run_main(train.main, ["--config", str(out_a / "config.json"), "--out", str(out_b), "--no-progress"]) == 0
    summary_b = json.loads((out_b / "summary.json").read_text())
    assert metrics_of(summary_b) == metrics_of(summary_a)
    saved_b = json.loads((out_b / "config.json").read_text())["config"]
    saved_a = json.loads((out_a / "config.json").read_text())["config"]
    assert {k for k in saved_a if saved_a[k] != saved_b[k]} == {"out"}
    args = train.parser().parse_args(["--config", str(out_a / "config.json"), "--seed", "3"])
    assert train.config_from_args(args) == dataclasses.replace(TrainConfig.from_dict(saved_a), seed=3, out=None)


def test_another_seed_gives_other_metrics_and_a_plot_failure_is_only_a_warning(first_run, tmp_path, monkeypatch,
                                                                              capsys):
    import itemjax.evaluation.plots

    def broken_plot(run_dir, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(itemjax.evaluation.plots, "plot_run", broken_plot)
    csv, out_a, summary_a = first_run
    out_c = tmp_path / "c"
    summary_c = fit(small_config(csv, out_c, seed=1))
    a, c = metrics_of(summary_a), metrics_of(summary_c)
    assert a.keys() == c.keys()
    assert sum(a[k] != c[k] for k in a if "@" in k) >= len([k for k in a if "@" in k]) // 2
    # the run finished and was saved although its plot failed
    assert json.loads((out_c / "summary.json").read_text())["ndcg@20"] == summary_c["ndcg@20"]
    assert not (out_c / "learning_curve.png").exists()
    assert f"warning: no learning-curve plot in {out_c} (RuntimeError: no display)" in capsys.readouterr().err


def test_config_json_records_options_environment_and_data_checksums(first_run):
    csv, out, _ = first_run
    recorded = json.loads((out / "config.json").read_text())

    # every option: each train.py flag has its TrainConfig field, each field its recorded value
    from itemjax.commands import train
    dests = {a.dest for a in train.parser()._actions if a.dest not in ("help", "config")}
    assert dests == set(recorded["config"]), dests ^ set(recorded["config"])
    resolved = small_config(csv, out).resolve()
    assert config_from_run_dir(out) == resolved  # loss defaults (batch size, lr, l2) resolved too
    assert {k: recorded["config"][k] for k in LOSS_DEFAULTS["bpr"]} == LOSS_DEFAULTS["bpr"]

    env = recorded["environment"]
    for dist in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy"):
        assert env["versions"][dist] == importlib.metadata.version(dist), dist
    assert env["jax_backend"] == jax.default_backend() == "cpu"
    assert env["devices"] == [str(d) for d in jax.devices()] and env["devices"]
    assert env["python"].count(".") == 2

    png = (out / "learning_curve.png").read_bytes()  # fit draws the learning curve at its end
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000

    data = recorded["dataset"]
    assert data["files"] == {str(csv.absolute()): hashlib.sha256(csv.read_bytes()).hexdigest()}
    assert data["stats"]["users"] == 50 and data["stats"]["interactions"] == 1200
