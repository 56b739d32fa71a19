#!/usr/bin/env python
"""Training steps with another build of the native kernel against this checkout's, in one process.

    git worktree add /tmp/before <commit> && (cd /tmp/before && python setup.py build_ext --inplace)
    python benchmarks/native_ab.py --before /tmp/before/itemjax/native/_csr_spmm.cpython-311-x86_64-linux-gnu.so
    python benchmarks/native_ab.py --before OLD.so --models gat --methods bpr --rounds 8
    python benchmarks/native_ab.py --before OLD.so --passes     # GAT's attention passes alone

For kernel work, where two processes' step times differ by more than the change (on a 2-core machine, by a
third or more between runs of the same code). The other build (``--before``, a ``_csr_spmm`` library of the
same ABI version) is loaded beside this checkout's and its FFI handlers are registered under other target
names (``before_<name>``); each step (``benchmarks/step_time.py``'s :func:`step_runner`, native backend,
each loss at its default batch size) is traced once with :data:`itemjax.native.TARGETS` and
:data:`~itemjax.native.GAT_TARGETS` pointing at those names and once at this checkout's, then both are
timed round robin (:func:`step_time.median_seconds`) for ``--rounds`` rounds. ``--passes`` times GAT's
native attention passes alone instead (after checking that both builds give the same bits). Prints each
round's medians and the ratio after / before, and writes ``--out`` as JSON. Run it alone.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from itemjax.parallel.host_memory import tune_host_allocator  # noqa: E402


def register_before(path: pathlib.Path) -> dict:
    """Load the library at ``path`` and register its handlers as ``before_<target>``; returns
    ``{table name: {key: (target name, symbol)}}`` for :data:`itemjax.native.TARGETS` and ``GAT_TARGETS``.
    ValueError when ``path`` is not a loadable kernel library or has another ABI version."""
    import jax

    from itemjax import native

    try:
        library = ctypes.CDLL(str(path))
        version_of = library.ItemjaxNativeAbiVersion
    except (OSError, AttributeError) as error:
        raise ValueError(f"--before {path}: not a loadable itemjax _csr_spmm library ({error}); build the other "
                         "checkout with python setup.py build_ext --inplace and pass its itemjax/native/_csr_spmm*.so")
    version_of.restype = ctypes.c_int
    version = version_of()
    if version != native.ABI_VERSION:
        raise ValueError(f"--before {path} has ABI version {version}, this checkout {native.ABI_VERSION}: the handlers' "
                         "signatures differ, so the two builds cannot be called alike; compare builds of one ABI")
    tables = {}
    for table_name in ("TARGETS", "GAT_TARGETS"):
        table = {}
        for key, (name, symbol) in getattr(native, table_name).items():
            jax.ffi.register_ffi_target(f"before_{name}", jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
            table[key] = (f"before_{name}", symbol)
        tables[table_name] = table
    return tables


def time_passes(prep, before: dict, after: dict, point_at, args) -> list:
    """Round-robin medians of :func:`itemjax.native.gat_forward` and :func:`~itemjax.native.gat_backward` on
    ``prep``'s training graph (random ``x [n_nodes, 64]``, scores and cotangent), with each build's targets;
    checks first that both builds give the same bits."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from itemjax import native
    from itemjax.graph.bipartite import build_graph
    from itemjax.graph.propagation import to_device
    from step_time import median_seconds

    graph = to_device(build_graph(prep.split.train), "csr")
    rng = np.random.default_rng(0)
    x, y_bar = (jnp.asarray(rng.normal(size=(graph.n_nodes, 64)), jnp.float32) for _ in range(2))
    src, dst = (jnp.asarray(rng.normal(size=graph.n_nodes), jnp.float32) for _ in range(2))
    runs, results = {}, {}
    for label, tables in (("before", before), ("after", after)):
        point_at(tables)
        forward = jax.jit(lambda x, s, d: native.gat_forward(graph.indptr, graph.indices, x, s, d, negative_slope=0.2))
        backward = jax.jit(lambda x, s, d, y, m, den, g: native.gat_backward(graph.indptr, graph.indices, x, s, d, y,
                                                                              m, den, g, negative_slope=0.2))
        out = jax.block_until_ready(forward(x, src, dst))
        results[label] = (*out, *jax.block_until_ready(backward(x, src, dst, *out, y_bar)))
        runs[f"forward {label}"] = lambda f=forward: jax.block_until_ready(f(x, src, dst))
        runs[f"backward {label}"] = lambda b=backward, out=out: jax.block_until_ready(b(x, src, dst, *out, y_bar))
    point_at(after)
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(results["before"], results["after"]))
    print(f"GAT passes on {args.dataset}: the two builds' results are {'bitwise equal' if same else 'DIFFERENT'}")
    rows = []
    for r in range(args.rounds):
        load = os.getloadavg()[0]
        ms = {k: v * 1e3 for k, v in median_seconds(runs, 20, warmup=1).items()}
        rows.append(dict(task="gat passes", round=r, load1=load, ms=ms, bitwise_equal=same))
        print(f"round {r} (load {load:.2f}): " + " | ".join(
            f"{p} before {ms[f'{p} before']:.1f} ms, after {ms[f'{p} after']:.1f} ms "
            f"({ms[f'{p} after'] / ms[f'{p} before']:.2f})" for p in ("forward", "backward")), flush=True)
    for p in ("forward", "backward"):
        ratio = statistics.median(row["ms"][f"{p} after"] / row["ms"][f"{p} before"] for row in rows)
        print(f"{p}: median after / before over {args.rounds} rounds {ratio:.3f}")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=pathlib.Path, required=True, help="the other build's _csr_spmm library")
    p.add_argument("--dataset", default="gowalla")
    p.add_argument("--models", default="lightgcn,gat")
    p.add_argument("--methods", default="bpr,item", help="comma-separated losses, each at its default batch size")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--passes", action="store_true",
                   help="time only GAT's attention passes (gat_forward, gat_backward; one head, width 64) on the "
                        "dataset's graph, not training steps")
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "out" / "native_ab.json"))
    args = p.parse_args()

    import jax

    from itemjax import native
    from itemjax.config import TrainConfig
    from itemjax.train.run import prepare
    from step_time import METHODS, median_seconds, step_runner

    if not native.available():
        p.error(f"this checkout's native kernel is unavailable: {native.unavailable_reason()}")
    try:
        before = register_before(args.before)
    except ValueError as error:
        p.error(str(error))  # one line, exit status 2
    after = {name: dict(getattr(native, name)) for name in before}

    def point_at(tables):
        for name, table in tables.items():
            getattr(native, name).clear()
            getattr(native, name).update(table)

    base = TrainConfig(dataset=args.dataset, model="lightgcn", dim=64, layers=3, valid_frac=0.0, progress=False)
    prep = prepare(base.resolve())
    rows = []
    if args.passes:
        rows = time_passes(prep, before, after, point_at, args)
    for model in [] if args.passes else args.models.split(","):
        for method in args.methods.split(","):
            runs = {}
            try:
                for label, tables in (("before", before), ("after", after)):
                    point_at(tables)
                    jax.clear_caches()  # no trace of an inner jitted function is reused with the other targets
                    config = dataclasses.replace(base, model=model, backend="native", batch_size=None,
                                                 **METHODS[method]).resolve()
                    run, _ = step_runner(config, prep)
                    run()  # traced and compiled now, against this build's targets
                    runs[label] = run
            finally:
                point_at(after)
            ratios = []
            for r in range(args.rounds):
                load = os.getloadavg()[0]
                ms = {k: v * 1e3 for k, v in median_seconds(runs, args.repeats, warmup=1).items()}
                ratios.append(ms["after"] / ms["before"])
                rows.append(dict(model=model, method=method, round=r, load1=load, ms=ms))
                print(f"{args.dataset} {model} {method} round {r} (load {load:.2f}): before {ms['before']:.1f} ms, "
                      f"after {ms['after']:.1f} ms, after / before {ratios[-1]:.3f}", flush=True)
            print(f"{args.dataset} {model} {method}: median after / before over {args.rounds} rounds "
                  f"{statistics.median(ratios):.3f}", flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(args={k: str(v) for k, v in vars(args).items()}, rows=rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    tune_host_allocator()  # as training does (itemjax.parallel.host_memory), before JAX starts its threads
    main()
