#!/usr/bin/env python
"""The fused GAT layer and the model outputs' split against what they replaced, in one process.

    python benchmarks/gat_layer.py                                  # gowalla, BPR and ITEM
    python benchmarks/gat_layer.py --datasets ml-100k --repeats 20 --rounds 3

Times the training step (``benchmarks/step_time.py``'s :func:`step_runner`, native backend, each loss at
its default batch size) of five variants, built in one process and timed round robin
(:func:`step_time.median_seconds`), so that the machine's drift touches them all alike:

* ``gat-composed``: GAT with each layer composed as before 2026-12-08: the attention scores ``z . a`` and
  ``l2_normalize`` in XLA around the native attention passes (``propagate_attention``), the model's
  outputs split into user and item rows by slicing (whose gradient autodiff forms as two zero-padded
  full-size arrays, added);
* ``gat-fused``: the fused layer (:func:`itemjax.graph.propagation.gat_layer` on the native kernel),
  outputs still split by slicing;
* ``gat``: the fused layer and :func:`itemjax.model.models.split_rows` (gradient: one concatenation),
  as the library trains today;
* ``lightgcn-sliced`` and ``lightgcn``: LightGCN with the outputs split by slicing and by ``split_rows``.

The earlier code paths are put back by replacing the module attributes ``gat_layer`` and ``split_rows``
of :mod:`itemjax.model.models` while each variant is traced. Prints one line per round with each
variant's median and the GAT / LightGCN ratio before and after, and writes ``--out`` as JSON. Run it
alone: other jobs move step times by a third or more on a 2-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from itemjax.parallel.host_memory import tune_host_allocator  # noqa: E402


def composed_layer(graph, z, a_src, a_dst, negative_slope=0.2):
    """One GAT head as the model computed it before the fused layer: scores and normalisation in XLA."""
    import jax.numpy as jnp

    from itemjax.graph.propagation import propagate_attention
    from itemjax.reductions import l2_normalize

    y = propagate_attention(graph, z, jnp.sum(z * a_src, axis=-1), jnp.sum(z * a_dst, axis=-1), negative_slope)
    return y, l2_normalize(y)


def sliced(x, n_first):
    """The outputs' split before :func:`itemjax.model.models.split_rows`: plain slicing."""
    return x[:n_first], x[n_first:]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="gowalla")
    p.add_argument("--methods", default="bpr,item", help="comma-separated losses, each at its default batch size")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "out" / "gat_layer.json"))
    args = p.parse_args()

    import itemjax.model.models as models
    from itemjax.config import TrainConfig
    from itemjax.train.run import prepare
    from step_time import METHODS, median_seconds, step_runner

    fused, split = models.gat_layer, models.split_rows
    variants = {"gat-composed": ("gat", composed_layer, sliced), "gat-fused": ("gat", fused, sliced),
                "gat": ("gat", fused, split), "lightgcn-sliced": ("lightgcn", fused, sliced),
                "lightgcn": ("lightgcn", fused, split)}
    rows = []
    for dataset in args.datasets.split(","):
        base = TrainConfig(dataset=dataset, model="lightgcn", dim=64, layers=3, valid_frac=0.0, progress=False)
        prep = prepare(base.resolve())
        for method in args.methods.split(","):
            runs = {}
            try:
                for name, (model, layer, splitter) in variants.items():
                    models.gat_layer, models.split_rows = layer, splitter
                    config = dataclasses.replace(base, model=model, backend="native", batch_size=None,
                                                 **METHODS[method]).resolve()
                    run, _ = step_runner(config, prep)
                    run()  # traced and compiled now, with this variant's functions
                    runs[name] = run
            finally:
                models.gat_layer, models.split_rows = fused, split
            for r in range(args.rounds):
                load = os.getloadavg()[0]
                ms = {k: v * 1e3 for k, v in median_seconds(runs, args.repeats, warmup=2).items()}
                rows.append(dict(dataset=dataset, method=method, round=r, load1=load, ms=ms))
                print(f"{dataset} {method} round {r} (load {load:.2f}): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
                      + f" ms | GAT / LightGCN {ms['gat-composed'] / ms['lightgcn-sliced']:.2f} before, "
                        f"{ms['gat'] / ms['lightgcn']:.2f} now", flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(args=vars(args), rows=rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    tune_host_allocator()  # as training does (itemjax.parallel.host_memory), before JAX starts its threads
    main()
