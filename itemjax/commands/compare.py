"""Compare BPR and ITEM (or any losses) on one dataset and model over several seeds.

    python experiments/compare.py --dataset ml-100k --model lightgcn --seeds 0,1,2
    python experiments/compare.py --dataset gowalla --seeds 0 --epochs 100 \\
        --args-bpr "--eval-every 5" --args-item "--eval-every 5 --tau 0.1"

    python experiments/compare.py --dataset yelp2018 --seeds 0 --time-budget 5400 --common-args "--refit" \
        --args-bpr "--batch-size 8192 --lr 5e-3"

Each (loss, seed) is a normal training run (``experiments/train.py`` options, the same epoch
budget and early stopping for every loss, epochs selected on validation) written to
``<out>/<loss>-seed<seed>/``. ``--time-budget S`` gives every run the same wall-time budget
(training steps plus validation; train.py's ``--time-budget``) instead of an epoch budget; run
it on a quiet machine, one run at a time (as this script does), and read the load average
recorded beside each result. The comparison writes ``<out>/comparison.md`` and
``comparison.json`` (mean ± std of test Recall@20 / NDCG@20 per loss, relative gain over the
first loss, the refit model's test metrics when the runs used ``--refit``, train seconds,
epoch of the best validation NDCG@20 and the time to it, the wall time each loss needs to
reach every other loss's best validation NDCG@20, and that time as a fraction of the other
loss's time to its own best) and ``<out>/learning_curves.png`` (validation NDCG@20 against
wall time, one line per run). Each loss is also paired with the first, seed by seed, on the
per-user test metrics the runs write (``per_user_test.parquet``): the mean per-user difference
with a bootstrap 95% interval and the Wilcoxon signed-rank p-value (:func:`paired_test`), over all
users and within each third of them by their number of test items (:func:`paired_by_activity`).

    itemjax compare --runs runs/converged-yelp2018-bpr,runs/converged-yelp2018-item --out runs/converged-yelp2018

``--runs`` compares finished run folders that were trained apart (each its own ``train.py``
command, e.g. runs to convergence): the same table, pairing and figure, nothing trained; each
folder's loss and seed come from its ``config.json``, and gains are relative to the first.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shlex
import sys

import numpy as np

from itemjax.commands.train import parser as train_parser
from itemjax.cli import RERUN, ArgumentParser, config_from_args, int_list, run_main
from itemjax.config import LOSS_NAMES
from itemjax.errors import ConfigError
from itemjax.runio import best_validation, read_jsonl, read_table, write_json_atomic

#: how an interrupted command continues (printed on Ctrl-C)
RESUME = RERUN

METRICS = ("recall@20", "ndcg@20")


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="itemjax compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--model", default="lightgcn")
    p.add_argument("--losses", default="bpr,item", help="comma-separated losses; gains are relative to the first")
    p.add_argument("--seeds", type=int_list, default=(0, 1, 2))
    p.add_argument("--epochs", type=int, default=None,
                   help="the same epoch budget for every loss (default 1000; 1000000 with --time-budget)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="the same wall-time budget (training + validation) for every run")
    p.add_argument("--common-args", default="", help="train.py options given to every run")
    for loss in LOSS_NAMES:
        p.add_argument(f"--args-{loss}", default="", help=f"extra train.py options for --loss {loss}")
    p.add_argument("--runs", default=None, metavar="DIR,DIR,...",
                   help="compare these finished run folders instead of training (loss and seed from their "
                        "config.json; gains relative to the first); needs --out")
    p.add_argument("--curve-axis", choices=("elapsed", "epoch"), default="elapsed",
                   help="x axis of learning_curves.png: wall time (default) or epoch (for runs whose wall times "
                        "are not comparable, e.g. paused or beside other jobs)")
    p.add_argument("--out", default=None, help="output folder (default runs/compare-<dataset>-<model>)")
    p.add_argument("--no-progress", action="store_true")
    return p


def run_configs(args) -> list:
    """One resolved TrainConfig per (loss, seed); every option checked before any training."""
    out = pathlib.Path(args.out or f"runs/compare-{pathlib.Path(args.dataset).stem}-{args.model}")
    configs = []
    for loss in args.losses.split(","):
        if loss not in LOSS_NAMES:
            raise ConfigError(f"unknown loss {loss!r} in --losses; choose from {', '.join(LOSS_NAMES)}")
        extra = shlex.split(args.common_args) + shlex.split(getattr(args, f"args_{loss}"))
        epochs = args.epochs or (1_000_000 if args.time_budget else 1000)
        budget = ["--time-budget", str(args.time_budget)] if args.time_budget else []
        for seed in args.seeds:
            argv = ["--dataset", args.dataset, "--model", args.model, "--loss", loss, "--epochs", str(epochs),
                    "--seed", str(seed), "--out", str(out / f"{loss}-seed{seed}")] + budget + extra
            if args.no_progress:
                argv.append("--no-progress")
            try:
                ns = train_parser().parse_args(argv)
            except SystemExit:
                raise ConfigError(f"bad train.py options for {loss}: {' '.join(extra)}") from None
            configs.append(config_from_args(ns))
    return out, configs


def finished_run_configs(dirs: list) -> list:
    """The TrainConfig of each finished run folder in ``dirs`` (``out`` set to the folder as given);
    :class:`ConfigError` naming the folder when one is not a run, unfinished, or repeats a (loss, seed)."""
    from itemjax.config import TrainConfig

    configs, seen = [], {}
    for d in map(pathlib.Path, dirs):
        if not (d / "config.json").exists():
            raise ConfigError(f"--runs {d}: not a run folder (no config.json); give folders written by train.py --out")
        if not (d / "summary.json").exists():
            raise ConfigError(f"--runs {d}: the run has not finished (no summary.json); continue it with "
                              f"itemjax train <its options> --resume --out {d}")
        c = TrainConfig.from_dict(json.loads((d / "config.json").read_text())["config"])
        c = dataclasses.replace(c, out=str(d))
        if (c.loss, c.seed) in seen:
            raise ConfigError(f"--runs {d} and {seen[c.loss, c.seed]} are both {c.loss} seed {c.seed}; "
                              "compare one run per loss and seed")
        seen[c.loss, c.seed] = d
        configs.append(c)
    return configs


def clock_of(records: list) -> str:
    """The time axis of a run's records: ``elapsed`` (training + validation, what a time budget
    counts) when recorded, else ``train_seconds`` (runs written before it existed)."""
    return "elapsed" if records and all("elapsed" in r for r in records) else "train_seconds"


def time_to_reach(records: list, target: float, metric: str = "ndcg@20"):
    """Wall time (s, :func:`clock_of`) of the first validation record with ``metric >= target``, else None."""
    clock = clock_of(records)
    for r in records:
        if r.get("split") == "valid" and r[metric] >= target:
            return r[clock]
    return None


def paired_test(a, b, *, n_resamples: int = 10_000, seed: int = 0) -> dict:
    """Paired comparison of per-user values ``b - a`` (same users, same order).

    Returns ``{"mean_diff", "ci95": [lo, hi], "p_wilcoxon", "n_users"}``: the mean difference,
    its percentile-bootstrap 95% interval (``scipy.stats.bootstrap``, ``n_resamples``, seeded),
    and the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``, zero differences
    dropped; None when every difference is 0).
    """
    from scipy import stats

    diff = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    if np.all(diff == diff[0]):  # every resample has the same mean
        low = high = float(diff[0])
    else:
        ci = stats.bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=n_resamples, method="percentile",
                             random_state=np.random.default_rng(seed)).confidence_interval
        low, high = float(ci.low), float(ci.high)
    p = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else None
    return {"mean_diff": float(diff.mean()), "ci95": [low, high], "p_wilcoxon": p, "n_users": int(diff.size)}


def _per_user(run):
    """A run's per-user test table (``per_user_test.parquet`` or ``.csv``), or None."""
    path = pathlib.Path(run) / "per_user_test"
    if path.with_suffix(".parquet").exists() or path.with_suffix(".csv").exists():
        return read_table(path)
    return None


