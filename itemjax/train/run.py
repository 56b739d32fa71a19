"""A whole training run on the host: data → graph → model → epochs → selection → summary.

:func:`fit` is what ``experiments/train.py`` calls. The run directory it fills::

    config.json     every option, environment (versions, JAX backend, devices), dataset
                    checksums and split statistics: enough to reproduce the run
    metrics.jsonl   one JSON object per evaluation: epoch, split, every metric, seconds
    summary.json    test metrics of the selected (best validation) checkpoint
    per_user_test.parquet   the same test metrics per user (``.csv`` without pyarrow)
    checkpoints/    orbax ``latest`` and ``best``; ``--resume`` continues from ``latest``
    tensorboard/    with ``--tensorboard``: scalars (:mod:`itemjax.train.tracking`)

The test split is evaluated once, at the end, on the checkpoint selected on validation; it
never chooses an epoch. Without a validation split (``valid_frac=0``) the last epoch is used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from itemjax import native
from itemjax.native import ppr_push
from itemjax.objective import sampling
from itemjax.parallel.distributed import barrier, initialize, is_writer, make_mesh, stop_peers_on_error
from itemjax.train.placement import Placement, step_compiler_options
from itemjax.train.checkpoint import RunCheckpoints
from itemjax.config import BOOKKEEPING, PPR_SAMPLERS, TrainConfig, config_diff
from itemjax.errors import ConfigError, NumericalError
from itemjax.graph.bipartite import build_graph
from itemjax.graph.propagation import to_device
from itemjax.evaluation.evaluate import mean_metrics
from itemjax.objective.objectives import Batch, steps_per_epoch
from itemjax.runio import (append_jsonl, default_out, environment, log, read_jsonl, rewrite_jsonl, run_lock,
                           write_json_atomic, write_table)
from itemjax.train.tracking import Tracker
from itemjax.train.step import (
    MAX_HALVINGS,
    create_state,
    host_lr_scale,
    host_scaled,
    learning_rate,
    make_model,
    train_step,
    with_lr_scale,
)


#: With ``--time-budget``, the most steps between two checks of the budget inside an epoch (each
#: check waits for the device to finish the steps queued so far); near the budget the checks come
#: every step (:class:`_BudgetClock`).
_BUDGET_CHECK_STEPS = 20


class _BudgetClock:
    """When to read the clock inside an epoch so that a budgeted run stops within one step of its budget.

    After each check (the device synchronised, ``spent`` seconds of the budget used) the next one
    comes after ``clamp(floor((budget - spent) / s), 1, _BUDGET_CHECK_STEPS)`` steps, ``s`` the mean
    step time since the previous check: every 20 steps far from the budget (few synchronisations),
    every step within 20 steps' time of it. So a run trains at most about one step past its budget
    before it evaluates, whatever the length of its epochs and its ``--eval-every``.
    """

    def __init__(self, budget: float, seconds: Callable[[], float]):
        self.budget, self.seconds = budget, seconds
        self.next_check, self.last_step, self.last_time = 1, 0, None
        self.reading = None  # the latest reading (budget seconds used), None before the first check

    def spent(self, state, steps_done: int) -> bool:
        """Whether the budget is used up after ``steps_done`` steps of this epoch (checks only when due)."""
        if steps_done < self.next_check:
            return False
        jax.block_until_ready(state.step)
        now = self.seconds()
        self.reading = now
        if now >= self.budget:
            return True
        if self.last_time is None:
            interval = 1
        else:
            step_seconds = max((now - self.last_time) / max(steps_done - self.last_step, 1), 1e-9)
            interval = int(min(_BUDGET_CHECK_STEPS, max(1, (self.budget - now) // step_seconds)))
        self.last_step, self.last_time = steps_done, now
        self.next_check = steps_done + interval
        return False


#: The clock of the training loop's ``train_seconds`` / ``eval_seconds`` (and so of ``--time-budget``);
#: a module attribute so that a test can drive the budget logic with a fake clock.
_clock = time.perf_counter


@dataclasses.dataclass
class Prepared:
    """Everything built on the host before training: split, graph, device data, model."""

    split: object
    raw: object
    batch: Batch
    model: object
    hard_negatives_seconds: float = 0.0
    inductive: object = None  # InductiveSplit / ColdItemSplit (itemjax.evaluation.inductive); split = its training part
    features: tuple = (None, None)  # (user, item) itemjax.data.features.NodeFeatures, or None each


def prepare(config: TrainConfig, *, out: pathlib.Path | None = None) -> Prepared:
    """Load and split the data, build the graph and the device-side training data."""
    from itemjax.data.datasets import load_dataset
    from itemjax.data.split import split_of
    from itemjax.evaluation.inductive import protocol_split

    raw = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        min_rating=config.min_rating,
        kcore=config.kcore,
        sep=config.sep,
        progress=config.progress,
    )
    split = split_of(raw, config)
    log(split.describe())
    inductive, split = protocol_split(split, config)  # held-out users / items leave training, ids kept
    if inductive is not None:
        log(inductive.describe())
    features = node_features(config, raw)
    graph = to_device(build_graph(split.train), config.backend, *features)
    hard, hard_seconds = None, 0.0
    if config.neg_sampler in PPR_SAMPLERS:
        from itemjax.graph.ppr import cached_hard_negative_table

        t0 = time.perf_counter()
        cache_dir = pathlib.Path(config.data_dir or _data_root()) / ".itemjax-cache"
        hard = cached_hard_negative_table(
            split.train,
            cache_dir=_writable_cache(cache_dir),
            key=f"{split.name}-seed{config.seed}-t{config.test_frac}-v{config.valid_frac}",
            window=tuple(config.ppr_window),
            alpha=config.ppr_alpha,
            backend=config.ppr_backend,
            eps=config.ppr_eps,
            progress=config.progress,
        )
        hard_seconds = time.perf_counter() - t0
    data = sampling.make_train_data(split.train, hard)
    model = make_model(config, split.n_users, split.n_items, *(0 if f is None else f.n_features for f in features))
    return Prepared(split=split, raw=raw, batch=Batch(graph=graph, data=data), model=model,
                    hard_negatives_seconds=hard_seconds, inductive=inductive, features=features)


def node_features(config: TrainConfig, raw) -> tuple:
    """``(user, item)`` side features of the run (``--user-features``, ``--item-features``), None each if off."""
    from itemjax.data.features import load_features

    return (load_features(config.user_features, "user", raw, config.data_dir),
            load_features(config.item_features, "item", raw, config.data_dir))


def _data_root():
    from itemjax.data.datasets import data_root

    return data_root(None)


def _writable_cache(path: pathlib.Path) -> pathlib.Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # one per process: processes of a run may probe at once
        probe.write_text("")
        probe.unlink()
        return path
    except OSError:
        fallback = pathlib.Path.home() / ".cache" / "itemjax" / "ppr"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def fit_or_resume(config: TrainConfig, **kwargs) -> dict:
    """:func:`fit`, continuing the run if ``config.out`` already holds a started one (its
    ``config.json`` exists): what every command that trains a table of runs does, so that running
    the same command again after an interruption continues it."""
    started = (pathlib.Path(config.out) / "config.json").exists()
    return fit(dataclasses.replace(config, resume=config.resume or started), **kwargs)


def fit(config: TrainConfig, *, on_evaluation: Callable[[dict], None] | None = None) -> dict:
    """Train, select on validation, evaluate on test; return the summary dict.

    ``on_evaluation(record)`` is called after each evaluation with its metrics.jsonl record,
    once it is saved (checkpoint included); an exception it raises (e.g. Optuna's pruning
    signal, :mod:`itemjax.commands.tune`) ends the run there and propagates.

    ``config.time_budget``: the loop evaluates and stops as soon as ``train_seconds +
    eval_seconds`` (training steps plus validation, restored on ``--resume``) reaches the budget:
    at the end of the epoch in which it does, or inside an epoch (:class:`_BudgetClock`: every step
    near the budget), so every run overshoots by at most about one step plus one evaluation,
    whatever its ``--eval-every`` (``summary["budget_overshoot_seconds"]``);
    data loading and the PPR table are timed apart (``data_seconds``,
    ``hard_negatives_seconds``). ``summary["stop_reason"]`` says why the loop ended: ``"epochs"``,
    ``"early stopping"`` or ``"time budget"``. ``config.refit``: see :func:`refit`.

    ``config.distributed`` (several processes, :mod:`itemjax.parallel.distributed`): every process
    calls ``fit`` with the same options (its own ``process_id``) and returns the same summary;
    process 0 alone writes the run files (:func:`~itemjax.parallel.distributed.is_writer`), every
    process takes part in each checkpoint's save and restore. An exception in one process ends
    that process instead of propagating (:func:`~itemjax.parallel.distributed.stop_peers_on_error`),
    and the others then stop with an error naming it.
    """
    config = config.resolve()
    initialize(config.distributed, coordinator_address=config.coordinator_address,
               num_processes=config.num_processes, process_id=config.process_id,
               heartbeat_timeout=config.heartbeat_timeout)  # several processes: before anything touches a device
    with stop_peers_on_error():
        return _fit(config, on_evaluation)


def _fit(config: TrainConfig, on_evaluation) -> dict:
    """:func:`fit` once the process is set up (``config`` resolved)."""
    writer = is_writer()  # process 0 writes the run files; every process checkpoints
    out = pathlib.Path(config.out) if config.out else default_out(config)
    ckpt_dir = out / "checkpoints"
    saved = None
    if config.resume:
        if (out / "config.json").exists():
            saved = json.loads((out / "config.json").read_text())
            _check_resume_compatible(config, saved["config"])
        elif not out.is_dir() or (ckpt_dir.exists() and any(ckpt_dir.iterdir())):
            raise ConfigError(f"--resume: {out} is not a run directory (no config.json); check --out")
        else:  # killed while loading data, before anything was saved
            log(f"--resume: nothing saved yet in {out}; starting from epoch 1")
    elif ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    barrier("itemjax-run-directory-read")  # every process has seen the directory as it was before process 0 writes
    if not writer:
        return _fit_in(config, on_evaluation, out, saved, writer)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):  # one process trains into a folder at a time
        return _fit_in(config, on_evaluation, out, saved, writer)


def _fit_in(config: TrainConfig, on_evaluation, out: pathlib.Path, saved, writer: bool) -> dict:
    """:func:`_fit` once the run folder is checked (``saved``: its config.json when resuming) and held."""
    ckpt_dir = out / "checkpoints"
    loads = [_load1()]

    t_data = time.perf_counter()
    prep = prepare(config, out=out)
    data_seconds = time.perf_counter() - t_data - prep.hard_negatives_seconds
    if saved is not None:
        _check_same_data(prep.raw.files, saved["dataset"]["files"], out)
    split, batch, model = prep.split, prep.batch, prep.model
    key = jax.random.PRNGKey(config.seed)
    init_key, train_key = jax.random.split(key)
    state = create_state(config, model, batch.graph, batch.data, init_key)
    # One code path for 1..N devices: users of each step / evaluation chunk split across the mesh.
    placement = Placement(make_mesh(), shard_embeddings=config.shard_embeddings)
    batch, state = placement.place_batch(batch), placement.place_state(state)
    train_key = placement.replicate(train_key)
    step_fn = placement.jit_step(train_step, state, step_compiler_options(config.cpu_fusions))

    if saved is None and writer:
        write_json_atomic(out / "config.json", {
            "config": config.to_dict(),
            # native_kernel: whether --backend native runs the C++ kernel here, or why not; ppr_push: the same for
            # --ppr-backend push
            "environment": {**environment(), "placement": placement.describe(), "native_kernel": native.status(),
                            "ppr_push": ppr_push.status()},
            "dataset": {"name": split.name, "files": prep.raw.files, "stats": split.stats()},
        })
    ckpts = RunCheckpoints(out)
    meta = {"epoch": 0, "best_value": None, "best_epoch": 0, "bad_evals": 0, "train_seconds": 0.0,
            "eval_seconds": 0.0, "stopped_early": False, "stop_reason": None, "lr_halvings": 0, "lr_scales": [],
            "lr_halved_epoch": 0}
    if config.resume and ckpts.latest_step("latest") is not None:
        restored, restored_meta = ckpts.restore("latest", _checkpointable(state))
        meta.update(restored_meta)
        if meta["stopped_early"] and meta["stop_reason"] is None:  # written before stop_reason existed
            meta["stop_reason"] = "early stopping"
        state = state.replace(**restored)
        log(f"resumed from epoch {meta['epoch']} (step {int(state.step)}) in {out}")
        used = meta["train_seconds"] + meta["eval_seconds"]
        if meta["stop_reason"] == "time budget" and (config.time_budget is None or used < config.time_budget):
            # a run that ended at its budget, resumed with a larger one (_check_resume_compatible): it goes on
            meta["stop_reason"] = None
            log(f"--resume: the run stopped at its time budget after {used:.0f} s; continuing to "
                + ("the epoch cap" if config.time_budget is None else f"--time-budget {config.time_budget:g} s"))
        if writer and saved is not None and saved["config"].get("time_budget") != config.time_budget:
            # config.json records the budget the run now has; the run is unfinished until it is reached
            write_json_atomic(out / "config.json", {**saved, "config": {**saved["config"],
                                                                          "time_budget": config.time_budget}})
            (out / "summary.json").unlink(missing_ok=True)
        if writer:
            kept = [r for r in read_jsonl(out / "metrics.jsonl") if r["epoch"] <= meta["epoch"]]
            rewrite_jsonl(out / "metrics.jsonl", kept)
            # the summary's load_average covers the whole run: the samples of the evaluations before the resume too
            loads = [r.get("load1") for r in kept] + loads
    elif writer and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    tracker = Tracker(out, config.tensorboard, resume_step=int(state.step))  # drops events past a resumed step

    n_steps = steps_per_epoch(config, batch.data)
    select = config.select_metric
    lr_at = learning_rate(config, n_steps)
    has_valid = split.valid.nnz > 0
    scaled = host_scaled(config)
    popularity_value = None  # validation --select-metric of the popularity ranking (--popularity-guard)
    if has_valid and config.popularity_guard > 0:
        from itemjax.evaluation.evaluate import popularity_embeddings

        popular = placement.evaluate(*popularity_embeddings(split.train), split.train, split.valid, ks=config.ks,
                                     chunk_size=config.eval_chunk)
        popularity_value = float(popular[select])
        log(f"popularity ranking: validation {select} {popularity_value:.4f}; evaluations count toward --patience "
            f"once the model beats it by {config.popularity_guard:.0%}")

    def set_lr_scale(state, used_seconds: float):
        """The host's learning-rate factor (plateau halvings, or the share of the time budget used) into
        the state; each change is kept in ``meta["lr_scales"]`` as ``[step, factor]`` for the refit."""
        if not scaled:
            return state
        progress = used_seconds / config.time_budget if config.time_budget else 0.0
        scale = host_lr_scale(config, progress=progress, halvings=meta["lr_halvings"])
        if not meta["lr_scales"] or meta["lr_scales"][-1][1] != scale:
            meta["lr_scales"].append([int(state.step), scale])
        return with_lr_scale(state, placement.put(np.asarray(scale, np.float32), placement.replicated))

    def current_lr(state) -> float:
        factor = meta["lr_scales"][-1][1] if scaled and meta["lr_scales"] else 1.0
        return float(lr_at(int(state.step))) * factor
    diagnostics = None
    if config.diagnostics:
        from itemjax.train.diagnostics import Diagnostics

        diagnostics = Diagnostics(config, n_steps, split.train, split.valid if has_valid else split.test)
    start_epoch = meta["epoch"] + 1
    bar = tqdm(range(start_epoch, config.epochs + 1), initial=start_epoch - 1, total=config.epochs,
               desc=f"{config.model}+{config.loss}", unit="epoch", disable=not (config.progress and writer),
               dynamic_ncols=True)
    for epoch in bar:
        if meta["stop_reason"] is not None:
            break
        t0 = _clock()
        losses = []
        spent = meta["train_seconds"] + meta["eval_seconds"]
        state = set_lr_scale(state, spent)
        budget_clock = (None if config.time_budget is None
                        else _BudgetClock(config.time_budget, lambda: spent + _clock() - t0))
        for i in range(n_steps):
            state, step_metrics = step_fn(state, batch, train_key)
            losses.append(step_metrics["loss"])
            if budget_clock is not None and i + 1 < n_steps:
                if budget_clock.spent(state, i + 1):
                    break  # the budget ran out inside the epoch: evaluate now, not at the epoch's end
                if budget_clock.reading is not None:
                    state = set_lr_scale(state, budget_clock.reading)
        losses = np.asarray(jax.device_get(jnp.stack(losses)))
        epoch_seconds = _clock() - t0
        meta["train_seconds"] += epoch_seconds
        _check_losses(losses, state, len(losses), epoch, config, ckpt_dir / "latest")
        over_budget = config.time_budget is not None and spent + epoch_seconds >= config.time_budget
        evaluating = epoch % config.eval_every == 0 or epoch == config.epochs or over_budget
        if evaluating and not _all_finite(state.params):  # never checkpoint NaN parameters
            raise NumericalError(
                f"the parameters became NaN/inf in epoch {epoch} (steps {int(state.step) - n_steps}-"
                f"{int(state.step) - 1}) though the loss stayed finite; the last good checkpoint is kept in "
                f"{ckpt_dir / 'latest'}; try a lower --lr (now {config.lr})"
            )
        mean_loss = float(losses.mean())
        tracker.scalars(int(state.step), {"loss": mean_loss, "step_seconds": epoch_seconds / len(losses),
                                          "lr": current_lr(state)}, "train")
        postfix = {"loss": f"{mean_loss:.4f}", "steps/s": f"{n_steps / epoch_seconds:.1f}"}
        if evaluating:
            t1 = _clock()
            user_emb, item_emb = placement.embed(state, batch.graph)
            split_name, targets, exclude = ("valid", split.valid, split.train) if has_valid else (
                "test", split.test, [split.train, split.valid])
            metrics = placement.evaluate(user_emb, item_emb, exclude, targets, ks=config.ks, chunk_size=config.eval_chunk)
            meta["eval_seconds"] += _clock() - t1
            loads.append(_load1())
            record = {"epoch": epoch, "split": split_name, "loss": mean_loss, "step": int(state.step),
                      "train_seconds": meta["train_seconds"], "elapsed": meta["train_seconds"] + meta["eval_seconds"],
                      "load1": loads[-1], "lr": current_lr(state),
                      **{k: float(v) for k, v in metrics.items()}}
            if diagnostics is not None:  # not timed: outside train_seconds and eval_seconds
                record.update(diagnostics(state, batch, train_key, user_emb, item_emb))
            meta["epoch"] = epoch
            if has_valid:
                value = record[select]
                if meta["best_value"] is None or value > meta["best_value"]:
                    meta.update(best_value=value, best_epoch=epoch, bad_evals=0)
                    ckpts.save("best", int(state.step), _checkpointable(state), meta)
                elif popularity_value is not None and meta["best_value"] <= popularity_value * (1 + config.popularity_guard):
                    if not meta.get("guard_logged"):
                        meta["guard_logged"] = True
                        log(f"epoch {epoch}: validation {select} {value:.4f} is still at the popularity ranking's "
                            f"({popularity_value:.4f}): not counted toward --patience until the model beats it by "
                            f"{config.popularity_guard:.0%} (if it stays there, raise --lr)")
                else:
                    meta["bad_evals"] += 1
                    since = max(meta["best_epoch"], meta["lr_halved_epoch"])
                    if (config.lr_schedule == "plateau" and epoch - since >= config.lr_patience
                            and meta["lr_halvings"] < MAX_HALVINGS):
                        meta["lr_halvings"] += 1  # applied from the next epoch on (set_lr_scale)
                        meta["lr_halved_epoch"] = epoch
                        log(f"epoch {epoch}: no {select} gain since epoch {meta['best_epoch']}; learning rate "
                            f"x{host_lr_scale(config, progress=0.0, halvings=meta['lr_halvings']):g}")
                    if meta["bad_evals"] >= config.patience:
                        meta.update(stopped_early=True, stop_reason="early stopping")
            if (meta["stop_reason"] is None and config.time_budget is not None
                    and record["elapsed"] >= config.time_budget):
                meta["stop_reason"] = "time budget"
            if writer:
                append_jsonl(out / "metrics.jsonl", record)
            tracker.scalars(int(state.step), {k: float(v) for k, v in metrics.items() if "@" in k}, split_name)
            ckpts.save("latest", int(state.step), _checkpointable(state), meta)
            if on_evaluation is not None:
                try:
                    on_evaluation(record)
                except BaseException:
                    tracker.close()
                    ckpts.close()
                    raise
            postfix[select] = f"{record.get(select, float('nan')):.4f}"
            if meta["best_value"] is not None:
                postfix["best"] = f"{meta['best_value']:.4f}@{meta['best_epoch']}"
        bar.set_postfix(postfix)
        if meta["stop_reason"] == "early stopping":
            log(f"early stop at epoch {epoch}: no {select} gain on validation for {config.patience} evaluations")
        elif meta["stop_reason"] == "time budget":
            log(f"time budget of {config.time_budget:g} s reached at epoch {epoch} "
                f"({meta['train_seconds'] + meta['eval_seconds']:.0f} s of training and validation)")
    bar.close()
    stop_reason = meta["stop_reason"] or "epochs"

    if has_valid and ckpts.latest_step("best") is not None:
        best, best_meta = ckpts.restore("best", _checkpointable(state))
        final = state.replace(**best)
        selected_epoch, selected_step = best_meta["best_epoch"], int(ckpts.latest_step("best"))
    else:
        final, selected_epoch, selected_step = state, meta["epoch"], int(state.step)
    user_emb, item_emb = placement.embed(final, batch.graph)
    per_user = placement.evaluate(user_emb, item_emb, [split.train, split.valid], split.test, ks=config.ks,
                                  chunk_size=config.eval_chunk, reduce=None)
    test = mean_metrics(per_user)
    if writer:
        write_per_user(out / "per_user_test", per_user, split.user_ids)
    metrics = test
    if prep.inductive is not None:  # held-out users, popularity/..., transductive/... (itemjax.evaluation.inductive)
        from itemjax.evaluation.inductive import inductive_report, report_line

        metrics = inductive_report(model, placement.model_params(final), prep.inductive, test, backend=config.backend,
                                   ks=config.ks, chunk_size=config.eval_chunk, features=prep.features)
        log(report_line(metrics))
    loads.append(_load1())
    summary = {
        **{k: float(v) for k, v in metrics.items()},
        "split": "test" if prep.inductive is None else prep.inductive.target_name,
        "protocol": config.protocol,
        "selected_epoch": selected_epoch,
        "selected_step": selected_step,
        "epochs": meta["epoch"],
        "steps": int(state.step),
        "train_seconds": meta["train_seconds"],
        "eval_seconds": meta["eval_seconds"],
        "stopped_early": meta["stopped_early"],
        "stop_reason": stop_reason,
        "time_budget": config.time_budget,
        # with a budget: the seconds it counts (training + validation) and how far past it the run went
        "budget_seconds_used": meta["train_seconds"] + meta["eval_seconds"],
        "budget_overshoot_seconds": (None if config.time_budget is None
                                     else max(0.0, meta["train_seconds"] + meta["eval_seconds"] - config.time_budget)),
        "selection": f"best validation {select}" if has_valid else "last epoch (no validation split)",
        "dataset": split.name,
        "model": config.model,
        "loss": config.loss,
        "data_seconds": data_seconds,
        "hard_negatives_seconds": prep.hard_negatives_seconds,
        "load_average": _load_summary(loads),
        "popularity_valid": popularity_value,
    }
    if writer:
        write_json_atomic(out / "summary.json", summary)
    tracker.scalars(int(state.step), {k: v for k, v in test.items() if "@" in k}, "test")
    ckpts.close()
    try:
        if writer:
            from itemjax.evaluation.plots import plot_run

            plot_run(out)
    except Exception as e:  # a plot is a convenience: never fail a finished run over it
        log(f"warning: no learning-curve plot in {out} ({type(e).__name__}: {e})")
    log("test: " + ", ".join(f"{k}={v:.4f}" for k, v in test.items() if "@" in k))
    if config.refit:
        summary.update(refit(config, prep, placement, selected_step, out, lr_scales=meta["lr_scales"]))
        if writer:
            write_json_atomic(out / "summary.json", summary)
        tracker.scalars(int(state.step), {k.removeprefix("refit/"): v for k, v in summary.items()
                                          if k.startswith("refit/") and "@" in k}, "refit")
        log("refit test: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.items()
                                       if k.startswith("refit/") and "@20" in k))
    tracker.close()
    log(f"run saved in {out}")
    return summary


def write_per_user(path: pathlib.Path, per_user: dict, user_ids) -> pathlib.Path:
    """The test metrics of every evaluated user (``evaluate(..., reduce=None)``) as a table:
    ``user`` (row), ``user_id`` (original id), ``n_relevant`` and one column per metric;
    ``<path>.parquet``, or ``.csv`` without pyarrow (:func:`itemjax.runio.write_table`)."""
    users = np.asarray(per_user["users"])
    columns = {"user": users, "user_id": np.asarray(user_ids)[users], "n_relevant": per_user["n_relevant"]}
    columns.update({k: v for k, v in per_user.items() if "@" in k})
    return write_table(path, columns)


def refit_train(split):
    """``train + valid`` of ``split`` as one canonical CSR (the refit's training set and graph)."""
    full = (split.train + split.valid).tocsr()
    full.sum_duplicates()
    full.sort_indices()
    full.data[:] = 1.0
    return full


def refit(config: TrainConfig, prep: Prepared, placement, n_steps: int, out: pathlib.Path, *,
          lr_scales=()) -> dict:
    """Train again from scratch on train + validation for ``n_steps`` steps; test that model.

    The validation carve-out chose the number of steps (the best-validation checkpoint's step);
    the refit model starts from the same initialisation and key, trains on every interaction
    outside test (they are also its graph's edges) and is tested once, with every known
    interaction excluded from the ranking, as published LightGCN numbers are. Its checkpoint is
    ``<out>/refit/checkpoints/latest`` (saved every ``eval_every`` epochs' worth of steps, so
    ``--resume`` continues it). Returns ``{"refit/<metric>": ..., "refit_steps", ...}``.
    ``lr_scales``: the ``[step, factor]`` changes of the host's learning-rate factor in the selection run
    (``--lr-schedule plateau`` or a cosine over the time budget), replayed step by step so that the refit
    follows the same learning rates.
    """
    split = prep.split
    full = refit_train(split)
    hard = None
    if config.neg_sampler in PPR_SAMPLERS:
        from itemjax.graph.ppr import cached_hard_negative_table

        hard = cached_hard_negative_table(
            full, cache_dir=_writable_cache(pathlib.Path(config.data_dir or _data_root()) / ".itemjax-cache"),
            key=f"{split.name}-seed{config.seed}-t{config.test_frac}-v{config.valid_frac}-refit",
            window=tuple(config.ppr_window), alpha=config.ppr_alpha, backend=config.ppr_backend, eps=config.ppr_eps,
            progress=config.progress)
    batch = placement.place_batch(Batch(graph=to_device(build_graph(full), config.backend, *prep.features),
                                        data=sampling.make_train_data(full, hard)))
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = placement.place_state(create_state(config, prep.model, batch.graph, batch.data, init_key))
    train_key = placement.replicate(train_key)
    step_fn = placement.jit_step(train_step, state, step_compiler_options(config.cpu_fusions))
    ckpts = RunCheckpoints(out / "refit")
    meta = {"train_seconds": 0.0}
    if ckpts.latest_step("latest") is not None:
        restored, meta = ckpts.restore("latest", _checkpointable(state))
        state = state.replace(**restored)
        log(f"refit: resumed at step {int(state.step)} of {n_steps}")
    chunk = steps_per_epoch(config, batch.data) * config.eval_every
    bar = tqdm(total=n_steps, initial=int(state.step), desc="refit on train+valid", unit="step",
               disable=not (config.progress and is_writer()), dynamic_ncols=True)
    while int(state.step) < n_steps:
        todo = min(chunk, n_steps - int(state.step))
        t0 = time.perf_counter()
        losses = []
        for _ in range(todo):
            if host_scaled(config):
                state = with_lr_scale(state, placement.put(
                    np.asarray(_factor_at(lr_scales, int(state.step)), np.float32), placement.replicated))
            state, step_metrics = step_fn(state, batch, train_key)
            losses.append(step_metrics["loss"])
        losses = np.asarray(jax.device_get(jnp.stack(losses)))
        meta["train_seconds"] += time.perf_counter() - t0
        _check_losses(losses, state, todo, None, config, ckpts.root / "latest")
        ckpts.save("latest", int(state.step), _checkpointable(state), meta)
        bar.update(todo)
    bar.close()
    user_emb, item_emb = placement.embed(state, batch.graph)
    test = placement.evaluate(user_emb, item_emb, [split.train, split.valid], split.test, ks=config.ks,
                              chunk_size=config.eval_chunk)
    ckpts.close()
    return {**{f"refit/{k}": float(v) for k, v in test.items()}, "refit_steps": int(state.step),
            "refit_train_seconds": meta["train_seconds"], "refit_train_interactions": int(full.nnz)}


def _factor_at(changes, step: int) -> float:
    """The factor of the last ``[step, factor]`` change at or before ``step`` (1 before the first)."""
    factor = 1.0
    for at, value in changes:
        if at > step:
            break
        factor = value
    return factor


def _check_losses(losses: np.ndarray, state, n_steps: int, epoch, config: TrainConfig, keep_dir) -> None:
    """Raise :class:`NumericalError` naming the first step whose loss is not finite."""
    if np.all(np.isfinite(losses)):
        return
    bad = int(np.flatnonzero(~np.isfinite(losses))[0])
    step = int(state.step) - n_steps + bad
    where = f" (epoch {epoch})" if epoch is not None else ""
    raise NumericalError(
        f"the loss became {losses[bad]} at step {step}{where}; the last good checkpoint is kept "
        f"in {keep_dir}; try a lower --lr (now {config.lr})"
        + (f" or a larger --tau (now {config.tau})" if config.loss == "item" else "")
    )


def _load1() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _load_summary(loads: list) -> dict | None:
    """``{"min", "mean", "max", "n"}`` of the 1-minute load averages sampled during a run."""
    values = [v for v in loads if v is not None]
    if not values:
        return None
    return {"min": min(values), "mean": round(sum(values) / len(values), 2), "max": max(values), "n": len(values)}


def _checkpointable(state) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


#: Options that may differ when resuming (they do not change what is computed so far); ``time_budget``
#: too, unless the learning rate follows it (:func:`_budget_sets_lr`).
_RESUME_FREE = BOOKKEEPING | {"epochs", "patience", "refit"}


def _budget_sets_lr(options: dict) -> bool:
    """Whether a run's learning rate depends on its time budget (a cosine over the budget,
    :func:`itemjax.train.step.host_scaled`): then another budget changes what was computed so far."""
    return (options.get("lr_schedule") == "cosine" and options.get("decay_epochs") is None
            and options.get("time_budget") is not None)


def _check_resume_compatible(config: TrainConfig, saved: dict) -> None:
    """Raise :class:`ConfigError` unless ``config`` may continue the run whose config.json
    ``"config"`` is ``saved``. A changed ``--time-budget`` is allowed (a run that stopped at its
    budget goes on to the new one) unless the learning rate follows the budget."""
    current = config.to_dict()
    diffs = config_diff(current, saved, ignore=_RESUME_FREE | {"time_budget"})
    if diffs:
        k, (old, new) = next(iter(diffs.items()))
        raise ConfigError(
            f"--resume: option {k} is {new!r} but the run in {config.out} used {old!r}; "
            "pass the same options to continue it, or start a new --out"
        )
    if current.get("time_budget") != saved.get("time_budget") and (_budget_sets_lr(current) or _budget_sets_lr(saved)):
        raise ConfigError(
            f"--resume: --time-budget is {current.get('time_budget')!r} but the run in {config.out} used "
            f"{saved.get('time_budget')!r}, and its cosine learning rate spans the budget; pass the same budget "
            "to continue it, or start a new --out"
        )


def extendable(config: TrainConfig, run) -> bool:
    """Whether the finished run in ``run`` is ``config``'s run stopped at a smaller time budget, so that
    resuming it with ``config`` continues it to ``config.time_budget`` (:func:`reuse_or_fit`): the
    same options apart from bookkeeping and the budget, a learning rate that does not follow the
    budget, and ``stop_reason == "time budget"``."""
    run = pathlib.Path(run)
    saved = json.loads((run / "config.json").read_text())["config"]
    old, new = saved.get("time_budget"), config.time_budget
    # the same options otherwise (below), so the saved run's schedule is config's
    if old is None or new is None or new <= old or _budget_sets_lr(saved):
        return False
    if config_diff(config.to_dict(), saved, ignore=BOOKKEEPING | {"time_budget"}):
        return False
    summary = json.loads((run / "summary.json").read_text())
    return summary.get("stop_reason") == "time budget"


def check_reusable(config: TrainConfig, run) -> None:
    """Raise :class:`ConfigError` if the finished run in ``run`` was made with other options than
    ``config`` (bookkeeping aside, :data:`itemjax.config.BOOKKEEPING`): the table commands reuse a
    finished run only when it is the run they would train."""
    run = pathlib.Path(run)
    saved = json.loads((run / "config.json").read_text())["config"]
    diffs = config_diff(config.to_dict(), saved, ignore=BOOKKEEPING)
    if diffs:
        k, (old, new) = next(iter(diffs.items()))
        raise ConfigError(f"{run} was trained with {k}={old!r}, not {new!r}; "
                          "delete that folder or choose another --out")


def reuse_or_fit(config: TrainConfig, tag: str = "") -> None:
    """Train ``config`` into ``config.out`` unless a finished run with the same options is there
    (:func:`check_reusable`); an interrupted one continues (:func:`fit_or_resume`), and so does one that
    stopped at a smaller time budget (:func:`extendable`: a table rerun with a longer budget)."""
    run = pathlib.Path(config.out)
    if (run / "summary.json").exists() and extendable(config, run):
        if tag:
            print(f"{tag}: {run} stopped at a smaller time budget; continuing it to {config.time_budget:g} s",
                  file=sys.stderr)
        fit_or_resume(config)
        return
    if (run / "summary.json").exists():
        check_reusable(config, run)
        if tag:
            print(f"{tag}: {run} already finished; reusing it", file=sys.stderr)
        return
    if tag:
        print(f"{tag}: training -> {run}", file=sys.stderr)
    fit_or_resume(config)


def _check_same_data(files: dict, saved_files: dict, out) -> None:
    """``--resume`` must read the very files the run started on (compared by sha256)."""
    if sorted(files.values()) != sorted(saved_files.values()):
        changed = [path for path, sha in sorted(files.items()) if sha not in set(saved_files.values())] or sorted(files)
        raise ConfigError(
            f"--resume: the data changed since the run in {out} started ({changed[0]} has another sha256 "
            "than config.json records); restore the original file or start a new --out"
        )


def _all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))
