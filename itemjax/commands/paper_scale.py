"""ITEM vs BPR at equal wall-time budgets on a paper-scale dataset: tune, then compare.

    itemjax paper-scale --dataset yelp2018 --tune-budget 300 --budget 1500 --out runs/paper-yelp2018

Three steps, each a normal command whose runs are reused when finished, so an interrupted
study continues where it stopped:

1. **Tune** each loss with the same number of variants (:data:`VARIANTS`; BPR's include
   batch sizes up to 16384 with their learning rates, since one BPR step costs one
   full-graph propagation whatever its batch) at the short budget ``--tune-budget``
   (``itemjax sweep``, one variant at a time, into ``<out>/tune-<loss>/``).
2. **Select** each loss's variant by its best VALIDATION NDCG@20 (never test).
3. **Compare** the selected variants at the full ``--budget`` with ``--refit``
   (``itemjax compare --time-budget``, into ``<out>/final/``).

Rerun with a longer ``--tune-budget``, the tuning runs that stopped at the shorter one continue to
the longer one (``itemjax.train.run.extendable``; those whose cosine learning rate spans the budget
must be removed first, and are named).

``<out>/paper_scale.md`` and ``paper_scale.json`` gather the tuning tables, the selected
options, the comparison (carve-out and refit test metrics, steps, time to reach the other
loss's best validation NDCG@20 and the load average) and the published rows of
:data:`PUBLISHED` beside ours, never mixed in. Run it on a quiet machine and nothing else
beside it: every run is timed.
"""

from __future__ import annotations

import json
import pathlib
import sys

from itemjax.cli import RERUN, ArgumentParser, run_main
from itemjax.runio import best_validation, options_slug, write_json_atomic

#: how an interrupted command continues (printed on Ctrl-C)
RESUME = RERUN

#: the variants each loss is tuned over, on top of its defaults (the same count per loss, each grid
#: reaching lr 1e-2, both schedules (the defaults' plateau rule and a cosine over the run's budget) and a
#: tenfold weaker regulariser: BPR's --l2 1e-4 is He et al.'s yelp2018 value, ITEM's is its decoupled
#: --weight-decay; BPR's large batches because one BPR step costs one full-graph propagation whatever its batch),
#: then ITEM's per-user temperature (softer ranks for light users, docs/tuning.md) and BPR's lr 2e-2 at its batch.
#: New variants go at the end: a sweep names its runs by position, so an extended grid reuses the finished ones.
VARIANTS = {
    "bpr": ("", "--batch-size 16384 --lr 1e-2", "--batch-size 16384 --lr 1e-2 --lr-schedule cosine",
            "--batch-size 16384 --lr 1e-2 --l2 1e-4", "--batch-size 16384 --lr 2e-2"),
    "item": ("", "--lr 1e-2", "--lr 1e-2 --lr-schedule cosine", "--lr 1e-2 --weight-decay 0.01", "--tau-by-positives 1"),
}

#: published rows for the same split and model (quoted, never mixed into ours)
PUBLISHED = {
    "yelp2018": [{"method": "LightGCN + BPR, converged (He et al., SIGIR 2020, Table 3)",
                  "recall@20": 0.0649, "ndcg@20": 0.0530}],
}


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="itemjax paper-scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="yelp2018")
    p.add_argument("--model", default="lightgcn")
    p.add_argument("--losses", default="bpr,item", help="comma-separated losses with VARIANTS entries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tune-budget", type=float, default=300.0, metavar="SECONDS",
                   help="wall-time budget of each tuning variant (default 300)")
    p.add_argument("--budget", type=float, default=5400.0, metavar="SECONDS",
                   help="wall-time budget of each final run, before its refit (default 5400)")
    p.add_argument("--common-args", default="--eval-every 1 --patience 1000000",
                   help="train.py options for every run (default: evaluate every epoch, no early stopping: the "
                        "budget ends each run, so a loss that plateaus early is not cut off before its budget)")
    p.add_argument("--out", required=True, help="output folder")
    return p


