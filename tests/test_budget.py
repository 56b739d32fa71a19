"""``--time-budget`` (stop at the first evaluation past the budget, test the best-validation
checkpoint, resume within the same budget) and ``--refit`` (retrain on train + validation)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from itemjax.train.checkpoint import RunCheckpoints
from itemjax.config import TrainConfig
from itemjax.errors import ConfigError
from itemjax.graph.bipartite import build_graph
from itemjax.graph.propagation import to_device
from itemjax.train.run import fit, prepare, refit_train
from itemjax.runio import best_validation, read_jsonl
from itemjax.model.models import embed
from itemjax.train.step import create_state
from itemjax.evaluation.evaluate import evaluate
from test_resume import ROOT, TRAIN, run_train

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]


def tiny_config(csv, out, **kw) -> TrainConfig:
    options = dict(dataset=str(csv), out=str(out), progress=False, dim=8, layers=2, model="lightgcn", loss="bpr",
                   eval_every=1, patience=100000, epochs=100000)
    options.update(kw)
    return TrainConfig(**options)


class TickingClock:
    """A fake ``itemjax.train.run._clock``: every reading is 0.25 s after the previous one, so each
    epoch (two readings) costs 0.25 s of training and each evaluation 0.25 s, whatever the load."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 0.25
        return self.now


def test_time_budget_stops_at_the_first_evaluation_past_it_and_tests_the_best_checkpoint(tiny_csv, tmp_path,
                                                                                        monkeypatch):
    import itemjax.train.run

    monkeypatch.setattr(itemjax.train.run, "_clock", TickingClock())
    budget = 12.1  # records at epochs 10, 20, 30, 40 (11.0 s); epoch 45 crosses it (12.25 s): evaluate there
    # one step per epoch (batch > the ~1100 training pairs): no clock reading inside an epoch
    summary = fit(tiny_config(tiny_csv, tmp_path / "run", time_budget=budget, eval_every=10, batch_size=4096))
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert summary["stop_reason"] == "time budget" and summary["time_budget"] == budget
    assert records[-1]["elapsed"] >= budget > records[-2]["elapsed"]  # stopped at the first evaluation past it
    assert summary["epochs"] == records[-1]["epoch"] == 45 and len(records) == 5
    assert records[-1]["elapsed"] == 12.5  # not the 13.75 s of waiting for epoch 50's evaluation
    assert summary["train_seconds"] + summary["eval_seconds"] == pytest.approx(records[-1]["elapsed"])
    best = best_validation(tmp_path / "run", "ndcg@20")
    assert summary["selected_epoch"] == best["epoch"] and summary["selected_step"] == best["step"]
    assert summary["steps"] == records[-1]["step"] >= summary["selected_step"]
    assert summary["load_average"]["n"] == len(records) + 2 and all("load1" in r for r in records)
    assert summary["data_seconds"] > 0
    # the test metrics are those of the best-validation checkpoint, not of the last state
    config = tiny_config(tiny_csv, tmp_path / "run", time_budget=budget, eval_every=10, batch_size=4096).resolve()
    prep = prepare(config)
    state = create_state(config, prep.model, prep.batch.graph, prep.batch.data, jax.random.PRNGKey(0))
    ckpts = RunCheckpoints(tmp_path / "run")
    restored, _ = ckpts.restore("best", {"step": state.step, "params": state.params, "opt_state": state.opt_state})
    ckpts.close()
    user_emb, item_emb = embed(state.apply_fn, restored["params"], prep.batch.graph)
    test = evaluate(user_emb, item_emb, [prep.split.train, prep.split.valid], prep.split.test, ks=config.ks)
    assert float(test["ndcg@20"]) == pytest.approx(summary["ndcg@20"], abs=1e-6)


class StepClock:
    """A fake ``_clock`` that advances ``step_seconds`` per training step taken (counted by wrapping
    ``Placement.jit_step``) and ``eval_seconds`` per evaluation: long epochs on a fast machine."""

    def __init__(self, step_seconds: float, eval_seconds: float):
        self.step_seconds, self.eval_seconds = step_seconds, eval_seconds
        self.steps = self.evals = 0

    def __call__(self):
        return self.steps * self.step_seconds + self.evals * self.eval_seconds


