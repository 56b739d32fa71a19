"""Forward+backward time of a 3-layer LightGCN-style propagation on Gowalla, per backend.

Reads the LightGCN split ``<data-dir>/gowalla/train.txt`` (``user item item ...`` per
line), builds the graph (29,858 users, 40,981 items, 1,620,256 directed edges) and times
``jax.value_and_grad`` of ``sum(c * mean_k A_hat^k x)``, ``k = 0..3``, ``x`` of
``[n_nodes, 64]`` float32, jitted with the graph as an argument. The median over
``--repeats`` runs after two warm-up calls is reported (candidates timed
round-robin, so load from other processes hits them alike), each run ending in
``block_until_ready``.

Rows: the two itemjax backends (``segment``, ``csr``) and the alternatives measured to
choose them (not part of the library):

* ``bcsr_default_vjp``: the same BCSR matmul with JAX's own gradient (transposes via BCOO);
* ``csr_class_symmetric_vjp``: ``jax.experimental.sparse.CSR`` (the older CSR class)
  with the same symmetric custom VJP;
* ``bcoo``: ``jax.experimental.sparse.BCOO`` matmul with JAX's gradient;
* ``segment_symmetric_vjp``: the segment backend with a custom VJP that reuses the
  forward (so the backward scatter is into sorted receivers);
* ``scipy_callback``: scipy's CSR matmul through ``jax.pure_callback`` with the same
  symmetric custom VJP (single-threaded host code).

Usage::

    python benchmarks/propagation.py [--data-dir DIR] [--repeats 10] [--dim 64] [--layers 3]

``--data-dir`` defaults to ``$ITEMJAX_DATA``, else ``../shared/data`` beside the checkout.
Prints a table and writes ``benchmarks/out/propagation.json``.
"""

from __future__ import annotations

import argparse
import functools
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
from jax.experimental import sparse

from itemjax.errors import ConfigError, DataError, ItemjaxError
from itemjax.graph.bipartite import build_graph
from itemjax.graph.propagation import BACKENDS, DeviceGraph, propagate, propagate_weighted, to_device

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT_PATH = REPO / "benchmarks" / "out" / "propagation.json"


def default_data_dir() -> pathlib.Path:
    if os.environ.get("ITEMJAX_DATA"):
        return pathlib.Path(os.environ["ITEMJAX_DATA"])
    return REPO.parent / "shared" / "data"