def select(sweep_dir: pathlib.Path, variants) -> tuple[str, list]:
    """The variant with the best validation NDCG@20 in a finished sweep, and every variant's row."""
    rows = []
    for n, v in enumerate(variants):
        best = best_validation(sweep_dir / f"{n:02d}-{options_slug(v)}", "ndcg@20")
        rows.append({"variant": v, "best_valid_ndcg@20": best.get("ndcg@20"), "epoch": best.get("epoch"),
                     "elapsed": best.get("elapsed")})
    scored = [r for r in rows if r["best_valid_ndcg@20"] is not None]
    if not scored:
        raise RuntimeError(f"no variant in {sweep_dir} reached a validation evaluation")
    return max(scored, key=lambda r: r["best_valid_ndcg@20"])["variant"], rows


def main(argv=None) -> int:
    from itemjax.commands import compare, sweep

    args = parser().parse_args(argv)
    out = pathlib.Path(args.out)
    losses = args.losses.split(",")
    base = f"--dataset {args.dataset} --model {args.model} --seed {args.seed} --epochs 1000000 " \
           f"--time-budget {args.tune_budget:g} {args.common_args}"
    chosen, tuning = {}, {}
    for loss in losses:
        variants = VARIANTS[loss]
        sweep.main(["--base", f"{base} --loss {loss}", "--out", str(out / f"tune-{loss}")]
                   + [f"--variant={v}" for v in variants])
        chosen[loss], tuning[loss] = select(out / f"tune-{loss}", variants)
        print(f"[paper-scale] {loss}: selected {chosen[loss] or '(defaults)'} on validation", file=sys.stderr)
    final = out / "final"
    compare.main(["--dataset", args.dataset, "--model", args.model, "--losses", ",".join(losses),
                  "--seeds", str(args.seed), "--time-budget", f"{args.budget:g}",
                  "--common-args", f"{args.common_args} --refit", "--out", str(final), "--no-progress"]
                 + [a for loss in losses for a in (f"--args-{loss}", chosen[loss])])
    comparison = json.loads((final / "comparison.json").read_text())
    result = {"dataset": args.dataset, "model": args.model, "seed": args.seed, "tune_budget": args.tune_budget,
              "budget": args.budget, "common_args": args.common_args, "tuning": tuning, "selected": chosen,
              "comparison": comparison, "published": PUBLISHED.get(args.dataset, [])}
    write_json_atomic(out / "paper_scale.json", result)
    text = markdown(result, (final / "comparison.md").read_text())
    (out / "paper_scale.md").write_text(text)
    print(text)
    return 0


def markdown(result: dict, comparison_md: str) -> str:
    lines = [f"## {result['dataset']}, {result['model']}: ITEM vs BPR at equal budgets", "",
             f"Tuning: {len(next(iter(VARIANTS.values())))} variants per loss, {result['tune_budget']:g} s each, "
             f"selected on validation NDCG@20. Final: {result['budget']:g} s each (training + validation), "
             f"then a refit on train + validation for the selected steps; seed {result['seed']}; "
             f"common options `{result['common_args']}`.", ""]
    for loss, rows in result["tuning"].items():
        lines += [f"| {loss} variant | best valid NDCG@20 | at s | selected |", "|---|---|---|---|"]
        for r in rows:
            v = "–" if r["best_valid_ndcg@20"] is None else f"{r['best_valid_ndcg@20']:.4f}"
            t = "–" if r["elapsed"] is None else f"{r['elapsed']:.0f}"
            lines.append(f"| `{r['variant'] or '(defaults)'}` | {v} | {t} | "
                         f"{'yes' if r['variant'] == result['selected'][loss] else ''} |")
        lines.append("")
    lines += [comparison_md, ""]
    if result["published"]:
        lines += ["Published (quoted for reference, trained to convergence and selected on test; compare with "
                  "the refit columns only):", "", "| source | Recall@20 | NDCG@20 |", "|---|---|---|"]
        lines += [f"| {p['method']} | {p['recall@20']:.4f} | {p['ndcg@20']:.4f} |" for p in result["published"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(run_main(main, resume=RESUME))