def test_budget_inside_the_first_evaluation_interval_stops_within_one_step(tiny_csv, tmp_path, monkeypatch):
    """Epochs of ~90 steps, evaluations every 10 epochs, a budget that runs out at step 31 of the first
    epoch: the run evaluates there, about one step past its budget, and records the overshoot."""
    import itemjax.train.run
    from itemjax.train.placement import Placement

    clock = StepClock(step_seconds=0.1, eval_seconds=0.5)
    jit_step, evaluate = Placement.jit_step, Placement.evaluate

    def counting_jit_step(self, step_fn, state, *args, **kwargs):
        step = jit_step(self, step_fn, state, *args, **kwargs)

        def counted(*args):
            clock.steps += 1
            return step(*args)
        return counted

    def counting_evaluate(self, *args, **kwargs):
        out = evaluate(self, *args, **kwargs)
        clock.evals += 1
        return out

    monkeypatch.setattr(Placement, "jit_step", counting_jit_step)
    monkeypatch.setattr(Placement, "evaluate", counting_evaluate)
    monkeypatch.setattr(itemjax.train.run, "_clock", clock)
    budget = 3.05  # steps of 0.1 s: the budget runs out during step 31 of epoch 1
    summary = fit(tiny_config(tiny_csv, tmp_path / "run", time_budget=budget, eval_every=10, batch_size=8))
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert summary["stop_reason"] == "time budget" and summary["epochs"] == 1 and len(records) == 1
    assert 31 <= summary["steps"] <= 32  # within one step of the budget, not at the end of epoch 1 (~90 steps)
    assert summary["train_seconds"] <= budget + 0.1 + 1e-9
    assert summary["budget_seconds_used"] == pytest.approx(summary["train_seconds"] + summary["eval_seconds"])
    assert summary["budget_overshoot_seconds"] == pytest.approx(summary["budget_seconds_used"] - budget)
    assert summary["budget_overshoot_seconds"] <= 0.1 + 0.5 + 1e-9  # one step + one evaluation
    assert summary["time_budget"] == budget


def test_killed_budgeted_run_resumes_within_the_same_budget(tiny_csv, cache_env, tmp_path):
    out = tmp_path / "run"
    budget = 10.0
    argv = ["--dataset", str(tiny_csv), "--out", str(out), "--no-progress", "--epochs", "100000", "--eval-every", "10",
            "--dim", "8", "--layers", "2", "--loss", "bpr", "--patience", "100000", "--time-budget", str(budget)]
    with open(tmp_path / "killed.log", "w") as err:
        proc = subprocess.Popen([sys.executable, str(TRAIN), *argv], env=cache_env, stdout=subprocess.DEVNULL,
                                stderr=err, cwd=ROOT)
        try:
            deadline = time.monotonic() + 240
            while len(read_jsonl(out / "metrics.jsonl")) < 2:
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill"
    before = read_jsonl(out / "metrics.jsonl")
    assert before[-1]["elapsed"] < budget and not (out / "summary.json").exists()

    resumed = run_train(argv + ["--resume"], cache_env)
    assert resumed.returncode == 0, resumed.stderr
    records = read_jsonl(out / "metrics.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "time budget"
    epochs = [r["epoch"] for r in records]  # none lost or repeated; the last where the budget ran out
    assert epochs[:-1] == list(range(10, 10 * len(records) - 9, 10)) and 0 < epochs[-1] - epochs[-2] <= 10
    elapsed = [r["elapsed"] for r in records]
    assert elapsed == sorted(elapsed)  # the clock continued from the checkpoint, not from 0
    assert elapsed[-1] >= budget > elapsed[-2]
    # load_average: one sample per evaluation, the killed process's included, and the resumed process's start and end
    assert summary["load_average"]["n"] == len(records) + 2
    # a finished budgeted run resumed again does not train further
    again = run_train(argv + ["--resume"], cache_env)
    assert again.returncode == 0, again.stderr
    assert read_jsonl(out / "metrics.jsonl") == records


def test_a_run_stopped_at_its_budget_continues_to_a_larger_one_as_if_uninterrupted(tiny_csv, tmp_path, monkeypatch):
    """--resume with a larger --time-budget (and reuse_or_fit, what a table rerun with a longer budget does) goes on
    from the checkpoint: the records, the selection, the test and the refit equal those of one run at the larger
    budget (one step per epoch, so the first run's budget ends on an epoch's end, and a fake clock)."""
    import itemjax.train.run
    from itemjax.train.run import check_reusable, extendable, reuse_or_fit

    monkeypatch.setattr(itemjax.train.run, "_clock", TickingClock())
    options = dict(eval_every=2, batch_size=4096, refit=True, lr_schedule="plateau", lr_patience=4)
    whole = fit(tiny_config(tiny_csv, tmp_path / "whole", time_budget=9.1, **options))
    monkeypatch.setattr(itemjax.train.run, "_clock", TickingClock())
    first = fit(tiny_config(tiny_csv, tmp_path / "run", time_budget=4.1, **options))
    assert first["stop_reason"] == whole["stop_reason"] == "time budget" and first["epochs"] < whole["epochs"]
    longer = tiny_config(tiny_csv, tmp_path / "run", time_budget=9.1, **options).resolve()  # as the table commands
    assert extendable(longer, tmp_path / "run")
    with pytest.raises(ConfigError, match="time_budget=4.1, not 9.1"):
        check_reusable(longer, tmp_path / "run")  # a plain reuse would take the shorter run for the longer one
    monkeypatch.setattr(itemjax.train.run, "_clock", TickingClock())
    reuse_or_fit(longer)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    drop = ("elapsed", "train_seconds", "load1")  # the fake clock restarts in the second process
    strip = lambda records: [{k: v for k, v in r.items() if k not in drop} for r in records]  # noqa: E731
    assert strip(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "whole" / "metrics.jsonl"))
    for key in ("epochs", "steps", "selected_step", "ndcg@20", "recall@20", "refit_steps", "refit/ndcg@20",
                "refit/recall@20", "time_budget"):
        assert summary[key] == whole[key], key
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["time_budget"] == 9.1
    check_reusable(longer, tmp_path / "run")  # now the longer run: reused as it is
    assert not extendable(longer, tmp_path / "run")

    # a cosine over the budget would change what was computed: refused by name
    monkeypatch.setattr(itemjax.train.run, "_clock", TickingClock())
    fit(tiny_config(tiny_csv, tmp_path / "cosine", time_budget=2.1, eval_every=2, batch_size=4096, lr_schedule="cosine"))
    cosine = tiny_config(tiny_csv, tmp_path / "cosine", time_budget=4.1, eval_every=2, batch_size=4096,
                         lr_schedule="cosine", resume=True).resolve()
    assert not extendable(cosine, tmp_path / "cosine")
    with pytest.raises(ConfigError, match="cosine learning rate spans the budget"):
        fit(cosine)


