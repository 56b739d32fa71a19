#!/usr/bin/env python
"""Median jitted training-step time of each training method against BPR at equal users per batch.

    python benchmarks/step_time.py                       # ml-100k and gowalla, both backends
    python benchmarks/step_time.py --datasets ml-100k --users 256,2048 --repeats 20
    python benchmarks/step_time.py --datasets ml-100k,gowalla --backends csr --users default --no-ppr
    python benchmarks/step_time.py --datasets ml-100k --backends csr --users 1024 --no-ppr \
        --methods bpr,bce,item,neuralndcg,softmax,bpr+mixgcf,bpr+sgl-ed,item+sgl-ed
    python benchmarks/step_time.py --models lightgcn,gat --backends csr --no-ppr   # GAT against LightGCN

For each dataset, backend, model (``--models``, default lightgcn; dim 64, 3 layers), loss and batch
size B (users per step: BPR/BCE draw B training interactions, i.e. B users with one positive and one
negative each; ITEM draws B users with up to ``--positives`` positives and ``--negatives`` negatives
each; ``default``: each loss at its own default batch size, itemjax.config.LOSS_DEFAULTS) the real ``train_step`` of
``itemjax.train.step``, jitted by ``Placement.jit_step`` as training does, is compiled, warmed up, then timed ``--repeats`` times with
``block_until_ready``; the median is reported. A method is a loss, optionally with ``+mixgcf``
(BPR with MixGCF negatives, default candidates) or ``+sgl-ed`` (the SGL-ED auxiliary loss), see
:data:`METHODS`. Also the PPR hard-negative precomputation time (``itemjax.graph.ppr.hard_negative_table``,
default window; ``--no-ppr`` skips it). Prints a markdown table (each step over BPR's of the same model
and over LightGCN's of the same method, at the same dataset, backend and users per step) and writes
``benchmarks/out/step_time.json``, one row per step time with its ``model``, ``method``, ``loss`` and
``median_seconds``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import pathlib
import platform
import statistics
import time

import jax

from itemjax.config import MODEL_NAMES, TrainConfig
from itemjax.parallel.distributed import make_mesh
from itemjax.train.placement import Placement, step_compiler_options
from itemjax.train.run import prepare
from itemjax.objective.objectives import Batch
from itemjax.train.step import create_state, make_model, train_step


#: method name -> TrainConfig overrides
METHODS = {
    "bpr": dict(loss="bpr"), "bce": dict(loss="bce"), "item": dict(loss="item"),
    "neuralndcg": dict(loss="neuralndcg"), "softmax": dict(loss="softmax"),
    "bpr+mixgcf": dict(loss="bpr", neg_sampler="mixgcf"),
    "bpr+sgl-ed": dict(loss="bpr", ssl="sgl-ed"), "item+sgl-ed": dict(loss="item", ssl="sgl-ed"),
}


def step_runner(config: TrainConfig, prep):
    """``(run, state)``: ``run()`` takes one step of the kind training runs take, ``train_step``
    through ``Placement.jit_step`` (the mesh over every device, state and batch placed as
    :func:`itemjax.train.run.fit` places them), and waits for it (``block_until_ready``); each call
    continues from the state the previous one left. ``state`` is the initial state (parameters
    from ``PRNGKey(0)``; the step is not donated, so it stays valid)."""
    placement = Placement(make_mesh())
    batch = placement.place_batch(Batch(graph=prep_graph(prep, config.backend), data=prep.batch.data))
    model = make_model(config, prep.split.n_users, prep.split.n_items)
    state = placement.place_state(create_state(config, model, batch.graph, batch.data, jax.random.PRNGKey(0)))
    step = placement.jit_step(train_step, state, step_compiler_options(config.cpu_fusions))
    key = placement.replicate(jax.random.PRNGKey(1))
    current = [state]

    def run():
        current[0], _ = step(current[0], batch, key)
        jax.block_until_ready(current[0])

    return run, state


def median_seconds(runs: dict, repeats: int, warmup: int = 3) -> dict:
    """``{name: median seconds}`` of the callables ``runs`` (each must wait for its own work to
    finish): ``warmup`` untimed calls each (compilation), then ``repeats`` rounds that call every
    one once in turn, so that a change of the machine's load affects them all alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def time_steps(config: TrainConfig, prep, repeats: int) -> float:
    """Median seconds of the step training runs use (:func:`step_runner`), after 3 warm-up steps."""
    run, _ = step_runner(config, prep)
    return median_seconds({"step": run}, repeats)["step"]


