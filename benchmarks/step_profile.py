#!/usr/bin/env python
"""Where one training step's time goes, operation by operation (XLA's own profile of the jitted step).

    python benchmarks/step_profile.py --dataset gowalla --model gat --loss bpr --backend native
    python benchmarks/step_profile.py --dataset ml-100k --model lightgcn --loss item --top 15

Builds the step training runs (``benchmarks/step_time.py``'s :func:`step_runner`: ``train_step``
through ``Placement.jit_step``), warms it up, then records ``--steps`` steps under
:func:`jax.profiler.trace` with a Perfetto trace, reads the trace's complete events (``"ph": "X"``)
and sums their durations by name over the steps. Prints the ``--top`` names by total time with their
share of the traced wall time per step (an operation's events on several threads can add up to more
than the wall time: the shares show where the work is, not a partition of it), then the same summed by
kind (:func:`totals_by_kind`: ``dot.2`` and ``dot.7`` are both ``dot``), and writes both to ``--out`` as JSON. Run it alone: a profile of a loaded machine shows the load.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def trace_events(trace_dir: pathlib.Path) -> list:
    """The complete events (``ph == "X"``, with ``name`` and ``dur`` in microseconds) of the Perfetto
    trace that :func:`jax.profiler.trace` wrote under ``trace_dir``."""
    paths = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not paths:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: this jax wrote no Perfetto trace")
    with gzip.open(paths[-1], "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e and "name" in e]


#: Event names that are not XLA operations: Python frames (``$file:line name``), the executor and jit wrappers.
NOT_OPERATIONS = ("$", "ThunkExecutor", "PjitFunction")


def totals_by_name(events: list, *, operations_only: bool = True) -> dict:
    """``{name: (total microseconds, count)}`` over ``events`` (the XLA operations' only, unless
    ``operations_only`` is False: see :data:`NOT_OPERATIONS`)."""
    total, count = collections.defaultdict(float), collections.Counter()
    for e in events:
        if operations_only and e["name"].startswith(NOT_OPERATIONS):
            continue
        total[e["name"]] += float(e["dur"])
        count[e["name"]] += 1
    return {name: (total[name], count[name]) for name in total}


def totals_by_kind(totals: dict) -> dict:
    """``{kind: (total microseconds, count)}``: the totals of :func:`totals_by_name` summed over names that
    differ only in XLA's numeric suffix (``dot.2`` and ``dot.7`` are both ``dot``; ``ffi_call.12`` is
    ``ffi_call``), so that forty small fusions of one kind show as one line."""
    total, count = collections.defaultdict(float), collections.Counter()
    for name, (microseconds, calls) in totals.items():
        kind = re.sub(r"\.\d+$", "", name)
        total[kind] += microseconds
        count[kind] += calls
    return {kind: (total[kind], count[kind]) for kind in total}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="gowalla")
    p.add_argument("--model", default="gat")
    p.add_argument("--loss", default="bpr")
    p.add_argument("--backend", default="auto")
    p.add_argument("--steps", type=int, default=5, help="steps recorded")
    p.add_argument("--top", type=int, default=25, help="names printed")
    p.add_argument("--all-events", action="store_true", help="also Python frames and executor events")
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "out" / "step_profile.json"))
    args = p.parse_args(argv)

    import jax

    from itemjax.config import TrainConfig
    from itemjax.train.run import prepare
    from step_time import step_runner

    config = TrainConfig(dataset=args.dataset, model=args.model, loss=args.loss, backend=args.backend,
                         valid_frac=0.0, progress=False).resolve()
    prep = prepare(config)
    run, _ = step_runner(config, prep)
    for _ in range(3):
        run()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(args.steps):
                run()
        wall = (time.perf_counter() - t0) / args.steps
        totals = totals_by_name(trace_events(pathlib.Path(tmp)), operations_only=not args.all_events)
    rows = sorted(({"name": n, "ms_per_step": t / 1e3 / args.steps, "calls_per_step": c / args.steps,
                    "share": t / 1e6 / args.steps / wall} for n, (t, c) in totals.items()),
                  key=lambda r: -r["ms_per_step"])
    print(f"{args.dataset} {args.model} {args.loss} on {prep.batch.graph.backend}: {wall * 1e3:.1f} ms per traced step "
          f"(load {load_before[0]:.2f})\n")
    print("| operation | ms / step | calls / step | share of the step |")
    print("|---|---|---|---|")
    for r in rows[: args.top]:
        print(f"| `{r['name'][:80]}` | {r['ms_per_step']:.2f} | {r['calls_per_step']:.0f} | {r['share']:.2f} |")
    kinds = sorted(({"kind": k, "ms_per_step": t / 1e3 / args.steps, "calls_per_step": c / args.steps}
                    for k, (t, c) in totals_by_kind(totals).items()), key=lambda r: -r["ms_per_step"])
    print(f"\nby kind (names without XLA's numeric suffix), {sum(r['ms_per_step'] for r in kinds):.1f} ms of "
          "operations per step in all:\n")
    print("| kind | ms / step | calls / step |")
    print("|---|---|---|")
    for r in kinds[: args.top]:
        print(f"| `{r['kind'][:80]}` | {r['ms_per_step']:.2f} | {r['calls_per_step']:.0f} |")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(args=vars(args), wall_seconds_per_step=wall, load_before=load_before,
                                   backend=prep.batch.graph.backend, rows=rows, kinds=kinds), indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    from itemjax.parallel.host_memory import tune_host_allocator

    tune_host_allocator()  # as every training run does (itemjax.parallel.distributed.initialize), before JAX computes
    main()