def test_refit_trains_on_train_plus_valid_for_the_selected_steps(tiny_csv, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(tiny_csv, out, epochs=12, refit=True)
    summary = fit(config)
    prep = prepare(config.resolve())
    split = prep.split
    full = refit_train(split)
    # the refit's data: every interaction outside test, test untouched
    np.testing.assert_array_equal(full.toarray(), split.train.toarray() + split.valid.toarray())
    assert full.multiply(split.test).nnz == 0
    assert summary["refit_train_interactions"] == split.train.nnz + split.valid.nnz
    assert summary["refit_steps"] == summary["selected_step"] > 0
    # re-evaluate the saved refit model: its graph holds the validation edges
    cfg = config.resolve()
    graph_full = to_device(build_graph(full), cfg.backend)
    from itemjax.objective import sampling

    state = create_state(cfg, prep.model, graph_full, sampling.make_train_data(full), jax.random.PRNGKey(0))
    ckpts = RunCheckpoints(out / "refit")
    restored, _ = ckpts.restore("latest", {"step": state.step, "params": state.params, "opt_state": state.opt_state})
    ckpts.close()
    assert int(restored["step"]) == summary["refit_steps"]
    exclude = [split.train, split.valid]
    got = evaluate(*embed(state.apply_fn, restored["params"], graph_full), exclude, split.test, ks=cfg.ks)
    assert float(got["ndcg@20"]) == pytest.approx(summary["refit/ndcg@20"], abs=1e-6)
    train_only = evaluate(*embed(state.apply_fn, restored["params"], prep.batch.graph), exclude, split.test, ks=cfg.ks)
    assert float(train_only["ndcg@20"]) != pytest.approx(summary["refit/ndcg@20"], abs=1e-6)
    # and it is not the carve-out model
    assert summary["refit/ndcg@20"] != summary["ndcg@20"]


def test_refit_and_budget_options_are_checked():
    with pytest.raises(ConfigError, match="--valid-frac"):
        TrainConfig(refit=True, valid_frac=0.0).resolve()
    with pytest.raises(ConfigError, match="--time-budget"):
        TrainConfig(time_budget=0).resolve()
    with pytest.raises(ConfigError, match="transductive"):
        TrainConfig(refit=True, protocol="inductive").resolve()


def test_user_sampling_defaults_per_loss():
    assert TrainConfig(loss="bpr").resolve().user_sampling == "uniform"  # chosen on ml-100k validation
    assert TrainConfig(loss="bce").resolve().user_sampling == "degree"
    assert TrainConfig(loss="item").resolve().user_sampling == "uniform"
    assert TrainConfig(loss="bpr", user_sampling="degree").resolve().user_sampling == "degree"
