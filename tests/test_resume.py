"""Crash safety: SIGKILL + ``--resume`` ends like an uninterrupted run; bad checkpoints are
clear errors; a NaN loss stops the run and keeps the last good checkpoint.

The kill-and-resume test runs ``experiments/train.py`` as real subprocesses on a tiny synthetic
``user,item`` file (60 users x 80 items, 1500 rows). They share a persistent JAX compilation
cache (a pytest temporary directory) so that only the first one pays full compilation; the
uninterrupted reference run goes first and fills it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from itemjax.train.checkpoint import RunCheckpoints
from itemjax.cli import run_main
from itemjax.errors import CheckpointError
from itemjax.runio import read_jsonl

# orbax leaves orphaned coroutines behind when it fails to read a damaged checkpoint
pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ROOT / "experiments" / "train.py"
EPOCHS = 6


def train_argv(csv, out, *extra) -> list[str]:
    return ["--dataset", str(csv), "--out", str(out), "--no-progress", "--epochs", str(EPOCHS), "--eval-every", "1",
            "--dim", "8", "--layers", "2", "--model", "lightgcn", "--loss", "bpr", "--patience", "100", *extra]


def run_train(argv, env, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN), *argv], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def reference_run(tiny_csv, cache_env, tmp_path_factory):
    """An uninterrupted run (it also fills the compilation cache for the others)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run_train(train_argv(tiny_csv, out), cache_env)
    assert done.returncode == 0, done.stderr
    return out


def metric_values(record: dict) -> dict:
    return {k: v for k, v in record.items() if "@" in k}


def assert_same_metrics(got: dict, want: dict):
    assert metric_values(got).keys() == metric_values(want).keys()
    for k, v in metric_values(want).items():
        assert abs(got[k] - v) <= 1e-6, (k, got[k], v)


def _saved_steps(slot: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in slot.iterdir() if p.name.isdigit()) if slot.is_dir() else []


def kill_after_first_checkpoint(argv, env, out: pathlib.Path, log: pathlib.Path, *, delay: float = 0.0) -> int:
    """Start train.py, SIGKILL it ``delay`` s after ``checkpoints/latest`` holds a step; that step."""
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, str(TRAIN), *argv], env=env, stdout=subprocess.DEVNULL, stderr=err,
                                cwd=ROOT)
        try:
            deadline = time.monotonic() + 240
            while not _saved_steps(out / "checkpoints" / "latest"):
                assert proc.poll() is None, f"the run ended before its first checkpoint: {log.read_text()}"
                assert time.monotonic() < deadline, "no checkpoint after 240 s"
                time.sleep(0.005)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill; make it longer"
    return _saved_steps(out / "checkpoints" / "latest")[-1]


