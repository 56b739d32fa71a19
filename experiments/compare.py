#!/usr/bin/env python
"""Compare BPR and ITEM (or any losses) on one dataset and model over several seeds.

    python experiments/compare.py --dataset ml-100k --model lightgcn --seeds 0,1,2
    python experiments/compare.py --dataset gowalla --seeds 0 --epochs 100 \\
        --args-bpr "--eval-every 5" --args-item "--eval-every 5 --tau 0.1"

Each (loss, seed) is a normal training run (``experiments/train.py`` options, the same epoch
budget and early stopping for every loss, epochs selected on validation) written to
``<out>/<loss>-seed<seed>/``. The comparison writes ``<out>/comparison.md`` and
``comparison.json`` (mean ± std of test Recall@20 / NDCG@20 per loss, relative gain over the
first loss, train seconds, epochs to the best validation NDCG@20, and the wall time each loss
needs to reach the first loss's best validation NDCG@20) and ``<out>/learning_curves.png``
(validation NDCG@20 against training wall time, one line per run).
"""

from __future__ import annotations

import json
import pathlib
import shlex
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from train import config_from_args, parser as train_parser  # noqa: E402

from itemjax.cli import ArgumentParser, int_list, run_main  # noqa: E402
from itemjax.errors import ConfigError  # noqa: E402
from itemjax.runio import best_validation, read_jsonl, write_json_atomic  # noqa: E402

METRICS = ("recall@20", "ndcg@20")


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="compare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--model", default="lightgcn")
    p.add_argument("--losses", default="bpr,item", help="comma-separated losses; gains are relative to the first")
    p.add_argument("--seeds", type=int_list, default=(0, 1, 2))
    p.add_argument("--epochs", type=int, default=1000, help="the same epoch budget for every loss")
    p.add_argument("--common-args", default="", help="train.py options given to every run")
    for loss in ("bpr", "bce", "item"):
        p.add_argument(f"--args-{loss}", default="", help=f"extra train.py options for --loss {loss}")
    p.add_argument("--out", default=None, help="output folder (default runs/compare-<dataset>-<model>)")
    p.add_argument("--no-progress", action="store_true")
    return p


def run_configs(args) -> list:
    """One resolved TrainConfig per (loss, seed); every option checked before any training."""
    out = pathlib.Path(args.out or f"runs/compare-{pathlib.Path(args.dataset).stem}-{args.model}")
    configs = []
    for loss in args.losses.split(","):
        if loss not in ("bpr", "bce", "item"):
            raise ConfigError(f"unknown loss {loss!r} in --losses; choose from bpr, bce, item")
        extra = shlex.split(args.common_args) + shlex.split(getattr(args, f"args_{loss}"))
        for seed in args.seeds:
            argv = ["--dataset", args.dataset, "--model", args.model, "--loss", loss, "--epochs", str(args.epochs),
                    "--seed", str(seed), "--out", str(out / f"{loss}-seed{seed}")] + extra
            if args.no_progress:
                argv.append("--no-progress")
            try:
                ns = train_parser().parse_args(argv)
            except SystemExit:
                raise ConfigError(f"bad train.py options for {loss}: {' '.join(extra)}") from None
            configs.append(config_from_args(ns))
    return out, configs


def time_to_reach(records: list, target: float, metric: str = "ndcg@20"):
    """Training wall time (s) of the first validation record with ``metric >= target``, else None."""
    for r in records:
        if r.get("split") == "valid" and r[metric] >= target:
            return r["train_seconds"]
    return None