def _paired_tables(runs: dict, base: str):
    """Yield ``(loss, seed, base_table, loss_table)`` for every loss but ``base`` and every seed whose two
    runs both wrote per-user test tables over the same users, both tables in the same user order."""
    for loss, rows in runs.items():
        if loss == base:
            continue
        for r in rows:
            twin = next((b for b in runs[base] if b["seed"] == r["seed"]), None)
            ours = _per_user(r["out"])
            theirs = _per_user(twin["out"]) if twin else None
            if ours is None or theirs is None:
                continue
            order, twin_order = np.argsort(ours["user"]), np.argsort(theirs["user"])
            if not np.array_equal(ours["user"][order], theirs["user"][twin_order]):
                continue  # different users: not a paired comparison
            yield (loss, r["seed"], {k: np.asarray(v)[twin_order] for k, v in theirs.items()},
                   {k: np.asarray(v)[order] for k, v in ours.items()})


def paired_tests(runs: dict, base: str) -> dict:
    """``{loss: {metric: [per-seed paired_test of loss vs base]}}`` for every loss but ``base``,
    on the runs' per-user test tables (users matched by row; seeds without both tables skipped)."""
    result = {loss: {m: [] for m in METRICS} for loss in runs if loss != base}
    for loss, seed, theirs, ours in _paired_tables(runs, base):
        for m in METRICS:
            result[loss][m].append({"seed": seed, **paired_test(theirs[m], ours[m])})
    return result