def load_lightgcn_train(path: pathlib.Path) -> scipy.sparse.csr_matrix:
    """``[n_users, n_items]`` 0/1 matrix from a LightGCN ``train.txt`` (``user item item ...``)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; pass --data-dir (or set ITEMJAX_DATA) to the folder holding gowalla/train.txt.")
    users, items = [], []
    with path.open() as lines:
        for line_number, line in enumerate(lines, start=1):
            try:
                ids = np.array(line.split(), dtype=np.int64)
            except ValueError:
                raise DataError(f"{path}:{line_number}: expected integer ids 'user item item ...'; fix or re-download the file.") from None
            if ids.size > 1:
                users.append(np.full(ids.size - 1, ids[0]))
                items.append(ids[1:])
    if not users:
        raise DataError(f"{path}: no interactions found; check that it is a LightGCN train.txt.")
    users, items = np.concatenate(users), np.concatenate(items)
    shape = (int(users.max()) + 1, int(items.max()) + 1)
    return scipy.sparse.csr_matrix((np.ones(users.size, np.float32), (users, items)), shape=shape)


# --- alternatives measured against the library backends -------------------------------


def _bcsr_default_vjp(graph: DeviceGraph, x):
    matrix = sparse.BCSR((graph.data, graph.indices, graph.indptr), shape=(graph.n_nodes,) * 2)
    return matrix @ x


def _bcoo(graph: DeviceGraph, x):
    n_edges = graph.indices.shape[0]
    coordinates = jnp.stack([graph.receivers[:n_edges], graph.senders[:n_edges]], axis=1)
    matrix = sparse.BCOO((graph.data, coordinates), shape=(graph.n_nodes,) * 2, indices_sorted=True)
    return matrix @ x


def _csr_class_matmul(graph: DeviceGraph, x):
    matrix = sparse.CSR((graph.data, graph.indices, graph.indptr), shape=(graph.n_nodes,) * 2)
    return matrix @ x


@jax.custom_vjp
def _csr_class_symmetric(graph: DeviceGraph, x):
    return _csr_class_matmul(graph, x)


_csr_class_symmetric.defvjp(
    lambda graph, x: (_csr_class_matmul(graph, x), graph),
    lambda graph, y_bar: (None, _csr_class_matmul(graph, y_bar)),
)


@jax.custom_vjp
def _segment_symmetric(graph: DeviceGraph, x):
    return propagate_weighted(graph, x, graph.weights)


_segment_symmetric.defvjp(
    lambda graph, x: (propagate_weighted(graph, x, graph.weights), graph),
    lambda graph, y_bar: (None, propagate_weighted(graph, y_bar, graph.weights)),
)


def _make_scipy_callback(host_matrix: scipy.sparse.csr_matrix):
    def matmul(x):
        return jax.pure_callback(
            lambda v: np.asarray(host_matrix @ np.asarray(v), dtype=np.float32),
            jax.ShapeDtypeStruct(x.shape, jnp.float32),
            x,
        )

    @jax.custom_vjp
    def symmetric(x):
        return matmul(x)

    symmetric.defvjp(lambda x: (matmul(x), None), lambda _, y_bar: (matmul(y_bar),))
    return lambda graph, x: symmetric(x)


# --------------------------------------------------------------------------------------


def layer_mean_objective(propagate_fn, graph, x, coefficients, n_layers):
    """``sum(c * mean_k A_hat^k x)`` over ``k = 0..n_layers`` (LightGCN's layer mean)."""
    layers = [x]
    for _ in range(n_layers):
        layers.append(propagate_fn(graph, layers[-1]))
    return jnp.sum(coefficients * jnp.mean(jnp.stack(layers), axis=0))


def compile_candidate(propagate_fn, graph, x, coefficients, n_layers):
    """Jits value_and_grad w.r.t. ``x``; returns (step, seconds of the first call, value, grad)."""
    step = jax.jit(
        jax.value_and_grad(functools.partial(layer_mean_objective, propagate_fn, n_layers=n_layers), argnums=1)
    )
    start = time.perf_counter()
    value, grad = jax.block_until_ready(step(graph, x, coefficients))
    first_call_seconds = time.perf_counter() - start
    jax.block_until_ready(step(graph, x, coefficients))  # second warm-up call
    return step, first_call_seconds, float(value), np.asarray(grad)


def time_call(step, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(step(*args))
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=pathlib.Path, default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="subset of rows to time")
    parser.add_argument("--out", type=pathlib.Path, default=OUT_PATH)
    args = parser.parse_args(argv)
    try:
        if args.repeats < 1 or args.dim < 1 or args.layers < 1:
            raise ConfigError("--repeats, --dim and --layers must be >= 1.")
        data_dir = args.data_dir or default_data_dir()
        start = time.perf_counter()
        train = load_lightgcn_train(data_dir / "gowalla" / "train.txt")
        load_seconds = time.perf_counter() - start
    except ItemjaxError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    host_graph = build_graph(train)
    build_seconds = time.perf_counter() - start
    print(
        f"gowalla: {host_graph.n_users} users, {host_graph.n_items} items, {host_graph.n_edges} directed edges "
        f"(padded to {host_graph.n_padded_edges}); load {load_seconds:.2f} s, build_graph {build_seconds:.2f} s"
    )
    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{os.cpu_count()} CPUs; dim {args.dim}, {args.layers} layers, median of {args.repeats}")

    key_x, key_c = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (host_graph.n_nodes, args.dim), jnp.float32)
    coefficients = jax.random.normal(key_c, (host_graph.n_nodes, args.dim), jnp.float32)

    candidates = {name: (name, propagate) for name in BACKENDS}
    candidates.update(
        bcsr_default_vjp=("csr", _bcsr_default_vjp),
        csr_class_symmetric_vjp=("csr", _csr_class_symmetric),
        bcoo=("segment", _bcoo),
        segment_symmetric_vjp=("segment", _segment_symmetric),
        scipy_callback=("csr", _make_scipy_callback(host_graph.to_csr())),
    )
    names = args.only or list(candidates)
    unknown = [name for name in names if name not in candidates]
    if unknown:
        print(f"error: unknown row {unknown[0]!r}; choose from {', '.join(candidates)}.", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    compiled, rows, reference_grad = {}, {}, None
    for name in names:
        backend, fn = candidates[name]
        graph = to_device(host_graph, backend)
        step, first_call_seconds, value, grad = compile_candidate(fn, graph, x, coefficients, args.layers)
        if reference_grad is None:
            reference_grad = grad
        compiled[name] = (step, graph)
        rows[name] = {
            "in_library": name in BACKENDS,
            "first_call_s": first_call_seconds,
            "value": value,
            "max_abs_grad_diff_vs_first": float(np.max(np.abs(grad - reference_grad))),
            "seconds": [],
        }
    # Round-robin over candidates so that load from other processes hits all of them alike.
    for _ in range(args.repeats):
        for name in names:
            step, graph = compiled[name]
            rows[name]["seconds"].append(time_call(step, graph, x, coefficients))
    load_after = os.getloadavg()

    print(f"{'candidate':24s} {'fwd+bwd median':>15s} {'min':>9s} {'max':>9s} {'1st call':>9s}  max|grad - 1st row grad|")
    for name, row in rows.items():
        row.update(median_s=statistics.median(row["seconds"]), min_s=min(row["seconds"]), max_s=max(row["seconds"]))
        print(
            f"{name:24s} {row['median_s'] * 1e3:12.1f} ms {row['min_s'] * 1e3:6.1f} ms {row['max_s'] * 1e3:6.1f} ms "
            f"{row['first_call_s']:7.2f} s  {row['max_abs_grad_diff_vs_first']:.1e}"
        )
    fastest = min(rows, key=lambda name: rows[name]["median_s"])
    print(f"fastest: {fastest}; load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")

    result = {
        "benchmark": "propagation",
        "task": f"value_and_grad of sum(c * mean_k A_hat^k x), k=0..{args.layers}, x [n_nodes, {args.dim}] float32",
        "dataset": "gowalla (LightGCN train.txt)",
        "n_users": host_graph.n_users,
        "n_items": host_graph.n_items,
        "n_edges": host_graph.n_edges,
        "n_padded_edges": host_graph.n_padded_edges,
        "repeats": args.repeats,
        "jax": jax.__version__,
        "platform": jax.default_backend(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_s": load_seconds,
        "build_graph_s": build_seconds,
        "load_average_1min_before_after": [load_before[0], load_after[0]],
        "fastest": fastest,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from itemjax.parallel.host_memory import tune_host_allocator

    tune_host_allocator()  # as every training run does (itemjax.parallel.distributed.initialize), before JAX computes
    sys.exit(main())
