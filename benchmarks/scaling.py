#!/usr/bin/env python
"""How cost grows with graph size: synthetic power-law bipartite graphs from 1e5 to 1e7 edges.

    python benchmarks/scaling.py                          # 1e5, 3e5, 1e6, 3e6, 1e7 interactions
    python benchmarks/scaling.py --max-edges 1e6          # stop early (memory / time)

Graphs: ``E`` distinct (user, item) interactions with ``n_users = E / 27`` and ``n_items = E / 20``
(Gowalla's ratios), user activity and item popularity both power laws (rank-r probability
``~ r^-a``, ``a = 0.5`` for users and ``0.7`` for items; shuffled ids), 80 % train / 20 % test.
Each size runs in its own subprocess (its peak RSS is its own) and measures, on the CPU
(``csr`` propagation backend, LightGCN, dim 64, 3 layers):

* BPR step (2048 triples) and ITEM step (256 users x 32 positives x 256 uniform negatives):
  median of ``--repeats`` calls of the real jitted ``train_step`` (through
  ``Placement.jit_step``) after compilation;
* full-ranking evaluation of a fixed sample of 2048 test users (``evaluate(users=...)``, after a
  warm-up call) and its extrapolation to every test user (x n_test_users / 2048);
* PPR scores of a fixed block of 64 users (``itemjax.graph.ppr.ppr_scores``, alpha 0.15, 50
  iterations, ``backend="scipy"`` as in the recorded results; benchmarks/ppr_time.py times the
  device backend), and its extrapolation to the whole table (x n_users / 64);
* the epoch estimates ``ceil(n_train / 2048) x BPR step``; and the peak RSS.

Writes ``benchmarks/out/scaling.json``, ``benchmarks/out/scaling.md`` (table + local log-log
slopes) and the log-log plot ``benchmarks/scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
SIZES = (1e5, 3e5, 1e6, 3e6, 1e7)
USERS_PER_EDGE, ITEMS_PER_EDGE = 1 / 27, 1 / 20
USER_EXPONENT, ITEM_EXPONENT = 0.5, 0.7
EVAL_USERS, PPR_USERS = 2048, 64


def power_law_ids(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """``size`` ids in ``[0, n)`` with ``P(rank r) ~ r^-exponent`` (inverse CDF of the continuous
    law on ``[1, n + 1)``), ranks mapped to shuffled ids."""
    u = rng.random(size)
    low, high = 1.0, float(n + 1) ** (1 - exponent)
    ranks = np.floor((low + u * (high - low)) ** (1 / (1 - exponent))).astype(np.int64) - 1
    return rng.permutation(n)[np.clip(ranks, 0, n - 1)]


def synthetic_graph(n_edges: int, seed: int = 0):
    """(train, test) scipy CSR ``[n_users, n_items]`` with about ``n_edges`` distinct interactions."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n_users, n_items = max(8, round(n_edges * USERS_PER_EDGE)), max(8, round(n_edges * ITEMS_PER_EDGE))
    keys = np.empty(0, np.int64)
    while keys.size < n_edges:  # draw until enough distinct pairs (duplicates of popular pairs)
        extra = int((n_edges - keys.size) * 1.2) + 16
        users = power_law_ids(rng, n_users, extra, USER_EXPONENT)
        items = power_law_ids(rng, n_items, extra, ITEM_EXPONENT)
        keys = np.unique(np.concatenate([keys, users * n_items + items]))
    keys = rng.permutation(keys)[:n_edges]
    test = rng.random(n_edges) < 0.2
    build = lambda m: sp.csr_matrix((np.ones(int(m.sum()), np.float32), (keys[m] // n_items, keys[m] % n_items)),
                                    shape=(n_users, n_items))
    return build(~test), build(test)


def median_step_seconds(step, state, batch, key, repeats: int) -> tuple[float, float]:
    import jax

    t0 = time.perf_counter()
    state, _ = step(state, batch, key)  # compile
    jax.block_until_ready(state)
    compile_seconds = time.perf_counter() - t0
    state, _ = step(state, batch, key)
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, _ = step(state, batch, key)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), compile_seconds


def run_size(n_edges: int, repeats: int) -> dict:
    import jax

    from itemjax.config import TrainConfig
    from itemjax.parallel.distributed import make_mesh
    from itemjax.train.placement import Placement
    from itemjax.graph.bipartite import build_graph
    from itemjax.graph.ppr import ppr_scores
    from itemjax.graph.propagation import to_device
    from itemjax.objective.sampling import make_train_data
    from itemjax.objective.objectives import Batch, steps_per_epoch
    from itemjax.train.step import create_state, make_model, train_step

    from itemjax.parallel.distributed import initialize

    initialize(False)  # as itemjax.train.run.fit does (host allocator tuning), before JAX starts
    record = {"edges": n_edges, "load_before": os.getloadavg()}
    t0 = time.perf_counter()
    train, test = synthetic_graph(n_edges)
    record["generate_seconds"] = time.perf_counter() - t0
    degrees = np.diff(train.indptr)
    record.update(n_users=train.shape[0], n_items=train.shape[1], n_train=int(train.nnz),
                  max_user_degree=int(degrees.max()), max_item_degree=int(np.bincount(train.indices).max()))
    t0 = time.perf_counter()
    graph = to_device(build_graph(train), "csr")
    data = make_train_data(train)
    record["graph_seconds"] = time.perf_counter() - t0
    placement = Placement(make_mesh())
    batch = placement.place_batch(Batch(graph=graph, data=data))
    key = placement.replicate(jax.random.PRNGKey(1))

    state = None
    for loss, batch_size in (("bpr", 2048), ("item", 256)):
        config = TrainConfig(loss=loss, backend="csr", dim=64, layers=3, batch_size=batch_size).resolve()
        model = make_model(config, *train.shape)
        state = placement.place_state(create_state(config, model, graph, data, jax.random.PRNGKey(0)))
        step = placement.jit_step(train_step, state)
        seconds, compile_seconds = median_step_seconds(step, state, batch, key, repeats)
        record[f"{loss}_step_seconds"], record[f"{loss}_compile_seconds"] = seconds, compile_seconds
        record[f"{loss}_epoch_seconds"] = seconds * steps_per_epoch(config, data)
        del step

    test_users = np.flatnonzero(np.diff(test.indptr) > 0)
    sample = np.random.default_rng(1).choice(test_users, min(EVAL_USERS, len(test_users)), replace=False)
    user_emb, item_emb = placement.embed(state, batch.graph)
    placement.evaluate(user_emb, item_emb, train, test, users=sample, ks=(20,), chunk_size=1024)  # compile
    t0 = time.perf_counter()
    placement.evaluate(user_emb, item_emb, train, test, users=sample, ks=(20,), chunk_size=1024)
    seconds = time.perf_counter() - t0
    record.update(eval_sample_users=len(sample), eval_sample_seconds=seconds,
                  n_test_users=len(test_users), eval_all_seconds_extrapolated=seconds * len(test_users) / len(sample))

    block = np.random.default_rng(2).choice(np.flatnonzero(degrees > 0), PPR_USERS, replace=False)
    t0 = time.perf_counter()
    ppr_scores(train, block, backend="scipy")
    seconds = time.perf_counter() - t0
    record.update(ppr_block_users=PPR_USERS, ppr_block_seconds=seconds,
                  ppr_all_seconds_extrapolated=seconds * train.shape[0] / PPR_USERS)
    record["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    record["load_after"] = os.getloadavg()
    return record


COLUMNS = [
    ("edges", "interactions", "{:.0e}"),
    ("n_train", "train edges", "{}"),
    ("n_users", "users", "{}"),
    ("n_items", "items", "{}"),
    ("max_user_degree", "max user deg.", "{}"),
    ("bpr_step_seconds", "BPR step s", "{:.3f}"),
    ("item_step_seconds", "ITEM step s", "{:.3f}"),
    ("bpr_epoch_seconds", "BPR epoch s", "{:.0f}"),
    ("eval_sample_seconds", "eval 2048 users s", "{:.2f}"),
    ("eval_all_seconds_extrapolated", "eval all users s (extrap.)", "{:.0f}"),
    ("ppr_block_seconds", "PPR 64 users s", "{:.2f}"),
    ("ppr_all_seconds_extrapolated", "PPR table s (extrap.)", "{:.0f}"),
    ("peak_rss_gib", "peak RSS GiB", "{:.2f}"),
]
SLOPES = ["bpr_step_seconds", "item_step_seconds", "eval_sample_seconds", "eval_all_seconds_extrapolated",
          "ppr_block_seconds", "peak_rss_gib"]


def markdown(records) -> str:
    ok = [r for r in records if "error" not in r]
    lines = ["| " + " | ".join(c[1] for c in COLUMNS) + " | load 1-min before/after |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    for r in ok:
        cells = [fmt.format(r[k]) for k, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + f" | {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |")
    for r in records:
        if "error" in r:
            lines.append(f"| {r['edges']:.0e} | failed: {r['error'][:100]} |")
    if len(ok) >= 2:
        lines += ["", "Local log-log slopes d log(cost) / d log(interactions) between consecutive sizes "
                  "(1 = linear):", "", "| quantity | " + " | ".join(
                      f"{a['edges']:.0e}->{b['edges']:.0e}" for a, b in zip(ok, ok[1:])) + " |",
                  "|" + "---|" * len(ok)]
        for key in SLOPES:
            slopes = [math.log(b[key] / a[key]) / math.log(b["n_train"] / a["n_train"]) for a, b in zip(ok, ok[1:])]
            lines.append(f"| {key} | " + " | ".join(f"{s:.2f}" for s in slopes) + " |")
    return "\n".join(lines)


def plot(records, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if "error" not in r]
    edges = np.array([r["n_train"] for r in ok], float)
    fig, (ax, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.8))
    series = [("bpr_step_seconds", "BPR step (2048 triples)", "o-"),
              ("item_step_seconds", "ITEM step (256 users)", "s-"),
              ("eval_sample_seconds", "evaluation, 2048 users", "^-"),
              ("eval_all_seconds_extrapolated", "evaluation, all users (extrap.)", "^--"),
              ("ppr_block_seconds", "PPR, 64 users", "d-"),
              ("bpr_epoch_seconds", "BPR epoch (extrap.)", "o--")]
    for key, label, style in series:
        ax.plot(edges, [r[key] for r in ok], style, label=label)
    reference = ok[0]["bpr_step_seconds"] * edges / edges[0]
    ax.plot(edges, reference, ":", color="gray", label="slope 1 (linear)")
    ax.plot(edges, ok[0]["eval_all_seconds_extrapolated"] * (edges / edges[0]) ** 2, ":", color="black",
            label="slope 2 (quadratic)")
    ax.set(xscale="log", yscale="log", xlabel="training interactions", ylabel="seconds",
           title="Cost vs graph size (2-core CPU, csr backend)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    ax_mem.plot(edges, [r["peak_rss_gib"] for r in ok], "o-")
    ax_mem.set(xscale="log", yscale="log", xlabel="training interactions", ylabel="GiB", title="peak RSS")
    ax_mem.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(f"{s:.0e}" for s in SIZES), help="interactions per graph")
    p.add_argument("--max-edges", type=float, default=1e7, help="skip sizes above this")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per loss")
    p.add_argument("--budget", type=float, default=840, help="seconds; no new size starts after this")
    p.add_argument("--out", default=str(HERE / "out" / "scaling.json"))
    p.add_argument("--plot", default=str(HERE / "scaling.png"))
    p.add_argument("--size", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.size:  # child process: one size, JSON on the last stdout line
        print(json.dumps(run_size(int(args.size), args.repeats)))
        return

    start = time.perf_counter()
    records = []
    for size in sorted(float(s) for s in args.sizes.split(",")):
        if size > args.max_edges:
            break
        if time.perf_counter() - start > args.budget:
            print(f"time budget spent: stopping before {size:.0e}", file=sys.stderr)
            break
        proc = subprocess.run([sys.executable, __file__, "--size", str(size), "--repeats", str(args.repeats)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            record = {"edges": size, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            record = json.loads(proc.stdout.strip().splitlines()[-1])
        records.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)
    text = markdown(records)
    print(text)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "total_seconds": time.perf_counter() - start,
        "records": records,
    }, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    if sum("error" not in r for r in records) >= 2:
        plot(records, pathlib.Path(args.plot))


if __name__ == "__main__":
    main()