def activity_groups(n_relevant) -> list[tuple[str, np.ndarray]]:
    """``[(label, mask)]``: the users split into thirds by their number of test items ``n_relevant``
    ([n_users] ints), at its 1/3 and 2/3 quantiles (ties keep a count in one group, so groups can be
    unequal; empty ones are dropped). Labels read ``"4-7 test items"``."""
    n = np.asarray(n_relevant)
    edges = np.unique(np.ceil(np.quantile(n, [1 / 3, 2 / 3])).astype(int))
    group = np.digitize(n, edges)  # group g holds edges[g-1] <= n < edges[g]
    out = []
    for g in range(len(edges) + 1):
        mask = group == g
        if mask.any():
            out.append((f"{n[mask].min()}-{n[mask].max()} test items", mask))
    return out


def paired_by_activity(runs: dict, base: str) -> dict:
    """:func:`paired_tests` within each user-activity third (:func:`activity_groups` of the base run's
    ``n_relevant``, per seed): ``{"<loss>, <label>": {metric: [per-seed paired_test]}}``. Which users a
    loss gains on: e.g. a level Recall@20 can be a loss on the lightest users offset by the others."""
    result = {}
    for loss, seed, theirs, ours in _paired_tables(runs, base):
        if "n_relevant" not in theirs:  # a table written before the column existed
            continue
        for label, mask in activity_groups(theirs["n_relevant"]):
            per_metric = result.setdefault(f"{loss}, {label}", {m: [] for m in METRICS})
            for m in METRICS:
                per_metric[m].append({"seed": seed, **paired_test(theirs[m][mask], ours[m][mask])})
    return result