def ratio_to(row: dict, steps: list, **reference) -> str:
    """``row``'s step time over the one of the step that differs from it only by ``reference``
    (e.g. ``method="bpr"``), as text; "–" when that step was not timed."""
    keys = ("dataset", "backend", "users", "model", "method", "fusions")
    want = {**{k: row[k] for k in keys}, **reference}
    other = next((s for s in steps if all(s[k] == want[k] for k in keys)), None)
    return f"{row['median_seconds'] / other['median_seconds']:.2f}" if other else "–"


_graphs = {}


def host_graph(prep):
    """The :class:`itemjax.graph.bipartite.Graph` of ``prep``'s training split (built once)."""
    from itemjax.graph.bipartite import build_graph

    k = (id(prep), "host")
    if k not in _graphs:
        _graphs[k] = build_graph(prep.split.train)
    return _graphs[k]


def prep_graph(prep, backend):
    """The device graph of ``prep`` on ``backend`` (built once per backend)."""
    from itemjax.graph.propagation import to_device

    k = (id(prep), backend)
    if k not in _graphs:
        _graphs[k] = to_device(host_graph(prep), backend)
    return _graphs[k]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="ml-100k,gowalla")
    p.add_argument("--backends", default="csr,segment")
    p.add_argument("--methods", "--losses", dest="methods", default="bpr,item",
                   help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--models", default="lightgcn", help=f"comma-separated, of {', '.join(MODEL_NAMES)}")
    p.add_argument("--no-ppr", action="store_true", help="skip timing the PPR table")
    p.add_argument("--users", default="256,2048",
                   help="users per step, comma-separated; 'default': each loss's default batch size")
    p.add_argument("--positives", type=int, default=32)
    p.add_argument("--negatives", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cpu-fusions", default="default",
                   help="semicolon-separated --cpu-fusions settings to time (default: each model's own; xla; none; "
                        "a comma list of YNNPACK fusion kinds)")
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "out" / "step_time.json"))
    args = p.parse_args()
    models = args.models.split(",")
    methods = args.methods.split(",")
    for model in models:
        if model not in MODEL_NAMES:
            p.error(f"unknown model {model!r}; choose from {', '.join(MODEL_NAMES)}")
    for method in methods:
        if method not in METHODS:
            p.error(f"unknown method {method!r}; choose from {', '.join(METHODS)}")

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
                for fusions, model, method in itertools.product(args.cpu_fusions.split(";"), models, methods):
                    config = dataclasses.replace(base, model=model, backend=backend,
                                                 batch_size=None if users == "default" else users,
                                                 cpu_fusions=None if fusions == "default" else fusions,
                                                 **METHODS[method]).resolve()
                    median = time_steps(config, prep, args.repeats)
                    rows.append(dict(dataset=dataset, what="step", model=model, method=method, loss=config.loss,
                                     backend=backend, users=users, batch_size=config.batch_size, fusions=fusions,
                                     cpu_fusions=config.cpu_fusions, median_seconds=median))
                    print(f"{dataset} {backend} {model} {method} B={config.batch_size} fusions {config.cpu_fusions}: "
                          f"{median * 1000:.1f} ms", flush=True)

    print("\n| dataset | backend | users/step | model | method | CPU fusions | step (ms) | / BPR step | / LightGCN step |")
    print("|---|---|---|---|---|---|---|---|---|")
    steps = [r for r in rows if r["what"] == "step"]
    for r in steps:
        users = f"default ({r['batch_size']})" if r["users"] == "default" else r["users"]
        print(f"| {r['dataset']} | {r['backend']} | {users} | {r['model']} | {r['method']} | {r['cpu_fusions']} | "
              f"{r['median_seconds'] * 1e3:.1f} | {ratio_to(r, steps, method='bpr')} | "
              f"{ratio_to(r, steps, model='lightgcn')} |")
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
    from itemjax.parallel.host_memory import tune_host_allocator

    tune_host_allocator()  # as every training run does (itemjax.parallel.distributed.initialize), before JAX computes
    main()
