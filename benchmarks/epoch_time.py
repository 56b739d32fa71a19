#!/usr/bin/env python
"""Full-epoch time on the big graphs (gowalla, yelp2018): LightGCN with BPR or ITEM.

    python benchmarks/epoch_time.py                                   # gowalla, BPR, both backends
    python benchmarks/epoch_time.py --datasets gowalla,yelp2018 --losses bpr,item --backends csr
    python benchmarks/epoch_time.py --steps 40                        # time 40 steps, extrapolate the epoch

Each case (dataset, loss, backend) runs in its own subprocess, so that its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own. A case does what
``itemjax.train.run.fit`` does, timing each part:

* process set-up as in ``fit``: ``itemjax.parallel.distributed.initialize`` (glibc allocator tuning,
  ``--no-malloc-tuning`` to compare without);

* load + split (the dataset's predefined train/test; ``--valid-frac`` carved from train,
  default 0 so that an epoch covers every training interaction), graph build, device copy;
* ITEM only: the PPR hard-negative table (``itemjax.graph.ppr.hard_negative_table``, window
  (10, 100), not cached), and ITEM samples half of its negatives from it (``mixed``);
* the epoch: ``steps = ceil(n_train / B)`` (BPR, B = 2048 triples) or ``ceil(n_active_users / B)``
  (ITEM, B = 256 users) calls of the real jitted ``train_step`` through
  ``itemjax.train.placement.Placement.jit_step`` (the path ``fit`` uses), after ``--warmup`` steps
  (compilation included there), losses fetched once at the end as in ``fit``; wall-clock and
  CPU seconds of the process (``time.process_time``, all threads: much less sensitive to other jobs than wall-clock);
* the full-ranking evaluation of every test user (``Placement.embed`` + ``evaluate``, training
  items excluded): first call (with compilation) and a second call.

Also (``--plain``) the 1-device overhead check: median step of the plain jitted
``train_step`` vs the placement's step on the same state. Load averages (``os.getloadavg``)
are recorded before and after every case: the machine is shared. Prints a markdown table and
writes ``benchmarks/out/epoch_time.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

OUT = pathlib.Path(__file__).resolve().parent / "out"


def run_case(args) -> dict:
    """One (dataset, loss, backend) case in this process; returns its measurements."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from itemjax.config import TrainConfig
    from itemjax.data.datasets import load_dataset
    from itemjax.parallel.distributed import make_mesh
    from itemjax.train.placement import Placement
    from itemjax.graph.bipartite import build_graph
    from itemjax.graph.propagation import to_device
    from itemjax.objective.sampling import make_train_data
    from itemjax.data.split import split_of
    from itemjax.objective.objectives import Batch, steps_per_epoch
    from itemjax.train.step import create_state, make_model, train_step

    from itemjax.parallel.distributed import initialize

    initialize(False, tune_allocator=not args.no_malloc_tuning)  # as itemjax.train.run.fit does, before JAX starts
    record = {"dataset": args.dataset, "loss": args.loss, "backend": args.backend, "load_before": os.getloadavg(),
              "malloc_tuning": not args.no_malloc_tuning}
    item = args.loss == "item"
    config = TrainConfig(dataset=args.dataset, loss=args.loss, backend=args.backend, dim=args.dim, layers=args.layers,
                         batch_size=args.item_batch if item else args.batch_size, valid_frac=args.valid_frac,
                         neg_sampler="mixed" if item else "uniform", progress=False).resolve()
    t0 = time.perf_counter()
    raw = load_dataset(config.dataset, data_dir=config.data_dir, progress=False)
    split = split_of(raw, config)
    record["load_split_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = to_device(build_graph(split.train), config.backend)
    record["graph_seconds"] = time.perf_counter() - t0
    hard = None
    if item:
        from itemjax.graph.ppr import hard_negative_table

        t0 = time.perf_counter()
        if args.ppr_cache:  # a table computed by an earlier case is not timed again
            from itemjax.graph.ppr import cached_hard_negative_table, table_cache_path

            params = dict(window=tuple(config.ppr_window), alpha=config.ppr_alpha)
            key = f"{split.name}-bench"
            hit = table_cache_path(split.train, cache_dir=args.ppr_cache, key=key, **params).exists()
            hard = cached_hard_negative_table(split.train, cache_dir=args.ppr_cache, key=key, progress=False, **params)
        else:
            hit = False
            hard = hard_negative_table(split.train, window=tuple(config.ppr_window), alpha=config.ppr_alpha, progress=False)
        if not hit:
            record["ppr_seconds"] = time.perf_counter() - t0
    data = make_train_data(split.train, hard)
    record.update(n_users=split.n_users, n_items=split.n_items, n_train=int(split.train.nnz),
                  n_test_users=int((np.diff(split.test.indptr) > 0).sum()), batch_size=config.batch_size)

    model = make_model(config, split.n_users, split.n_items)
    init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
    state = create_state(config, model, graph, data, init_key)
    placement = Placement(make_mesh())
    batch, state = placement.place_batch(Batch(graph=graph, data=data)), placement.place_state(state)
    train_key = placement.replicate(train_key)
    step = placement.jit_step(train_step, state)

    n_steps = steps_per_epoch(config, data)
    record["steps_per_epoch"] = n_steps
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        state, metrics = step(state, batch, train_key)
    jax.block_until_ready(state)
    record["warmup_seconds"] = time.perf_counter() - t0  # includes the compilation

    timed = n_steps if not args.steps else min(args.steps, n_steps)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    losses = []
    for _ in range(timed):
        state, metrics = step(state, batch, train_key)
        losses.append(metrics["loss"])
    losses = np.asarray(jax.device_get(jnp.stack(losses)))
    seconds = time.perf_counter() - t0
    # CPU seconds of this process (all its threads): what the epoch costs whatever the other jobs do
    record["epoch_cpu_seconds"] = (time.process_time() - cpu0) * n_steps / timed
    record.update(timed_steps=timed, step_seconds=seconds / timed, epoch_seconds=seconds * n_steps / timed,
                  epoch_extrapolated=timed < n_steps, final_loss=float(losses[-1]))

    if args.plain:  # 1-device overhead: plain jitted train_step vs the placement's step
        plain_state = state
        for _ in range(2):
            plain_state, _ = train_step(plain_state, batch, train_key)
        jax.block_until_ready(plain_state)
        times = {"plain": [], "placement": []}
        for _ in range(args.plain):
            for name, fn in (("plain", train_step), ("placement", step)):
                t = time.perf_counter()
                jax.block_until_ready(fn(state, batch, train_key))
                times[name].append(time.perf_counter() - t)
        record["plain_step_seconds"] = statistics.median(times["plain"])
        record["placement_step_seconds"] = statistics.median(times["placement"])

    if not args.no_eval:
        exclude = [split.train, split.valid]
        for name in ("eval_first_seconds", "eval_seconds"):
            t0 = time.perf_counter()
            user_emb, item_emb = placement.embed(state, batch.graph)
            result = placement.evaluate(user_emb, item_emb, exclude, split.test, ks=(20,), chunk_size=args.eval_chunk)
            record[name] = time.perf_counter() - t0
        record["recall@20"], record["ndcg@20"] = result["recall@20"], result["ndcg@20"]
    record["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    record["load_after"] = os.getloadavg()
    record["devices"] = [str(d) for d in jax.devices()]
    return record


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def table(records) -> str:
    head = ("| dataset | loss | backend | n_train | steps/epoch | step s | epoch s | epoch CPU s | eval s (all users) | "
            "PPR s | peak RSS GiB | load 1-min before/after |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['loss']} | {r['backend']} | failed: {r['error'][:80]} |")
            continue
        epoch = fmt(r["epoch_seconds"], 1) + (" (extrap.)" if r["epoch_extrapolated"] else "")
        lines.append(
            f"| {r['dataset']} | {r['loss']} | {r['backend']} | {r['n_train']} | {r['steps_per_epoch']} | "
            f"{fmt(r['step_seconds'], 3)} | {epoch} | {fmt(r['epoch_cpu_seconds'], 1)} | {fmt(r.get('eval_seconds'), 1)} | {fmt(r.get('ppr_seconds'), 1)} | "
            f"{fmt(r['peak_rss_gib'])} | {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="gowalla")
    p.add_argument("--losses", default="bpr")
    p.add_argument("--backends", default="csr,segment")
    p.add_argument("--batch-size", type=int, default=2048, help="BPR triples per step")
    p.add_argument("--item-batch", type=int, default=256, help="ITEM users per step")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--valid-frac", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=0, help="time this many steps and extrapolate (0: the full epoch)")
    p.add_argument("--plain", type=int, default=0, help="also time N plain train_step calls vs the placement's")
    p.add_argument("--eval-chunk", type=int, default=1024)
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="leave glibc malloc as is (see itemjax.parallel.host_memory.tune_host_allocator)")
    p.add_argument("--ppr-cache", default="", help="cache PPR tables in this directory (a cached table is not timed)")
    p.add_argument("--out", default=str(OUT / "epoch_time.json"))
    p.add_argument("--case", nargs=3, metavar=("DATASET", "LOSS", "BACKEND"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.case:  # child process: one case, JSON on the last stdout line
        args.dataset, args.loss, args.backend = args.case
        print(json.dumps(run_case(args)))
        return

    passthrough = [f"--batch-size={args.batch_size}", f"--item-batch={args.item_batch}", f"--dim={args.dim}",
                   f"--layers={args.layers}", f"--valid-frac={args.valid_frac}", f"--warmup={args.warmup}",
                   f"--steps={args.steps}", f"--plain={args.plain}", f"--eval-chunk={args.eval_chunk}"]
    passthrough += ["--no-eval"] if args.no_eval else []
    passthrough += ["--no-malloc-tuning"] if args.no_malloc_tuning else []
    passthrough += [f"--ppr-cache={args.ppr_cache}"] if args.ppr_cache else []
    records = []
    for dataset in args.datasets.split(","):
        for loss in args.losses.split(","):
            for backend in args.backends.split(","):
                cmd = [sys.executable, __file__, *passthrough, "--case", dataset, loss, backend]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    record = {"dataset": dataset, "loss": loss, "backend": backend, "error": err}
                else:
                    record = json.loads(proc.stdout.strip().splitlines()[-1])
                records.append(record)
                print(json.dumps(record), file=sys.stderr, flush=True)
    print(table(records))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python benchmarks/epoch_time.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "records": records,
    }, indent=1))


if __name__ == "__main__":
    main()