def summarise(out: pathlib.Path, configs: list) -> dict:
    """Aggregate the finished runs into the comparison table (dict) and markdown text."""
    runs = {}
    for c in configs:
        summary = json.loads((pathlib.Path(c.out) / "summary.json").read_text())
        records = read_jsonl(pathlib.Path(c.out) / "metrics.jsonl")
        best = best_validation(c.out, "ndcg@20")  # {} before the first evaluation
        runs.setdefault(c.loss, []).append({
            "seed": c.seed, "out": c.out, **{m: summary[m] for m in METRICS},
            **{f"refit/{m}": summary.get(f"refit/{m}") for m in METRICS},
            "train_seconds": summary["train_seconds"], "selected_epoch": summary["selected_epoch"],
            "steps": summary.get("steps"), "stop_reason": summary.get("stop_reason"),
            "load_average": (summary.get("load_average") or {}).get("mean"),
            "best_valid_ndcg@20": best["ndcg@20"] if best else None,
            "seconds_to_best": best[clock_of(records)] if best else None, "records": records,
        })
    losses = list(runs)
    base = losses[0]
    table = {}
    for loss in losses:
        rows = runs[loss]
        entry = {}
        for m in METRICS + tuple(f"refit/{m}" for m in METRICS) + (
                "train_seconds", "selected_epoch", "seconds_to_best", "steps", "load_average"):
            vals = np.array([r[m] for r in rows if r[m] is not None], float)
            entry[m] = {"mean": float(vals.mean()) if len(vals) else None,
                        "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
        # wall time to reach each other loss's best validation NDCG@20, seed by seed, and that time
        # as a fraction of the other loss's own time to its best
        for other in losses:
            reach, fraction = [], []
            for r in rows:
                twin = next((b for b in runs[other] if b["seed"] == r["seed"]), None)
                if twin and twin["best_valid_ndcg@20"] is not None:
                    t = time_to_reach(r["records"], twin["best_valid_ndcg@20"])
                    reach.append(t)
                    fraction.append(t / twin["seconds_to_best"] if t is not None and twin["seconds_to_best"] else None)
            entry[f"seconds_to_{other}_best_valid"] = reach
            entry[f"fraction_of_{other}_time_to_its_best"] = fraction
        table[loss] = entry
    for loss in losses:
        for m in METRICS + tuple(f"refit/{m}" for m in METRICS):
            b = table[base][m]["mean"]
            v = table[loss][m]["mean"]
            table[loss][m]["gain_vs_" + base] = (v - b) / b if b and v is not None else None
    return {"runs": {k: [{kk: vv for kk, vv in r.items() if kk != "records"} for r in v] for k, v in runs.items()},
            "table": table, "baseline": base, "paired": paired_tests(runs, base),
            "paired_by_activity": paired_by_activity(runs, base)}


def markdown(result: dict, title: str) -> str:
    base = result["baseline"]
    losses = list(result["table"])
    refit = any(e["refit/ndcg@20"]["mean"] is not None for e in result["table"].values())
    other = {loss: next((o for o in losses if o != loss), loss) for loss in losses}  # the loss each one is timed against
    fmt = lambda e, m, d=4: "–" if e[m]["mean"] is None else f"{e[m]['mean']:.{d}f} ± {e[m]['std']:.{d}f}"  # noqa: E731
    gain = lambda e, m: "–" if e[m]["gain_vs_" + base] is None else f"{e[m]['gain_vs_' + base]:+.1%}"  # noqa: E731
    times = lambda ts, d=0: ", ".join("never" if t is None else f"{t:.{d}f}" for t in ts)  # noqa: E731
    head = "| loss | Recall@20 | NDCG@20 | gain R@20 | gain N@20 |"
    rule = "|---|---|---|---|---|"
    if refit:
        head += " refit Recall@20 | refit NDCG@20 | refit gain R@20 | refit gain N@20 |"
        rule += "---|---|---|---|"
    head += (" train s | steps | epoch of best valid | s to best valid | s to reach the other's best valid NDCG@20 "
             "(fraction of its time to it) | load avg |")
    rule += "---|---|---|---|---|---|"
    lines = [f"### {title}", "", head, rule]
    for loss, e in result["table"].items():
        cells = [loss, fmt(e, "recall@20"), fmt(e, "ndcg@20"), gain(e, "recall@20"), gain(e, "ndcg@20")]
        if refit:
            cells += [fmt(e, "refit/recall@20"), fmt(e, "refit/ndcg@20"), gain(e, "refit/recall@20"),
                      gain(e, "refit/ndcg@20")]
        o = other[loss]
        cells += [fmt(e, "train_seconds", 0), fmt(e, "steps", 0), fmt(e, "selected_epoch", 0),
                  fmt(e, "seconds_to_best", 0),
                  f"{o}: {times(e[f'seconds_to_{o}_best_valid'])} ({times(e[f'fraction_of_{o}_time_to_its_best'], 2)})",
                  fmt(e, "load_average", 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += paired_markdown(result.get("paired") or {}, f"against {base}", "loss")
    lines += paired_markdown(result.get("paired_by_activity") or {},
                             f"against {base} within each third of the users by their number of test items", "loss, users")
    return "\n".join(lines) + "\n"


def paired_markdown(paired: dict, against: str, label: str) -> list[str]:
    """Markdown lines of :func:`paired_tests`' result ``{name: {metric: [per-seed tests]}}``, one row
    per name and seed (none when no seed was paired); ``against`` completes "Paired per-user test
    differences ...", ``label`` heads the first column."""
    if not any(tests for per_metric in paired.values() for tests in per_metric.values()):
        return []
    lines = ["", f"Paired per-user test differences {against} (same users, per seed): mean difference "
             "[bootstrap 95% interval], Wilcoxon signed-rank p-value.", "",
             f"| {label} | seed | users | " + " | ".join(f"Δ {m} [95% CI] | p" for m in METRICS) + " |",
             "|---|---|---|" + "---|---|" * len(METRICS)]
    for name, per_metric in paired.items():
        for i, first in enumerate(per_metric[METRICS[0]]):
            cells = [name, str(first["seed"]), str(first["n_users"])]
            for m in METRICS:
                t = per_metric[m][i]
                p = "–" if t["p_wilcoxon"] is None else f"{t['p_wilcoxon']:.2g}"
                cells += [f"{t['mean_diff']:+.4f} [{t['ci95'][0]:+.4f}, {t['ci95'][1]:+.4f}]", p]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(result: dict, configs: list, path: pathlib.Path, title: str, budget=None, axis: str = "elapsed") -> None:
    """Validation NDCG@20 of every run against wall time (``axis="elapsed"``, :func:`clock_of`) or epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = dict(zip(result["table"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    clock = "elapsed"
    for c in configs:
        records = [r for r in read_jsonl(pathlib.Path(c.out) / "metrics.jsonl") if r.get("split") == "valid"]
        if records:
            clock = "epoch" if axis == "epoch" else clock_of(records)
            ax.plot([r[clock] for r in records], [r["ndcg@20"] for r in records],
                    color=colors[c.loss], alpha=0.8, label=f"{c.loss} seed {c.seed}")
    if budget and clock != "epoch":
        ax.axvline(budget, color="grey", linestyle="--", linewidth=1, label=f"budget {budget:g} s")
    ax.set_xlabel({"elapsed": "wall time, training + validation (s)", "epoch": "epoch"}.get(clock, "training wall time (s)"))
    ax.set_ylabel("validation NDCG@20")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.runs:
        if not args.out:
            raise ConfigError("--runs needs --out, the folder for comparison.md, comparison.json and the figure")
        configs = finished_run_configs([d for d in args.runs.split(",") if d])
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        args.dataset, args.model = configs[0].dataset, configs[0].model
        args.seeds = sorted({c.seed for c in configs})
    else:
        out, configs = run_configs(args)
    if not args.runs:  # with --runs the folders are the runs, all finished
        from itemjax.train.run import reuse_or_fit

        for c in configs:
            reuse_or_fit(c, f"[compare] {c.loss} seed {c.seed}")  # a finished run only if its options match
    result = summarise(out, configs)
    title = f"{args.dataset}, {args.model}, seeds {','.join(map(str, args.seeds))}"
    if args.time_budget:
        title += f", time budget {args.time_budget:g} s each"
    if args.runs:
        title += ", runs trained apart"
    text = markdown(result, title)
    (out / "comparison.md").write_text(text)
    write_json_atomic(out / "comparison.json", result)
    # the figure names a dataset file by its name alone (a full path overflows the title)
    short_title = title.replace(args.dataset, pathlib.Path(args.dataset).name, 1)
    plot(result, configs, out / "learning_curves.png", short_title, budget=args.time_budget, axis=args.curve_axis)
    print(text)
    print(f"saved {out / 'comparison.md'}, comparison.json and learning_curves.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, resume=RESUME))