def test_sigkill_then_resume_ends_with_the_uninterrupted_metrics(reference_run, tiny_csv, cache_env, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(tiny_csv, out)
    step = kill_after_first_checkpoint(argv, cache_env, out, tmp_path / "killed.log")
    assert step < EPOCHS  # one step per epoch on this data: killed mid-run
    assert not (out / "summary.json").exists()

    resumed = run_train(argv + ["--resume"], cache_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from epoch" in resumed.stderr

    want = json.loads((reference_run / "summary.json").read_text())
    got = json.loads((out / "summary.json").read_text())
    assert_same_metrics(got, want)
    for k in ("selected_epoch", "epochs", "steps"):
        assert got[k] == want[k], k
    # metrics.jsonl: trimmed to the checkpoint on resume, so one record per epoch, equal values
    records, reference = read_jsonl(out / "metrics.jsonl"), read_jsonl(reference_run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    for r, ref in zip(records, reference):
        assert_same_metrics(r, ref)
        assert abs(r["loss"] - ref["loss"]) <= 1e-6
    assert (out / "learning_curve.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("delays", [(0.0, 0.3, 0.7), (0.05, 0.05, 0.05, 0.05)])
def test_repeated_kills_at_various_points_then_resume(reference_run, tiny_csv, cache_env, tmp_path, delays):
    """Kill again and again (before the first checkpoint too), resuming each time."""
    out = tmp_path / "run"
    argv = train_argv(tiny_csv, out)
    # a kill while the data is loading: nothing is saved yet, --resume starts from scratch
    with open(tmp_path / "early.log", "w") as err:
        proc = subprocess.Popen([sys.executable, str(TRAIN), *argv], env=cache_env, stderr=err,
                                stdout=subprocess.DEVNULL, cwd=ROOT)
        while not out.exists() and proc.poll() is None:
            time.sleep(0.002)
        proc.kill()
        proc.wait()
    for i, delay in enumerate(delays):
        resume = ["--resume"] if out.exists() else []
        if (out / "summary.json").exists():
            break
        try:
            kill_after_first_checkpoint(argv + resume, cache_env, out, tmp_path / f"kill{i}.log", delay=delay)
        except AssertionError:
            if (out / "summary.json").exists():  # this session ran to the end before the kill
                break
            raise
    finished = run_train(argv + ["--resume"], cache_env)
    assert finished.returncode == 0, finished.stderr
    assert_same_metrics(json.loads((out / "summary.json").read_text()),
                        json.loads((reference_run / "summary.json").read_text()))
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, EPOCHS + 1))


def test_corrupt_checkpoint_is_one_line_and_exit_2(reference_run, tiny_csv, cache_env, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    (step,) = _saved_steps(out / "checkpoints" / "latest")
    data_files = [p for p in (out / "checkpoints" / "latest" / str(step) / "state").rglob("*")
                  if p.is_file() and p.parent.name == "d"]
    assert data_files
    for p in data_files:  # flip bytes of every array chunk
        garbled = bytearray(p.read_bytes())
        garbled[:: max(1, len(garbled) // 16)] = bytes(b ^ 0xFF for b in garbled[:: max(1, len(garbled) // 16)])
        p.write_bytes(bytes(garbled))
    done = run_train(train_argv(tiny_csv, out, "--resume"), cache_env)
    assert done.returncode == 2, done.stderr
    # Known noise: orbax's restore thread sometimes prints an asyncio "Event loop is closed"
    # traceback while the restore fails, interleaved with our line; the message is the one
    # "error:" line (possibly indented by that interleaving).
    errors = [line.strip() for line in done.stderr.splitlines() if line.strip().startswith("error: ")]
    assert len(errors) == 1, done.stderr
    last = errors[0]
    assert last.startswith(f"error: cannot restore the latest checkpoint {out.absolute() / 'checkpoints' / 'latest'}")
    assert "corrupt" in last and "delete it or use another --out" in last
    assert "TensorStore details" not in last and len(last) < 600


# ----------------------------------------------------------------------------- in-process checks


def _run_cli(argv, capsys):
    from itemjax.commands import train

    status = run_main(train.main, argv)
    return status, capsys.readouterr().err


def test_resume_with_another_dim_names_the_option(reference_run, tiny_csv, tmp_path, capsys, monkeypatch):
    import itemjax.data.datasets

    monkeypatch.setattr(itemjax.data.datasets, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    argv = train_argv(tiny_csv, out, "--resume")
    argv[argv.index("--dim") + 1] = "16"
    status, err = _run_cli(argv, capsys)
    assert status == 2
    assert err.strip().splitlines()[-1] == (
        f"error: --resume: option dim is 16 but the run in {out} used 8; "
        "pass the same options to continue it, or start a new --out")


def test_resume_on_changed_data_is_rejected(tiny_csv, tmp_path, capsys):
    from itemjax.config import TrainConfig

    csv = tmp_path / "mine.csv"
    shutil.copy(tiny_csv, csv)
    out = tmp_path / "run"
    out.mkdir()
    config = TrainConfig(dataset=str(csv), out=str(out), dim=8, progress=False).resolve()
    (out / "config.json").write_text(json.dumps({"config": config.to_dict(),
                                                 "dataset": {"files": {str(csv): "0" * 64}}}))
    status, err = _run_cli(["--dataset", str(csv), "--out", str(out), "--dim", "8", "--resume", "--no-progress"], capsys)
    assert status == 2
    assert err.strip().splitlines()[-1].startswith(f"error: --resume: the data changed since the run in {out} started "
                                                   f"({csv} has another sha256")


def _tree(seed: int):
    rng = np.random.default_rng(seed)
    return {"step": jnp.asarray(seed, jnp.int32), "params": {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}}


def test_checkpoint_resave_of_a_stored_step_keeps_it(tmp_path):
    """A run killed between its ``best`` and ``latest`` saves re-saves the same step after resume."""
    ckpts = RunCheckpoints(tmp_path)
    ckpts.save("best", 4, _tree(4), {"epoch": 4})
    ckpts.save("best", 4, _tree(4), {"epoch": 4})  # orbax alone raises StepAlreadyExistsError
    state, meta = ckpts.restore("best", _tree(0))
    np.testing.assert_array_equal(state["params"]["w"], _tree(4)["params"]["w"])
    assert int(state["step"]) == 4 and meta == {"epoch": 4}
    ckpts.close()


def test_checkpoint_with_python_int_step_and_tmp_debris(tmp_path):
    """A fresh TrainState's step is a Python int; a kill mid-save leaves a tmp dir to clean up."""
    ckpts = RunCheckpoints(tmp_path)
    ckpts.save("latest", 3, _tree(3), {"epoch": 3})
    ckpts.close()
    debris = tmp_path / "checkpoints" / "latest" / "7.orbax-checkpoint-tmp-1234567"
    (debris / "state").mkdir(parents=True)
    ckpts = RunCheckpoints(tmp_path)
    like = {"step": 0, "params": _tree(0)["params"]}
    state, meta = ckpts.restore("latest", like)
    assert int(state["step"]) == 3 and meta["epoch"] == 3
    np.testing.assert_array_equal(state["params"]["w"], _tree(3)["params"]["w"])
    ckpts.save("latest", 7, _tree(7), {"epoch": 7})  # a save waits for the (background) cleanup
    ckpts.close()
    assert not debris.exists()
    assert _saved_steps(tmp_path / "checkpoints" / "latest") == [7]


@pytest.mark.parametrize("damage", ["truncate metadata", "garble arrays", "other shapes"])
def test_damaged_checkpoint_raises_checkpoint_error(tmp_path, damage):
    ckpts = RunCheckpoints(tmp_path)
    ckpts.save("latest", 5, _tree(5), {"epoch": 5})
    ckpts.close()
    step_dir = tmp_path / "checkpoints" / "latest" / "5"
    like = _tree(0)
    if damage == "truncate metadata":
        meta = step_dir / "state" / "_METADATA"
        meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])
    elif damage == "garble arrays":
        for p in (step_dir / "state").rglob("*"):
            if p.is_file() and p.parent.name == "d":
                p.write_bytes(bytes(b ^ 0xFF for b in p.read_bytes()))
    else:
        like = {"step": like["step"], "params": {"w": jnp.zeros((6, 3))}}
    with pytest.raises(CheckpointError) as info:
        RunCheckpoints(tmp_path).restore("latest", like)
    message = str(info.value)
    assert "\n" not in message and str(step_dir) in message
    assert "different model/config" in message


# ----------------------------------------------------------------------------- numerical safety


def test_nan_loss_exits_3_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_csv, cache_env, tmp_path):
    """``--lr 1e30``: step 0 blows the embeddings up to ~1e30, the loss of step 1 is NaN."""
    from itemjax.config import TrainConfig
    from itemjax.train.run import _checkpointable, prepare
    from itemjax.train.step import create_state

    out = tmp_path / "run"
    # batch 2048 covers the tiny data set in one step per epoch, so step 1 is epoch 2's
    done = run_train(train_argv(tiny_csv, out, "--lr", "1e30", "--batch-size", "2048"), cache_env)
    assert done.returncode == 3, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the loss became nan at step 1 (epoch 2);"), line
    assert f"the last good checkpoint is kept in {out / 'checkpoints' / 'latest'}" in line
    assert "try a lower --lr (now 1e+30)" in line
    assert not (out / "summary.json").exists()
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1]

    # the kept checkpoint restores (shapes from eval_shape: nothing to compile here)
    config = TrainConfig(dataset=str(tiny_csv), dim=8, layers=2, lr=1e30, batch_size=2048, progress=False).resolve()
    prep = prepare(config)
    like = jax.eval_shape(lambda key: _checkpointable(
        create_state(config, prep.model, prep.batch.graph, prep.batch.data, key)), jax.random.PRNGKey(0))
    state, meta = RunCheckpoints(out).restore("latest", like)
    assert int(state["step"]) == 1 and meta["epoch"] == 1
    params = jax.tree.leaves(state["params"])
    assert params and all(bool(np.all(np.isfinite(x))) for x in params)


def test_fit_or_resume_continues_a_started_run(tiny_csv, tmp_path):
    """A table command's runs: a folder holding a started run is resumed (plain fit refuses it)."""
    from itemjax.cli import config_from_args
    from itemjax.commands.train import parser
    from itemjax.errors import ConfigError
    from itemjax.train.run import fit, fit_or_resume

    out = tmp_path / "run"
    config = config_from_args(parser().parse_args(
        ["--dataset", str(tiny_csv), "--epochs", "2", "--eval-every", "1", "--dim", "8", "--layers", "1",
         "--out", str(out), "--no-progress"]))
    first = fit_or_resume(config)  # nothing there yet: a fresh run
    (out / "summary.json").unlink()  # as if killed after its last checkpoint
    with pytest.raises(ConfigError, match="pass --resume"):
        fit(config)
    again = fit_or_resume(config)
    assert again["ndcg@20"] == first["ndcg@20"] and again["recall@20"] == first["recall@20"]


def test_a_folder_in_use_by_another_process_is_refused_and_freed_when_it_ends(reference_run, tiny_csv, tmp_path,
                                                                              capsys):
    """Two commands continuing the same run would interleave its checkpoints and metrics: the second is refused,
    naming the first; once the first process is gone (killed, here), the folder is free again."""
    from itemjax.runio import run_lock

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom itemjax.runio import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        status, err = _run_cli(train_argv(tiny_csv, out, "--resume"), capsys)
        assert status == 2
        assert err.strip().splitlines()[-1].startswith(f"error: {out} is in use: process {holder.pid} on ")
        assert "choose another --out" in err
    finally:
        holder.kill()
        holder.wait()
    with run_lock(out):  # the dead process's lock went with it
        assert f"process {os.getpid()}" in (out / ".lock").read_text()
    with run_lock(out):  # and the lock is released at the end of the block
        pass
