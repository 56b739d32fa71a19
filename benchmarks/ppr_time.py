#!/usr/bin/env python
"""Time the PPR hard-negative table on the device, optionally against the host scipy path and other backends.

    python benchmarks/ppr_time.py --datasets gowalla,yelp2018 --out benchmarks/out/ppr_time.json
    python benchmarks/ppr_time.py --datasets gowalla --compare-scipy --out benchmarks/out/ppr_time_scipy.json
    python benchmarks/ppr_time.py --datasets ml-100k --compare-scipy --out /tmp/ppr_smoke.json   # smoke run
    python benchmarks/ppr_time.py --datasets gowalla --backends device,push --push-eps 1e-6,1e-7 --users 2000 \
        --out benchmarks/out/ppr_push.json   # the forward push against the exact table, on a sample of users

For each dataset: load and split as ``itemjax.train.run.prepare`` does (the predefined test split
of gowalla / yelp2018; ``--valid-frac`` carved out of train, default 0 as in
benchmarks/epoch_time.py), then ``itemjax.graph.ppr.hard_negative_table(train, backend="device")``
with the run's defaults (window 10-100, alpha 0.15, 50 iterations, tol 1e-6), not cached:
wall-clock ``seconds`` (compilation included, it happens once per block shape) and
``cpu_seconds`` of the process (``time.process_time``, all threads); with ``--repeats N > 1`` also
``warm_seconds`` / ``warm_cpu_seconds``, the fastest of the ``N - 1`` later calls (compiled
already: the compilation is ``seconds - warm_seconds``). ``--compare-scipy`` also times
``backend="scipy"`` (``speedup`` = its seconds over the device's first call) and reports how far
the two tables are apart:

* ``identical_rows``: fraction of users whose windows are equal slot for slot;
* ``mean_jaccard``: mean over users of ``|A & B| / |A | B|`` of the two windows' item sets
  (PAD left out; 1 when both are empty);
* on up to ``--score-users`` users whose windows differ (or random users when none does), both
  backends' PPR scores (``ppr_scores``): ``max_abs_score_diff``, ``max_rel_score_diff``, and
  ``untied_differences``, the slots where the two windows hold items whose scipy scores differ by
  more than ``1e-9 + 1e-5 * score`` (the tolerance of tests/test_ppr.py; expected 0: differences
  are swaps of tied items).

``--backends`` (default ``device``): the backends timed, comma-separated from ``device``, ``native``, ``scipy``,
``push``; ``push`` once per ``--push-eps`` value (default: the run's ``--ppr-eps``). Each backend other than
``device`` records ``seconds`` / ``cpu_seconds`` under ``backends["<name>"]`` with its ``overlap_at_k`` with
the exact table: the mean over users (with a nonempty exact window) of ``|its window & exact window| /
|exact window|`` (PAD left out), the exact table being ``backend="scipy"`` at the run's defaults (50
iterations, tol 1e-6; computed once, untimed unless ``--compare-scipy`` timed it; the device table instead
when ``device`` is among the backends and ``--compare-scipy`` is not given: the same iteration, equal up to
swaps of tied candidates, and ~6x faster on gowalla), and ``fill``, the fraction
of its slots holding an item; the device table's ``overlap_at_k`` is recorded beside its time too.
``--users N``: only a seeded sample of ``N`` users' rows (``itemjax.graph.ppr.hard_negative_rows``; the
power-iteration backends then compute one block's scores at a time and rank on the host) instead of whole
tables; times are then per sample.

``peak_rss_gib``: the process's peak resident memory after the device table (data included;
on CPU the device's memory is host memory). The machine is shared: the 1-minute load average (``os.getloadavg()``) before and after each
timing is recorded with it. Writes ``{"<dataset>": {"seconds": ..., ...}, ...}`` to ``--out``
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import time

import numpy as np

#: tolerance of a tie between two scores (tests/test_ppr.py)
RTOL, ATOL = 1e-5, 1e-9


def timed(fn):
    """``(result, wall seconds, process CPU seconds, (load before, load after))``."""
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu, (load_before, os.getloadavg()[0])


def window_agreement(device: np.ndarray, scipy_table: np.ndarray, pad: int) -> dict:
    """Fraction of identical rows and mean Jaccard of the rows' item sets (PAD left out)."""
    jaccard = []
    for a, b in zip(device, scipy_table):
        sa, sb = set(a[a != pad].tolist()), set(b[b != pad].tolist())
        union = sa | sb
        jaccard.append(len(sa & sb) / len(union) if union else 1.0)
    return {"identical_rows": float(np.mean(np.all(device == scipy_table, axis=1))),
            "mean_jaccard": float(np.mean(jaccard)), "rows_differing": int(np.sum(np.any(device != scipy_table, axis=1)))}


def overlap_at_k(got: np.ndarray, exact: np.ndarray, pad: int) -> float:
    """Mean over users with a nonempty exact window of ``|got window & exact window| / |exact window|``."""
    values = []
    for a, b in zip(got, exact):
        want = set(b[b != pad].tolist())
        if want:
            values.append(len(set(a[a != pad].tolist()) & want) / len(want))
    return float(np.mean(values)) if values else 1.0


