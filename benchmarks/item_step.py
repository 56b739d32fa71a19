#!/usr/bin/env python
"""ITEM's training step against BPR's at each loss's DEFAULT batch size, and against the
pre-2026-12-03 ITEM step (the reference formula below), with XLA's cost analysis.

    python benchmarks/item_step.py --datasets ml-100k,gowalla --repeats 40
    python benchmarks/item_step.py --datasets ml-100k --item-users 1024    # ITEM at BPR's 1024

For each dataset the real ``train_step`` (LightGCN, dim 64, 3 layers, csr backend, every other
option at its default: BPR 1024 triples per step; ITEM 256 users x (32 positives + 256 uniform
negatives), smooth NDCG + Recall@20, detached positive pairs) is compiled for

* ``bpr``: BPR at its default batch;
* ``item``: ITEM at its default batch, as trained today;
* ``item-before``: the same ITEM step with the formula it had before 2026-12-03 (the list's item
  rows gathered and their gradients scatter-added, the ``[P, P + N]`` pairwise matrix built and
  differentiated whole by :func:`itemjax.objective.ranking_losses.item_loss`, the L2 term on
  gathered rows): same value and gradient, kept here as the baseline;

and prints each one's ``cost_analysis()`` (flops, bytes accessed, transcendentals), then times
them interleaved (one call of each per round, ``--repeats`` rounds, ``block_until_ready``) and
prints the median and minimum wall-clock and process CPU time per step and each one's ratio to
BPR, with the load average before and after. On a shared machine compare the ratios, not the
absolute times. Writes ``benchmarks/out/item_step.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp

from itemjax.config import TrainConfig
from itemjax.model.models import id_embeddings
from itemjax.objective import objectives
from itemjax.objective.losses import l2_penalty
from itemjax.objective.ranking_losses import item_loss
from itemjax.train.run import prepare
from itemjax.train.step import create_state, train_step


def item_objective_before(params, apply_fn, batch, key, step, *, n_users, n_pos, n_neg, metric, tau, k, l2,
                          hard_share, shared_negatives, slope=0.0, positive_pairs="smooth", users_by_degree=False,
                          tau_k=1.0, catalogue_rank=False, id_dropout=(0.0, 0.0), margin=0.0, calibration=0.0,
                          ssl=None):
    """The ITEM objective as computed before 2026-12-03 (same draws, value and gradient)."""
    assert ssl is None, "the baseline covers ITEM without --ssl"
    share = hard_share(step) if callable(hard_share) else hard_share
    lists = objectives.user_lists(params, apply_fn, batch, key, share, n_users=n_users, n_pos=n_pos, n_neg=n_neg,
                                  shared_negatives=shared_negatives, users_by_degree=users_by_degree,
                                  id_dropout=id_dropout, dense_scoring=False)
    negative_weight = 1.0
    if catalogue_rank:
        data = batch.data
        degree = (data.indptr[lists.users + 1] - data.indptr[lists.users]).astype(jnp.float32)
        n_valid = jnp.maximum(lists.neg_where.sum(-1).astype(jnp.float32), 1.0)
        negative_weight = jnp.maximum(data.n_items - degree, 0.0) / n_valid
    loss = item_loss(lists.scores, lists.labels, where=lists.where, metric=metric, tau=tau, k=k, tau_k=tau_k,
                     slope=slope, positive_pairs=positive_pairs, margin=margin, calibration=calibration,
                     negative_weight=negative_weight, query=jnp.arange(n_pos, dtype=jnp.int32))
    total = loss
    if l2 > 0:
        ego_u, ego_i = id_embeddings(params)
        total = loss + l2 * l2_penalty(ego_u[lists.users], ego_i[lists.pos] * lists.pos_where[..., None],
                                       ego_i[lists.neg_ids], batch_size=n_users)
    return total, {"rank_loss": loss}


def cost(compiled) -> dict:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return {k: float(analysis.get(k, 0.0)) for k in ("flops", "bytes accessed", "transcendentals")}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="ml-100k,gowalla")
    p.add_argument("--backend", default="csr")
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--no-before", action="store_true", help="skip the pre-2026-12-03 ITEM step")
    p.add_argument("--item-users", type=int, default=None, help="ITEM's users per step (default: its default, 256)")
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "out" / "item_step.json"))
    args = p.parse_args()

    rows = []
    for dataset in args.datasets.split(","):
        base = TrainConfig(dataset=dataset, model="lightgcn", dim=64, layers=3, valid_frac=0.0, progress=False,
                           backend=args.backend)
        prep = prepare(base.resolve())
        batch, key = prep.batch, jax.random.PRNGKey(1)
        states = {}
        for loss in ("bpr", "item"):
            config = dataclasses.replace(base, loss=loss,
                                         batch_size=args.item_users if loss == "item" else None).resolve()
            states[loss] = create_state(config, prep.model, batch.graph, batch.data, jax.random.PRNGKey(0))
        if not args.no_before:
            after = states["item"].objective
            states["item-before"] = states["item"].replace(
                objective=functools.partial(item_objective_before, **after.keywords))
        compiled = {}
        for name, state in states.items():
            compiled[name] = train_step.lower(state, batch, key).compile()
            c = cost(compiled[name])
            rows.append(dict(dataset=dataset, what="cost", name=name, batch_size=states[name].objective.keywords.get(
                "n_users", states[name].objective.keywords.get("batch_size")), **c))
            print(f"{dataset} {name:12s} flops {c['flops']:.3g}  bytes {c['bytes accessed']:.3g}  "
                  f"transcendentals {c['transcendentals']:.3g}", flush=True)
        for name, fn in compiled.items():  # warm up
            jax.block_until_ready(fn(states[name], batch, key))
        load_before = os.getloadavg()
        wall = {n: [] for n in compiled}
        cpu = {n: [] for n in compiled}
        for _ in range(args.repeats):
            for name, fn in compiled.items():
                t0, c0 = time.perf_counter(), time.process_time()
                jax.block_until_ready(fn(states[name], batch, key))
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        load_after = os.getloadavg()
        print(f"{dataset}: load average {load_before} before, {load_after} after")
        print("| dataset | step | wall median (ms) | wall min (ms) | CPU median (ms) | CPU min (ms) | wall / BPR | CPU / BPR |")
        print("|---|---|---|---|---|---|---|---|")
        for name in compiled:
            r = dict(dataset=dataset, what="time", name=name, wall_median=statistics.median(wall[name]),
                     wall_min=min(wall[name]), cpu_median=statistics.median(cpu[name]), cpu_min=min(cpu[name]),
                     load_before=load_before, load_after=load_after, repeats=args.repeats)
            rows.append(r)
            bpr = next(x for x in rows if x["what"] == "time" and x["dataset"] == dataset and x["name"] == "bpr")
            print(f"| {dataset} | {name} | {r['wall_median'] * 1e3:.1f} | {r['wall_min'] * 1e3:.1f} | "
                  f"{r['cpu_median'] * 1e3:.1f} | {r['cpu_min'] * 1e3:.1f} | "
                  f"{r['wall_median'] / bpr['wall_median']:.2f} | {r['cpu_median'] / bpr['cpu_median']:.2f} |",
                  flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = dict(cpus=os.cpu_count(), jax=jax.__version__, devices=[str(d) for d in jax.devices()])
    out.write_text(json.dumps(dict(machine=machine, args=vars(args), rows=rows), indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    from itemjax.parallel.host_memory import tune_host_allocator

    tune_host_allocator()  # as every training run does (itemjax.parallel.distributed.initialize), before JAX computes
    main()