def summarise(out: pathlib.Path, configs: list) -> dict:
    """Aggregate the finished runs into the comparison table (dict) and markdown text."""
    runs = {}
    for c in configs:
        summary = json.loads((pathlib.Path(c.out) / "summary.json").read_text())
        records = read_jsonl(pathlib.Path(c.out) / "metrics.jsonl")
        best = best_validation(c.out, "ndcg@20")  # {} before the first evaluation
        runs.setdefault(c.loss, []).append({
            "seed": c.seed, "out": c.out, **{m: summary[m] for m in METRICS},
            "train_seconds": summary["train_seconds"], "selected_epoch": summary["selected_epoch"],
            "best_valid_ndcg@20": best["ndcg@20"] if best else None,
            "seconds_to_best": best["train_seconds"] if best else None, "records": records,
        })
    losses = list(runs)
    base = losses[0]
    table = {}
    for loss in losses:
        rows = runs[loss]
        entry = {}
        for m in METRICS + ("train_seconds", "selected_epoch", "seconds_to_best"):
            vals = np.array([r[m] for r in rows if r[m] is not None], float)
            entry[m] = {"mean": float(vals.mean()) if len(vals) else None,
                        "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
        # wall time to reach the baseline's best validation NDCG@20, seed by seed
        reach = []
        for r in rows:
            twin = next((b for b in runs[base] if b["seed"] == r["seed"]), None)
            if twin and twin["best_valid_ndcg@20"] is not None:
                reach.append(time_to_reach(r["records"], twin["best_valid_ndcg@20"]))
        entry[f"seconds_to_{base}_best_valid"] = reach
        table[loss] = entry
    for loss in losses:
        for m in METRICS:
            b = table[base][m]["mean"]
            table[loss][m]["gain_vs_" + base] = (table[loss][m]["mean"] - b) / b if b else None
    return {"runs": {k: [{kk: vv for kk, vv in r.items() if kk != "records"} for r in v] for k, v in runs.items()},
            "table": table, "baseline": base}


def markdown(result: dict, title: str) -> str:
    base = result["baseline"]
    lines = [f"### {title}", "",
             f"| loss | Recall@20 | NDCG@20 | gain R@20 | gain N@20 | train s | epoch of best valid | "
             f"s to best valid | s to reach {base}'s best valid NDCG@20 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for loss, e in result["table"].items():
        reach = e[f"seconds_to_{base}_best_valid"]
        reach_txt = ", ".join("never" if t is None else f"{t:.0f}" for t in reach)
        fmt = lambda m, d=4: f"{e[m]['mean']:.{d}f} ± {e[m]['std']:.{d}f}"  # noqa: E731
        lines.append(
            f"| {loss} | {fmt('recall@20')} | {fmt('ndcg@20')} | {e['recall@20']['gain_vs_' + base]:+.1%} | "
            f"{e['ndcg@20']['gain_vs_' + base]:+.1%} | {fmt('train_seconds', 0)} | {fmt('selected_epoch', 0)} | "
            f"{fmt('seconds_to_best', 0)} | {reach_txt} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, configs: list, path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = dict(zip(result["table"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for c in configs:
        records = [r for r in read_jsonl(pathlib.Path(c.out) / "metrics.jsonl") if r.get("split") == "valid"]
        if records:
            ax.plot([r["train_seconds"] for r in records], [r["ndcg@20"] for r in records],
                    color=colors[c.loss], alpha=0.8, label=f"{c.loss} seed {c.seed}")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("validation NDCG@20")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    out, configs = run_configs(args)
    from itemjax.run import fit

    for c in configs:
        if (pathlib.Path(c.out) / "summary.json").exists():
            print(f"[compare] {c.out} already finished; reusing it", file=sys.stderr)
            continue
        print(f"[compare] training {c.loss} seed {c.seed} -> {c.out}", file=sys.stderr)
        fit(c)
    result = summarise(out, configs)
    title = f"{args.dataset}, {args.model}, seeds {','.join(map(str, args.seeds))}"
    text = markdown(result, title)
    (out / "comparison.md").write_text(text)
    write_json_atomic(out / "comparison.json", result)
    plot(result, configs, out / "learning_curves.png", title)
    print(text)
    print(f"saved {out / 'comparison.md'}, comparison.json and learning_curves.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