def score_differences(train, device: np.ndarray, scipy_table: np.ndarray, n_users: int, seed: int, params,
                      user_ids=None) -> dict:
    """Both backends' scores on up to ``n_users`` users (differing rows first, else random ones); ``user_ids``: the
    user of each table row (default: row ``k`` is user ``k``)."""
    from itemjax.graph.ppr import PAD, ppr_scores

    differing = np.flatnonzero(np.any(device != scipy_table, axis=1))
    if differing.size == 0:
        differing = np.random.default_rng(seed).permutation(device.shape[0])
    rows = np.sort(differing[:n_users])
    users = rows if user_ids is None else np.asarray(user_ids)[rows]
    kwargs = dict(alpha=params["alpha"])
    want = ppr_scores(train, users, backend="scipy", **kwargs)
    got = ppr_scores(train, users, backend="device", **kwargs)
    diff = np.abs(got.astype(np.float64) - want)
    untied = 0
    for k, u in enumerate(rows):
        slots = np.flatnonzero(device[u] != scipy_table[u])
        a, b = device[u, slots], scipy_table[u, slots]
        if np.any((a == PAD) != (b == PAD)):
            untied += int(np.sum((a == PAD) != (b == PAD)))
            keep = (a != PAD) & (b != PAD)
            a, b = a[keep], b[keep]
        untied += int(np.sum(np.abs(want[k, a] - want[k, b]) > ATOL + RTOL * np.abs(want[k, b])))
    return {"score_users": int(len(users)), "max_abs_score_diff": float(diff.max(initial=0.0)),
            "max_rel_score_diff": float((diff / np.maximum(np.abs(want), 1e-30))[want > 0].max(initial=0.0)),
            "untied_differences": untied}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="gowalla,yelp2018", help="comma-separated dataset names or paths")
    p.add_argument("--data-dir", default=None, help="data root (default: $ITEMJAX_DATA)")
    p.add_argument("--valid-frac", type=float, default=0.0, help="validation carved out of train before the table")
    p.add_argument("--block-size", type=int, default=1024, help="users per block (both backends)")
    p.add_argument("--compare-scipy", action="store_true", help="also time the host scipy path and compare the tables")
    p.add_argument("--score-users", type=int, default=256, help="users whose scores are compared (--compare-scipy)")
    p.add_argument("--repeats", type=int, default=1, help="device tables computed; the later ones are warm")
    p.add_argument("--backends", default="device",
                   help="comma-separated backends to time: device, native, scipy, push (default: device)")
    p.add_argument("--push-eps", default=None,
                   help="comma-separated eps values of the push backend (default: the run's --ppr-eps)")
    p.add_argument("--users", type=int, default=0,
                   help="time the rows of a seeded sample of this many users instead of whole tables (0: all)")
    p.add_argument("--progress", action="store_true", help="tqdm bars over the blocks")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args()

    from itemjax.parallel.distributed import initialize

    initialize(False)  # allocator tuning, as a training run sets the process up before its table
    import jax

    from itemjax.config import PPR_BACKENDS, TrainConfig
    from itemjax.data.datasets import load_dataset
    from itemjax.data.split import split_of
    from itemjax.graph.ppr import PAD, device_slots, hard_negative_rows, hard_negative_table

    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - set(PPR_BACKENDS))
    if unknown:
        p.error(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(PPR_BACKENDS)}")

    results = {}
    for dataset in args.datasets.split(","):
        config = TrainConfig(dataset=dataset, data_dir=args.data_dir, valid_frac=args.valid_frac,
                             progress=False).resolve()
        raw = load_dataset(config.dataset, data_dir=config.data_dir, min_rating=config.min_rating, kcore=config.kcore,
                           sep=config.sep, progress=False)
        train = split_of(raw, config).train
        params = dict(window=tuple(config.ppr_window), alpha=config.ppr_alpha)
        users = None
        if args.users:
            users = np.sort(np.random.default_rng(config.seed).permutation(train.shape[0])[:args.users])

        def table(backend, progress=args.progress, **extra):
            """The backend's table (or the sample's rows, ``--users``)."""
            if users is None:
                return hard_negative_table(train, backend=backend, block_size=args.block_size, progress=progress,
                                           **params, **extra)
            return hard_negative_rows(train, users, backend=backend, block_size=args.block_size, **params, **extra)

        record = dict(n_users=int(train.shape[0]), n_items=int(train.shape[1]), n_train=int(train.nnz),
                      window=list(params["window"]), alpha=params["alpha"], block_size=args.block_size,
                      sample_users=int(len(users)) if users is not None else None,
                      slots=device_slots(min(args.block_size, train.shape[0])), platform=platform.platform(),
                      cpus=os.cpu_count(), jax=jax.__version__, devices=[str(d) for d in jax.devices()])
        device = scipy_table = None
        if "device" in backends:
            device, seconds, cpu, load = timed(lambda: table("device"))
            record.update(seconds=seconds, cpu_seconds=cpu, load_before=load[0], load_after=load[1],
                          peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
            print(f"{dataset}: device table {seconds:.2f} s (CPU {cpu:.2f} s, load {load[0]:.1f} -> {load[1]:.1f})",
                  flush=True)
            warm = [timed(lambda: table("device", progress=False))[1:] for _ in range(args.repeats - 1)]
            if warm:
                best = min(warm, key=lambda w: w[0])
                record.update(warm_seconds=best[0], warm_cpu_seconds=best[1], warm_load_before=best[2][0])
                print(f"{dataset}: device table, compiled: {best[0]:.2f} s (CPU {best[1]:.2f} s)", flush=True)
        if args.compare_scipy:
            scipy_table, s_seconds, s_cpu, s_load = timed(lambda: table("scipy"))
            record["scipy"] = dict(seconds=s_seconds, cpu_seconds=s_cpu, load_before=s_load[0], load_after=s_load[1])
        if device is not None and scipy_table is not None:
            record["speedup"] = s_seconds / seconds
            record.update(window_agreement(device, scipy_table, PAD))
            record.update(score_differences(train, device, scipy_table, args.score_users, config.seed, params,
                                            user_ids=users))
            print(f"{dataset}: scipy table {s_seconds:.2f} s (CPU {s_cpu:.2f} s, load {s_load[0]:.1f} -> "
                  f"{s_load[1]:.1f}); identical rows {record['identical_rows']:.4f}, mean Jaccard "
                  f"{record['mean_jaccard']:.4f}, max |score diff| {record['max_abs_score_diff']:.2e}, untied "
                  f"differences {record['untied_differences']}", flush=True)
        elif scipy_table is not None:
            print(f"{dataset}: scipy table {s_seconds:.2f} s (CPU {s_cpu:.2f} s)", flush=True)
        others = [(b, None) for b in backends if b not in ("device", "push")]
        if "push" in backends:
            others += [("push", float(e)) for e in (args.push_eps or str(config.ppr_eps)).split(",")]
        if others and scipy_table is None:
            # the exact table (untimed): the device table when it was computed (the same power iteration, equal
            # to scipy's up to swaps of tied candidates), else scipy's
            scipy_table = device if device is not None else table("scipy", progress=False)
        if device is not None and scipy_table is not None:
            record["overlap_at_k"] = overlap_at_k(device, scipy_table, PAD)
            print(f"{dataset}: device overlap@k with the exact table {record['overlap_at_k']:.4f}", flush=True)
        record["backends"] = {}
        for backend, eps in others:
            name = backend if eps is None else f"push(eps={eps:g})"
            extra = {} if eps is None else {"eps": eps}
            got, b_seconds, b_cpu, b_load = timed(lambda: table(backend, **extra))
            entry = dict(seconds=b_seconds, cpu_seconds=b_cpu, load_before=b_load[0], load_after=b_load[1],
                         overlap_at_k=overlap_at_k(got, scipy_table, PAD), fill=float(np.mean(got != PAD)))
            record["backends"][name] = entry
            print(f"{dataset}: {name} table {b_seconds:.2f} s (CPU {b_cpu:.2f} s); overlap@k with the exact table "
                  f"{entry['overlap_at_k']:.4f}, fill {entry['fill']:.4f}", flush=True)
        results[dataset] = record

    if any("seconds" in r for r in results.values()):
        print("\n| dataset | users | items | train edges | device s (CPU s) | scipy s (CPU s) | identical rows | "
              "mean Jaccard | max abs score diff | load |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for dataset, r in results.items():
        if "seconds" not in r:
            continue  # no device table
        s = r.get("scipy")
        scipy_cell = f"{s['seconds']:.1f} ({s['cpu_seconds']:.1f})" if s else "–"
        extra = (f"{r['identical_rows']:.4f} | {r['mean_jaccard']:.4f} | {r['max_abs_score_diff']:.1e}" if s
                 else "– | – | –")
        timed_users = f"{r['n_users']:,}" + (f" ({r['sample_users']:,} timed)" if r["sample_users"] else "")
        print(f"| {dataset} | {timed_users} | {r['n_items']:,} | {r['n_train']:,} | {r['seconds']:.1f} "
              f"({r['cpu_seconds']:.1f}) | {scipy_cell} | {extra} | {r['load_before']:.1f} |")
    if any(r["backends"] for r in results.values()):
        print("\n| dataset | users timed | backend | s (CPU s) | overlap@k with the exact table | fill | load |")
        print("|---|---|---|---|---|---|---|")
        for dataset, r in results.items():
            timed_users = r["sample_users"] or r["n_users"]
            for name, b in r["backends"].items():
                print(f"| {dataset} | {timed_users:,} | {name} | {b['seconds']:.2f} ({b['cpu_seconds']:.2f}) | "
                      f"{b['overlap_at_k']:.4f} | {b['fill']:.4f} | {b['load_before']:.1f} |")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
