#!/usr/bin/env python
"""Where the LightGCN step's time goes, against its memory-traffic floor, and whether node reordering helps.

    python benchmarks/step_floor.py                     # gowalla and ml-100k
    python benchmarks/step_floor.py --datasets gowalla --repeats 15

For each dataset (the training split of itemjax's loader, LightGCN, dim ``d`` = 64, 3 layers), on ``--backend``
(default ``auto``: the backend training uses here, ``native`` on CPU where built; ``csr`` was the only one
before 2026-12-07):

* **bandwidth**: the machine's streaming memory bandwidth as XLA sees it, from a jitted
  ``sum`` over a 1 GiB float32 array (read only) and a jitted ``x + 1`` (read + write).
* **floor**: the bytes one sparse product ``y = A_hat x`` must move at least, with ``n`` nodes,
  ``nnz`` stored entries, 4-byte values and indices::

      bytes_product = 4 (n + 1) + 8 nnz + 8 n d      (indptr, indices + data, read x once, write y)

  (``x`` read once assumes every neighbour row gathered is a cache hit after its first use). The
  **gather-bound** counts every neighbour row as read from memory instead (``4 nnz d`` bytes for
  ``x``): the bound of a kernel without reuse beyond the cache lines of one row.
  The step does 3 products forward and 3 backward (the VJP of a symmetric product is the same
  product) and one Adam update over the ``n x d`` table (read parameters, gradient, both moments;
  write parameters and both moments: ``28 n d`` bytes). Floor seconds = bytes / read+write bandwidth.
* **measured**: one product, the 3-layer propagation forward + backward (``value_and_grad`` of the
  layer mean), the Adam update alone, and the whole ``train_step`` of BPR and ITEM through
  ``Placement.jit_step`` (as ``benchmarks/step_time.py``, at each loss's default batch).
* **reordering**: the same product and 3-layer propagation with the nodes renumbered once on the
  host, by descending degree and by reverse Cuthill-McKee (``scipy.sparse.csgraph``), so that
  neighbouring rows of the CSR matrix gather nearby rows of ``x``. The values are the same up to
  the order of float additions (checked here: max relative difference printed).

Prints a markdown table and writes ``benchmarks/out/step_floor.json``. Timings are medians over
``--repeats`` after warm-up; run it alone on the machine (and quote the load average printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse
from scipy.sparse.csgraph import reverse_cuthill_mckee

from itemjax.config import TrainConfig
from itemjax.graph.propagation import propagate
from itemjax.train.run import prepare

from step_time import host_graph, median_seconds, prep_graph, step_runner

DIM, LAYERS = 64, 3
GIB = 1 << 30


def bandwidth(repeats: int) -> dict:
    """``{"read_gbs", "copy_gbs"}``: GB/s (1e9 bytes) of a jitted sum over 1 GiB (read) and of a
    jitted ``x + 1`` whose output reuses its input's buffer (donated, so no page faults: read + write)."""
    x = jnp.ones((GIB // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    plus_one = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    current = [jnp.ones((GIB // 4,), jnp.float32)]

    def copy():
        current[0] = plus_one(current[0])
        current[0].block_until_ready()

    seconds = median_seconds({"read": lambda: total(x).block_until_ready(), "copy": copy}, repeats, warmup=2)
    return {"read_gbs": GIB / seconds["read"] / 1e9, "copy_gbs": 2 * GIB / seconds["copy"] / 1e9}


def permuted(graph, order: np.ndarray):
    """``graph`` (a host :class:`~itemjax.graph.bipartite.Graph`) with node ``order[k]`` renumbered ``k``:
    ``(indptr, indices, data)`` of ``P A_hat P^T``."""
    matrix = scipy.sparse.csr_matrix((graph.data, graph.indices, graph.indptr), shape=(graph.n_nodes,) * 2)
    matrix = matrix[order][:, order].tocsr()
    matrix.sort_indices()
    return matrix.indptr.astype(np.int32), matrix.indices.astype(np.int32), matrix.data.astype(np.float32)


def orders(graph) -> dict:
    """Node orders to try: the loader's (users then items), descending degree, reverse Cuthill-McKee."""
    degree = np.diff(graph.indptr)
    matrix = scipy.sparse.csr_matrix((graph.data, graph.indices, graph.indptr), shape=(graph.n_nodes,) * 2)
    return {"identity": np.arange(graph.n_nodes), "degree": np.argsort(-degree, kind="stable"),
            "rcm": np.asarray(reverse_cuthill_mckee(matrix, symmetric_mode=True))}


def propagation_runs(device_graph, x):
    """``(one_product, three_layers)``: callables timing ``A_hat x`` and the 3-layer forward + backward."""
    product = jax.jit(propagate)

    def layer_mean(x, graph):
        layers, h = [x], x
        for _ in range(LAYERS):
            h = propagate(graph, h)
            layers.append(h)
        return jnp.sum(jnp.mean(jnp.stack(layers), axis=0) * 1e-3)

    three = jax.jit(jax.value_and_grad(layer_mean))
    return (lambda: product(device_graph, x).block_until_ready(),
            lambda: jax.block_until_ready(three(x, device_graph)))


def adam_run(n_nodes: int):
    """A callable applying one optax Adam update to an ``[n_nodes, d]`` table (the step's optimizer)."""
    optimizer = optax.adam(1e-3)
    params = jnp.zeros((n_nodes, DIM), jnp.float32)
    grads = jnp.full((n_nodes, DIM), 1e-3, jnp.float32)
    state = optimizer.init(params)

    @jax.jit
    def update(params, state, grads):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return lambda: jax.block_until_ready(update(params, state, grads))


def measure(dataset: str, repeats: int, gbs: float, backend: str = "auto") -> dict:
    config = TrainConfig(dataset=dataset, model="lightgcn", backend=backend, dim=DIM, layers=LAYERS, valid_frac=0.0,
                         progress=False)
    prep = prepare(config.resolve())
    graph = host_graph(prep)
    device_graph = prep_graph(prep, backend)
    n, nnz = int(graph.n_nodes), int(len(graph.indices))
    x = jax.random.normal(jax.random.PRNGKey(0), (n, DIM), jnp.float32) * 0.1

    runs = {}
    runs["product"], runs["propagation_fwd_bwd"] = propagation_runs(device_graph, x)
    runs["adam"] = adam_run(n)
    for loss in ("bpr", "item"):
        runs[f"step_{loss}"] = step_runner(dataclasses.replace(config, loss=loss).resolve(), prep)[0]
    reference = np.asarray(jax.jit(propagate)(device_graph, x))
    differences = {}
    for name, order in orders(graph).items():
        if name == "identity":
            continue
        indptr, indices, data = permuted(graph, order)
        reordered = dataclasses.replace(device_graph, indptr=jnp.asarray(indptr), indices=jnp.asarray(indices),
                                        data=jnp.asarray(data))
        x_order = x[jnp.asarray(order)]
        runs[f"product_{name}"], runs[f"propagation_fwd_bwd_{name}"] = propagation_runs(reordered, x_order)
        y = np.empty_like(reference)
        y[order] = np.asarray(jax.jit(propagate)(reordered, x_order))
        differences[name] = float(np.max(np.abs(y - reference)) / np.max(np.abs(reference)))
    seconds = median_seconds(runs, repeats)

    bytes_per_second = gbs * 1e9
    product_bytes = 4 * (n + 1) + 8 * nnz + 8 * n * DIM
    gather_bytes = product_bytes + 4 * nnz * DIM - 4 * n * DIM  # every neighbour row read from memory
    adam_bytes = 28 * n * DIM
    floor = {"product": product_bytes / bytes_per_second, "adam": adam_bytes / bytes_per_second}
    floor["propagation_fwd_bwd"] = 6 * floor["product"]
    floor["step"] = floor["propagation_fwd_bwd"] + floor["adam"]
    gather = {"product": gather_bytes / bytes_per_second, "adam": adam_bytes / bytes_per_second}
    gather["propagation_fwd_bwd"] = 6 * gather["product"]
    gather["step"] = gather["propagation_fwd_bwd"] + gather["adam"]
    return {"dataset": dataset, "backend": device_graph.backend, "n_nodes": n, "nnz": nnz, "dim": DIM, "layers": LAYERS,
            "product_bytes": product_bytes, "gather_bound_bytes": gather_bytes, "adam_bytes": adam_bytes,
            "floor_seconds": floor, "gather_bound_seconds": gather, "median_seconds": seconds,
            "reorder_max_rel_difference": differences}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="gowalla,ml-100k")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--backend", default="auto", help="propagation backend (auto: the one training uses here)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "out" / "step_floor.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    bw = bandwidth(args.repeats)
    gbs = bw["copy_gbs"]
    rows = [measure(d, args.repeats, gbs, args.backend) for d in args.datasets.split(",")]
    result = {"bandwidth": bw, "rows": rows, "load_before": load_before, "load_after": os.getloadavg(),
              "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "jax": jax.__version__}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"bandwidth: read {bw['read_gbs']:.1f} GB/s, read+write {gbs:.1f} GB/s (floors use read+write)")
    print("| dataset | part | measured ms | floor ms | gather-bound ms | measured / floor | measured / gather-bound |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        s, f, g = row["median_seconds"], row["floor_seconds"], row["gather_bound_seconds"]
        for part, floor_key in (("product", "product"), ("propagation_fwd_bwd", "propagation_fwd_bwd"),
                                ("adam", "adam"), ("step_bpr", "step"), ("step_item", "step"),
                                ("product_degree", "product"), ("propagation_fwd_bwd_degree", "propagation_fwd_bwd"),
                                ("product_rcm", "product"), ("propagation_fwd_bwd_rcm", "propagation_fwd_bwd")):
            print(f"| {row['dataset']} ({row['backend']}) | {part} | {1e3 * s[part]:.1f} | {1e3 * f[floor_key]:.1f} | "
                  f"{1e3 * g[floor_key]:.1f} | {s[part] / f[floor_key]:.1f} | {s[part] / g[floor_key]:.1f} |")
        print(f"| {row['dataset']} ({row['backend']}) | reordered vs original, max relative difference | "
              f"{row['reorder_max_rel_difference']} | | | | |")
    print(f"load average before {load_before}, after {result['load_after']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
