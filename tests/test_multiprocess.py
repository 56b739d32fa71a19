"""Two processes through ``jax.distributed`` on this machine (itemjax.parallel.distributed).

Each process is started as ``python tests/test_multiprocess.py <mode> ...`` with two virtual CPU
devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``), a coordinator on a free
localhost port and gloo, JAX's cross-process CPU collectives: one global mesh of 4 devices.

* ``test_two_processes_train_resume_and_match_one_process``: ``itemjax train --distributed`` on
  the tiny CSV. Process 1 holds before its second ``latest`` checkpoint and is SIGKILLed there:
  process 0 must exit non-zero within the heartbeat timeout, naming the lost process. Both are
  then restarted with ``--resume``; they continue from the epoch-1 checkpoint (both restore it),
  and the run's metrics.jsonl and summary.json equal those of one process on 4 devices. An audit
  hook (:func:`sys.addaudithook`) records every file each process opens for writing, creates,
  renames or removes under the run directory: process 1 writes none outside ``checkpoints/``.
* ``test_an_error_in_one_process_stops_the_others``: process 1 raises a ConfigError inside
  :func:`~itemjax.parallel.distributed.stop_peers_on_error` while process 0 goes on with
  collectives: process 1 reports it and exits 2 at once, process 0 stops within the heartbeat
  timeout (without the guard both would wait for JAX's 5-minute shutdown timeout).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = ROOT / "experiments" / "train.py"
HEARTBEAT = 10  # seconds: --heartbeat-timeout of the runs (JAX's default is 100)
EPOCHS = 4

pytestmark = pytest.mark.integration  # starts subprocesses


# ----------------------------------------------------------------------------- subprocess side


def _audit_writes(log_path: str, root: str) -> None:
    """Append ``<event> <path>`` to ``log_path`` for every write-like file event under ``root``."""
    log = open(log_path, "a", buffering=1)  # opened before the hook: its writes raise no event
    root = os.path.realpath(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def as_path(value):
        if isinstance(value, int) or value is None:
            return None  # a file descriptor
        return os.path.realpath(os.fsdecode(value))

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            paths = [path] if writing else []
        elif event == "os.rename":  # os.rename and os.replace
            paths = args[:2]
        elif event in ("os.remove", "os.mkdir", "os.rmdir", "os.truncate", "shutil.rmtree"):
            paths = args[:1]
        else:
            return
        for path in map(as_path, paths):
            if path is not None and (path == root or path.startswith(root + os.sep)):
                log.write(f"{event} {os.path.relpath(path, root)}\n")

    sys.addaudithook(hook)


def _hold_before_latest_save(number: int, marker: str) -> None:
    """Make this process stop (sleep) when it is about to save its ``number``-th ``latest``
    checkpoint, after writing the step to ``marker``: the test kills it there."""
    from itemjax.train.checkpoint import RunCheckpoints

    save, calls = RunCheckpoints.save, []

    def holding_save(self, slot, step, state, meta):
        if slot == "latest":
            calls.append(step)
            if len(calls) == number:
                pathlib.Path(marker).write_text(str(step))
                time.sleep(3600)
        return save(self, slot, step, state, meta)

    RunCheckpoints.save = holding_save


def _train_worker(audit_log: str, out: str, hold: str, argv: list[str]) -> int:
    _audit_writes(audit_log, out)
    if hold:
        _hold_before_latest_save(2, hold)
    from itemjax.cli import run_main
    from itemjax.commands.train import main

    return run_main(main, argv)


def _collective_error_worker(port: str, process_id: str) -> None:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from itemjax.errors import ConfigError
    from itemjax.parallel.distributed import initialize, make_mesh, stop_peers_on_error

    initialize(True, coordinator_address=f"localhost:{port}", num_processes=2, process_id=int(process_id),
               heartbeat_timeout=HEARTBEAT // 2, tune_allocator=False)
    mesh = make_mesh()
    rows = jax.make_array_from_callback((8,), NamedSharding(mesh, P("data")), lambda index: np.ones(8)[index])
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))
    with stop_peers_on_error():
        for i in range(10_000):
            assert float(total(rows)) == 8.0  # an all-reduce over both processes' devices
            print(f"collective {i}", file=sys.stderr, flush=True)
            if i == 3 and jax.process_index() == 1:
                raise ConfigError("a problem only process 1 sees")


# ----------------------------------------------------------------------------- test side


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_env(base: dict, n_devices: int) -> dict:
    env = {k: v for k, v in base.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")])))
    return env


def train_argv(csv, out, *extra) -> list[str]:
    return ["--dataset", str(csv), "--out", str(out), "--no-progress", "--epochs", str(EPOCHS), "--eval-every", "1",
            "--dim", "8", "--layers", "2", "--model", "lightgcn", "--loss", "bpr", "--batch-size", "256",
            "--patience", "100", *extra]


class Processes:
    """The two processes of one distributed session, their stderr in ``<tmp>/<name>.p<i>.log``."""

    def __init__(self, tmp: pathlib.Path, name: str, env: dict, argv: list[str], out: pathlib.Path, hold=None):
        port = free_port()
        self.logs = [tmp / f"{name}.p{i}.log" for i in range(2)]
        self.audits = [tmp / f"{name}.p{i}.audit" for i in range(2)]
        self.procs = []
        for i in range(2):
            distributed = ["--distributed", "--coordinator-address", f"localhost:{port}", "--num-processes", "2",
                           "--process-id", str(i), "--heartbeat-timeout", str(HEARTBEAT)]
            hold_arg = str(hold) if (hold is not None and i == 1) else ""
            with open(self.logs[i], "w") as err:
                self.procs.append(subprocess.Popen(
                    [sys.executable, __file__, "train", str(self.audits[i]), str(out), hold_arg, *argv, *distributed],
                    env=process_env(env, 2), stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT))

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.procs]
        finally:
            self.kill()

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def stderr(self, i: int) -> str:
        return self.logs[i].read_text()

    def written(self, i: int) -> set[str]:
        """Paths (relative to the run directory) process ``i`` wrote, created, renamed or removed."""
        path = self.audits[i]
        return {line.split(" ", 1)[1] for line in path.read_text().splitlines()} if path.exists() else set()


def outside_checkpoints(paths) -> set[str]:
    return {p for p in paths if p != "." and p.split(os.sep)[0] != "checkpoints"}


def metric_values(record: dict) -> dict:
    """The metrics of a metrics.jsonl record or summary.json, and the training loss of a record."""
    return {k: v for k, v in record.items() if "@" in k or (k == "loss" and isinstance(v, float))}


def assert_close_metrics(got: dict, want: dict, what: str):
    want = metric_values(want)
    assert metric_values(got).keys() == want.keys(), what
    for k, v in want.items():
        assert abs(got[k] - v) <= 1e-5, (what, k, got[k], v)


@pytest.fixture(scope="module")
def one_process_run(tiny_csv, cache_env, tmp_path_factory):
    """The reference: one process, 4 virtual devices (the same global mesh size), no --distributed."""
    out = tmp_path_factory.mktemp("one-process") / "run"
    done = subprocess.run([sys.executable, str(TRAIN), *train_argv(tiny_csv, out)], env=process_env(cache_env, 4),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_train_resume_and_match_one_process(one_process_run, tiny_csv, cache_env, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(tiny_csv, out)

    # 1. Process 1 stops before its second `latest` save (epoch 2); SIGKILL it there.
    marker = tmp_path / "held"
    first = Processes(tmp_path, "killed", cache_env, argv, out, hold=marker)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            for i, p in enumerate(first.procs):
                assert p.poll() is None, f"process {i} ended before the kill: {first.stderr(i)[-3000:]}"
            assert time.monotonic() < deadline, "process 1 did not reach its second checkpoint in 300 s"
            time.sleep(0.1)
        assert marker.read_text() == "10"  # 5 steps per epoch: held at the end of epoch 2
        first.procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        status = first.procs[0].wait(timeout=HEARTBEAT + 120)
        stopped_after = time.monotonic() - killed_at
    finally:
        first.kill()
    err0 = first.stderr(0)
    assert status != 0, err0[-3000:]
    assert stopped_after < HEARTBEAT + 60, stopped_after  # within the heartbeat timeout (and a busy machine's slack)
    # JAX names the process whose heartbeat stopped (task 1)
    assert re.search(r"tasks are unhealthy \(stopped sending heartbeats\):\s*1\b", err0), err0[-3000:]
    assert not (out / "summary.json").exists()
    epoch1 = [r["epoch"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert epoch1[0] == 1 and epoch1[-1] <= 2

    # 2. Both restart with --resume: both restore the epoch-1 checkpoint and finish the run.
    second = Processes(tmp_path, "resumed", cache_env, argv + ["--resume"], out)
    statuses = second.wait(timeout=400)
    assert statuses == [0, 0], (second.stderr(0)[-3000:], second.stderr(1)[-3000:])
    for i in range(2):
        assert "resumed from epoch 1 (step 5)" in second.stderr(i), second.stderr(i)[-3000:]

    # 3. The same numbers as one process on 4 devices: every evaluation and the test.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (one_process_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [r["epoch"] for r in reference] == list(range(1, EPOCHS + 1))
    for got, want in zip(records, reference):
        assert_close_metrics(got, want, f"epoch {want['epoch']}")
    summary = json.loads((out / "summary.json").read_text())
    want = json.loads((one_process_run / "summary.json").read_text())
    assert_close_metrics(summary, want, "test")
    assert summary["selected_epoch"] == want["selected_epoch"] and summary["steps"] == want["steps"]
    placement = json.loads((out / "config.json").read_text())["environment"]["placement"]
    assert placement["mesh"] == {"data": 4} and placement["processes"] == 2

    # 4. Process 0 wrote the run files, process 1 nothing outside the (collective) checkpoints.
    assert {"config.json", "metrics.jsonl"} <= {p.split(os.sep)[-1] for p in first.written(0)}
    assert {"metrics.jsonl", "summary.json", "learning_curve.png"} <= {
        p.split(os.sep)[-1] for p in outside_checkpoints(second.written(0))}
    assert outside_checkpoints(first.written(1) | second.written(1)) == set()
    # ... and process 1 saved its part of each checkpoint (orbax: one array-metadata file per process)
    assert any(p.startswith(os.path.join("checkpoints", "latest")) and p.endswith("process_1")
               for p in first.written(1) | second.written(1))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "latest"]


def test_an_error_in_one_process_stops_the_others(cache_env, tmp_path):
    port = free_port()
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = []
    for i in range(2):
        with open(logs[i], "w") as err:
            procs.append(subprocess.Popen([sys.executable, __file__, "collective-error", str(port), str(i)],
                                          env=process_env(cache_env, 2), stdout=subprocess.DEVNULL, stderr=err,
                                          cwd=ROOT))
    try:
        status1 = procs[1].wait(timeout=240)
        failed_at = time.monotonic()
        status0 = procs[0].wait(timeout=HEARTBEAT // 2 + 120)
        stopped_after = time.monotonic() - failed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    err0, err1 = logs[0].read_text(), logs[1].read_text()
    assert status1 == 2, err1[-3000:]  # the CLI's status of a ConfigError
    assert "error: a problem only process 1 sees" in err1
    assert "process 1 of 2 stopped (exit status 2)" in err1
    assert "collective 3" in err0  # the processes did run collectives together first
    assert status0 != 0, err0[-3000:]
    assert stopped_after < HEARTBEAT // 2 + 60, stopped_after
    assert re.search(r"tasks are unhealthy \(stopped sending heartbeats\):\s*1\b", err0), err0[-3000:]


def test_distributed_without_a_coordinator_names_the_options(cache_env, tmp_path):
    """Nothing to detect here (no Cloud TPU, SLURM or Open MPI): one error line naming the flags, exit 2."""
    env = process_env(cache_env, 1)
    done = subprocess.run([sys.executable, str(TRAIN), "--dataset", str(tmp_path / "never-read.csv"), "--distributed",
                           "--out", str(tmp_path / "run"), "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --distributed: coordinator_address should be defined")
    for flag in ("--coordinator-address", "--num-processes", "--process-id", "JAX_COORDINATOR_ADDRESS"):
        assert flag in last, (flag, last)
    assert not (tmp_path / "run").exists()


def test_the_audit_hook_records_writes_under_the_run_directory(tmp_path):
    """The instrument of the writer check sees what it must (and nothing outside the directory)."""
    run, outside, log = tmp_path / "run", tmp_path / "outside.txt", tmp_path / "audit"
    script = (f"import os, sys; sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r}); "
              f"from test_multiprocess import _audit_writes; _audit_writes({str(log)!r}, {str(run)!r}); "
              f"os.mkdir({str(run)!r}); open({str(run / 'a.json')!r}, 'w').close(); "
              f"os.replace({str(run / 'a.json')!r}, {str(run / 'b.json')!r}); open({str(run / 'b.json')!r}).close(); "
              f"open({str(outside)!r}, 'w').close(); os.remove({str(run / 'b.json')!r})")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, env=process_env(os.environ, 1))
    assert log.read_text().splitlines() == ["os.mkdir .", "open a.json", "os.rename a.json", "os.rename b.json",
                                            "os.remove b.json"]


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "train":
        sys.exit(_train_worker(args[0], args[1], args[2], args[3:]))
    _collective_error_worker(*args)
