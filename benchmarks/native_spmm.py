#!/usr/bin/env python
"""The native CSR kernel (``--backend native``) against XLA's (``--backend csr``) on gowalla.

    python benchmarks/native_spmm.py                              # gowalla, 1 and all threads
    python benchmarks/native_spmm.py --threads 1,2 --repeats 30 --ppr-users 256
    python benchmarks/native_spmm.py --dataset synthetic --repeats 3   # a small random graph (smoke run)

Times, on the training graph of the LightGCN split ``<data-dir>/gowalla/train.txt`` (29,858 users,
40,981 items, 1,620,256 directed edges; ``--data-dir`` defaults to ``$ITEMJAX_DATA``, else
``../shared/data`` beside the checkout), with ``x`` ``[n_nodes, --dim]`` float32:

* **product**: one ``A_hat @ x`` (:func:`itemjax.graph.propagation.propagate`, jitted);
* **3-layer fwd+bwd**: ``value_and_grad`` of ``sum(c * mean_k A_hat^k x)``, ``k = 0..--layers``
  (as benchmarks/propagation.py; the backward pass is the same product ``--layers`` times more);
* **GAT attention fwd+bwd**: ``value_and_grad`` (in ``x`` and both score vectors) of
  ``sum(c * propagate_attention(A, x, src, dst))``, one head of one GAT layer (the native backend: the
  fused forward pass and the two backward passes of :func:`itemjax.native.gat_forward` /
  :func:`~itemjax.native.gat_backward`; csr: four XLA products and the per-edge scalar passes);
* **PPR block** (``--ppr-users N``, default off): ``ppr_scores`` of users ``0..N-1`` with
  ``--ppr-backend device`` (XLA's products) and ``native``.

for the csr backend and for the native one at each ``--threads`` count (``ITEMJAX_NATIVE_THREADS``,
read by the kernel at each call; ``0`` = automatic, every CPU the process may use). Each row is
jitted once, warmed up, then timed ``--repeats`` times round-robin with ``block_until_ready``
(load from other processes hits every row alike); medians are reported with the speed-up over csr
and the largest difference from csr's result (over the largest magnitude of csr's). Prints a markdown table and the load average before
and after, and writes ``benchmarks/out/native_spmm.json``. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from itemjax import native
from itemjax.errors import ConfigError, ItemjaxError
from itemjax.graph.bipartite import build_graph
from itemjax.graph.ppr import ppr_scores
from itemjax.graph.propagation import propagate, propagate_attention, to_device

from propagation import default_data_dir, load_lightgcn_train

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT_PATH = REPO / "benchmarks" / "out" / "native_spmm.json"


def synthetic_train(n_users=3000, n_items=4000, n_pairs=60_000, seed=0) -> scipy.sparse.csr_matrix:
    """A random interaction matrix with geometric item popularity (for a quick check of the script)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, size=n_pairs)
    items = np.minimum(rng.geometric(2.0 / n_items, size=n_pairs) - 1, n_items - 1)
    return scipy.sparse.csr_matrix((np.ones(n_pairs, np.float32), (users, items)), shape=(n_users, n_items))


def layer_mean(graph, x, coefficients, layers: int):
    stack = [x]
    for _ in range(layers):
        stack.append(propagate(graph, stack[-1]))
    return jnp.sum(coefficients * jnp.mean(jnp.stack(stack), axis=0))


def attention_objective(graph, x, src, dst, coefficients):
    return jnp.sum(coefficients * propagate_attention(graph, x, src, dst))


class ThreadsEnv:
    """Sets ``ITEMJAX_NATIVE_THREADS`` for a call (``None``: leaves it as it is)."""

    def __init__(self, threads):
        self.threads = threads

    def __enter__(self):
        self.saved = os.environ.get("ITEMJAX_NATIVE_THREADS")
        if self.threads is not None:
            os.environ["ITEMJAX_NATIVE_THREADS"] = str(self.threads)
        return self

    def __exit__(self, *exc):
        if self.threads is not None:
            if self.saved is None:
                os.environ.pop("ITEMJAX_NATIVE_THREADS", None)
            else:
                os.environ["ITEMJAX_NATIVE_THREADS"] = self.saved


