#!/usr/bin/env python
"""Median jitted training-step time of each training method against BPR at equal users per batch.

    python benchmarks/step_time.py                       # ml-100k and gowalla, both backends
    python benchmarks/step_time.py --datasets ml-100k --users 256,2048 --repeats 20
    python benchmarks/step_time.py --datasets ml-100k,gowalla --backends csr --users default --no-ppr
    python benchmarks/step_time.py --datasets ml-100k --backends csr --users 1024 --no-ppr \
        --methods bpr,bce,item,neuralndcg,softmax,bpr+mixgcf,bpr+sgl-ed,item+sgl-ed

For each dataset, backend, loss and batch size B (users per step: BPR/BCE draw B training
interactions, i.e. B users with one positive and one negative each; ITEM draws B users with up to
``--positives`` positives and ``--negatives`` negatives each; ``default``: each loss at its own
default batch size, itemjax.config.LOSS_DEFAULTS) the real ``train_step`` of
``itemjax.train.step``, jitted by ``Placement.jit_step`` as training does, is compiled, warmed up, then timed ``--repeats`` times with
``block_until_ready``; the median is reported. A method is a loss, optionally with ``+mixgcf``
(BPR with MixGCF negatives, default candidates) or ``+sgl-ed`` (the SGL-ED auxiliary loss), see
:data:`METHODS`. Also the PPR hard-negative precomputation time (``itemjax.graph.ppr.hard_negative_table``,
default window; ``--no-ppr`` skips it). Prints a markdown table (each method's step over BPR's at the
same dataset, backend and users per step) and writes ``benchmarks/out/step_time.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import statistics
import time

import jax

from itemjax.config import TrainConfig
from itemjax.parallel.distributed import make_mesh
from itemjax.train.placement import Placement
from itemjax.train.run import prepare
from itemjax.objective.objectives import Batch
from itemjax.train.step import create_state, train_step


#: method name -> TrainConfig overrides
METHODS = {
    "bpr": dict(loss="bpr"), "bce": dict(loss="bce"), "item": dict(loss="item"),
    "neuralndcg": dict(loss="neuralndcg"), "softmax": dict(loss="softmax"),
    "bpr+mixgcf": dict(loss="bpr", neg_sampler="mixgcf"),
    "bpr+sgl-ed": dict(loss="bpr", ssl="sgl-ed"), "item+sgl-ed": dict(loss="item", ssl="sgl-ed"),
}


def time_steps(config: TrainConfig, prep, repeats: int) -> float:
    """Median seconds of the step training runs use: ``train_step`` through ``Placement.jit_step``
    (the mesh over every device, state and batch placed as :func:`itemjax.train.run.fit` places them)."""
    placement = Placement(make_mesh())
    batch = placement.place_batch(Batch(graph=prep_graph(prep, config.backend), data=prep.batch.data))
    state = placement.place_state(create_state(config, prep.model, batch.graph, batch.data, jax.random.PRNGKey(0)))
    step = placement.jit_step(train_step, state)
    key = placement.replicate(jax.random.PRNGKey(1))
    for _ in range(3):  # compile + warm up
        state, m = step(state, batch, key)
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, m = step(state, batch, key)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


_graphs = {}


def prep_graph(prep, backend):
    """The device graph of ``prep`` on ``backend`` (built once per backend)."""
    from itemjax.graph.bipartite import build_graph
    from itemjax.graph.propagation import to_device

    k = (id(prep), backend)
    if k not in _graphs:
        _graphs[k] = to_device(build_graph(prep.split.train), backend)
    return _graphs[k]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="ml-100k,gowalla")
    p.add_argument("--backends", default="csr,segment")
    p.add_argument("--methods", "--losses", dest="methods", default="bpr,item",
                   help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--no-ppr", action="store_true", help="skip timing the PPR table")
    p.add_argument("--users", default="256,2048",
                   help="users per step, comma-separated; 'default': each loss's default batch size")
    p.add_argument("--positives", type=int, default=32)
    p.add_argument("--negatives", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "out" / "step_time.json"))
    args = p.parse_args()

    rows = []
    for dataset in args.datasets.split(","):
        base = TrainConfig(dataset=dataset, model="lightgcn", dim=64, layers=3, valid_frac=0.0, progress=False,
                           positives=args.positives, negatives=args.negatives)
        prep = prepare(base.resolve())
        if not args.no_ppr:
            from itemjax.graph.ppr import hard_negative_table

            t0 = time.perf_counter()
            hard_negative_table(prep.split.train, window=tuple(base.ppr_window), alpha=base.ppr_alpha, progress=False)
            ppr_seconds = time.perf_counter() - t0
            rows.append(dict(dataset=dataset, what="ppr_precompute", seconds=ppr_seconds, n_users=prep.split.n_users,
                             n_items=prep.split.n_items, n_train=int(prep.split.train.nnz)))
            print(f"{dataset}: PPR table {ppr_seconds:.2f} s", flush=True)
        for backend in args.backends.split(","):
            for users in (u if u == "default" else int(u) for u in args.users.split(",")):
                for method in args.methods.split(","):
                    if method not in METHODS:
                        p.error(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
                    config = dataclasses.replace(base, backend=backend, batch_size=None if users == "default" else users,
                                                 **METHODS[method]).resolve()
                    median = time_steps(config, prep, args.repeats)
                    rows.append(dict(dataset=dataset, what="step", method=method, loss=config.loss, backend=backend,
                                     users=users, batch_size=config.batch_size, median_seconds=median))
                    print(f"{dataset} {backend} {method} B={config.batch_size}: {median * 1000:.1f} ms", flush=True)

    print("\n| dataset | backend | users/step | method | step (ms) | / BPR step |")
    print("|---|---|---|---|---|---|")
    steps = [r for r in rows if r["what"] == "step"]
    for r in steps:
        bpr = next((s for s in steps if s["method"] == "bpr"
                    and all(s[k] == r[k] for k in ("dataset", "backend", "users"))), None)
        ratio = f"{r['median_seconds'] / bpr['median_seconds']:.2f}" if bpr else "–"
        users = f"default ({r['batch_size']})" if r["users"] == "default" else r["users"]
        print(f"| {r['dataset']} | {r['backend']} | {users} | {r['method']} | {r['median_seconds'] * 1e3:.1f} | "
              f"{ratio} |")
    print("\n| dataset | PPR precomputation (s) |\n|---|---|")
    for r in rows:
        if r["what"] == "ppr_precompute":
            print(f"| {r['dataset']} | {r['seconds']:.2f} |")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = dict(platform=platform.platform(), cpus=os.cpu_count(), jax=jax.__version__,
                   devices=[str(d) for d in jax.devices()], load_average=os.getloadavg())
    out.write_text(json.dumps(dict(machine=machine, args=vars(args), rows=rows), indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