def timed(fn, threads):
    """A callable running ``fn()`` under ``threads`` and waiting for its result; returns the result."""

    def run():
        with ThreadsEnv(threads):
            return jax.block_until_ready(fn())

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("gowalla", "synthetic"), default="gowalla")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--threads", default="1,0", help="comma-separated native thread counts (0: automatic)")
    parser.add_argument("--ppr-users", type=int, default=0, help="also time ppr_scores of this many users (0: skip)")
    parser.add_argument("--out", type=pathlib.Path, default=OUT_PATH)
    args = parser.parse_args(argv)
    try:
        if args.repeats < 1 or args.dim < 1 or args.layers < 1 or args.ppr_users < 0:
            raise ConfigError("--repeats, --dim and --layers must be >= 1 and --ppr-users >= 0.")
        try:
            thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
        except ValueError:
            raise ConfigError(f"--threads {args.threads!r}: give comma-separated integers, e.g. 1,2,0") from None
        if not thread_counts or min(thread_counts) < 0:
            raise ConfigError("--threads needs at least one count >= 0 (0: automatic)")
        if not native.available():
            raise ConfigError(f"the native kernel is unavailable ({native.unavailable_reason()}); to use it, "
                              f"{native.fix()}")
        if args.dataset == "gowalla":
            train = load_lightgcn_train((args.data_dir or default_data_dir()) / "gowalla" / "train.txt")
        else:
            train = synthetic_train()
    except ItemjaxError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    host = build_graph(train)
    print(f"{args.dataset}: {host.n_users} users, {host.n_items} items, {host.n_edges} directed edges; "
          f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} CPUs "
          f"(available to this process: {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}); "
          f"dim {args.dim}, {args.layers} layers, median of {args.repeats}")
    key_x, key_c = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (host.n_nodes, args.dim), jnp.float32)
    coefficients = jax.random.normal(key_c, (host.n_nodes, args.dim), jnp.float32)
    graphs = {"csr": to_device(host, "csr"), "native": to_device(host, "native")}
    product = jax.jit(propagate)
    fwd_bwd = jax.jit(jax.value_and_grad(layer_mean, argnums=1), static_argnums=3)
    key_s, key_d = jax.random.split(key_c)
    src, dst = jax.random.normal(key_s, (host.n_nodes,)), jax.random.normal(key_d, (host.n_nodes,))
    attention = jax.jit(jax.value_and_grad(attention_objective, argnums=(1, 2, 3)))

    variants = [("csr", None)] + [("native", t) for t in thread_counts]
    label = {("csr", None): "csr (XLA)"} | {("native", t): f"native, {t or 'auto'} thread{'s' if t != 1 else ''}"
                                       for t in thread_counts}
    rows = {}
    for backend, threads in variants:
        graph = graphs[backend]
        rows[("product", backend, threads)] = timed(lambda g=graph: product(g, x), threads)
        rows[("3-layer fwd+bwd", backend, threads)] = timed(lambda g=graph: fwd_bwd(g, x, coefficients, args.layers),
                                                            threads)
        rows[("GAT attention fwd+bwd", backend, threads)] = timed(
            lambda g=graph: attention(g, x, src, dst, coefficients), threads)
    if args.ppr_users:
        users = np.arange(min(args.ppr_users, host.n_users))
        for backend, threads in variants:
            ppr_backend = "device" if backend == "csr" else "native"
            rows[(f"PPR {len(users)} users", backend, threads)] = timed(
                lambda b=ppr_backend: ppr_scores(train, users, backend=b), threads)

    load_before = os.getloadavg()
    results = {key: run() for key, run in rows.items()}  # compile + first warm-up
    for run in rows.values():
        run()
    seconds = {key: [] for key in rows}
    for _ in range(args.repeats):
        for key, run in rows.items():
            start = time.perf_counter()
            run()
            seconds[key].append(time.perf_counter() - start)
    load_after = os.getloadavg()

    def flat(value):
        leaves = jax.tree_util.tree_leaves(value)
        return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves])

    table = []
    print("\n| task | backend | median ms | min ms | speed-up over csr | max abs diff / max abs (vs csr) |")
    print("|---|---|---|---|---|---|")
    tasks = list(dict.fromkeys(task for task, _, _ in seconds))
    for task in tasks:
        reference = flat(results[(task, "csr", None)])
        for backend, threads in variants:
            times = seconds[(task, backend, threads)]
            median = statistics.median(times)
            diff = float(np.max(np.abs(flat(results[(task, backend, threads)]) - reference))
                         / max(float(np.max(np.abs(reference))), 1e-30))
            speedup = statistics.median(seconds[(task, "csr", None)]) / median
            table.append({"task": task, "backend": backend, "threads": threads, "median_s": median,
                          "min_s": min(times), "speedup_vs_csr": speedup, "relative_diff_vs_csr": diff,
                          "seconds": times})
            print(f"| {task} | {label[(backend, threads)]} | {median * 1e3:.1f} | {min(times) * 1e3:.1f} | "
                  f"{speedup:.2f}x | {diff:.1e} |")
    print(f"\nload average (1, 5, 15 min): before {', '.join(f'{v:.2f}' for v in load_before)}; "
          f"after {', '.join(f'{v:.2f}' for v in load_after)}")

    record = {
        "benchmark": "native_spmm", "dataset": args.dataset, "n_users": host.n_users, "n_items": host.n_items,
        "n_edges": host.n_edges, "dim": args.dim, "layers": args.layers, "repeats": args.repeats,
        "jax": jax.__version__, "platform": jax.default_backend(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "native": native.status(),
        "load_average_before_after": [list(load_before), list(load_after)], "rows": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from itemjax.parallel.host_memory import tune_host_allocator

    tune_host_allocator()  # as every training run does (itemjax.parallel.distributed.initialize), before JAX computes
    sys.exit(main())
