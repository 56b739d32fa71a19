"""The training methods side by side: each tuned with the same budget, then over several seeds.

    itemjax methods --dataset ml-100k --seeds 0,1,2 --out runs/methods-ml100k
    itemjax methods --methods bpr,item,bpr+mixgcf --common-args "--epochs 300" --out runs/some

Every method of :data:`METHODS` (a loss, optionally with MixGCF negatives or the SGL-ED
auxiliary loss) gets the same tuning budget: its defaults plus the two variants listed beside
it, each trained at the first seed (``itemjax sweep`` into ``<out>/tune-<method>/``), the
variant with the best VALIDATION NDCG@20 kept. The kept variant is then trained at every seed
(the first seed's tuning run is reused) into ``<out>/final/<method>-seed<s>/``. Finished runs
are reused, so an interrupted table continues.

``<out>/methods.md`` (and ``methods.json``): per method, the selected variant, test Recall@20
and NDCG@20 (mean ± std over seeds, gain over the first method), train seconds and epochs; a
popularity row (items ranked by training degree, same splits, same evaluator) as the floor;
and ITEM paired with every other method user by user on each seed's test users (mean difference
of ITEM minus the method, bootstrap 95% interval, Wilcoxon p; as ``itemjax compare``).
"""

from __future__ import annotations

import json
import pathlib
import shlex
import sys

import numpy as np

from itemjax.cli import RERUN, ArgumentParser, int_list, run_main
from itemjax.errors import ConfigError
from itemjax.runio import best_validation, options_slug, write_json_atomic

#: how an interrupted command continues (printed on Ctrl-C)
RESUME = RERUN

#: method -> (train options, the two variants tuned besides the defaults)
METHODS = {
    "bpr": ("--loss bpr", ("--lr 5e-3", "--l2 1e-4")),
    "item": ("--loss item", ("--tau 0.3", "--lr 3e-3")),
    "bce": ("--loss bce", ("--lr 3e-3", "--l2 1e-3")),
    "neuralndcg": ("--loss neuralndcg", ("--neuralndcg-temperature 0.3", "--lr 3e-3")),
    "softmax": ("--loss softmax", ("--softmax-temperature 0.5", "--logq-correction")),
    "bpr+mixgcf": ("--loss bpr --neg-sampler mixgcf", ("--mixgcf-candidates 16", "--lr 5e-3")),
    "bpr+sgl-ed": ("--loss bpr --ssl sgl-ed", ("--ssl-weight 0.02", "--ssl-weight 0.5")),
    "item+sgl-ed": ("--loss item --ssl sgl-ed", ("--ssl-weight 0.02", "--ssl-weight 0.5")),
}
METRICS = ("recall@20", "ndcg@20")
#: the method every other is paired with, user by user, on the same seed's test users
PAIRED_WITH = "item"


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="itemjax methods", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--model", default="lightgcn")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--seeds", type=int_list, default=(0, 1, 2))
    p.add_argument("--common-args", default="--epochs 3000 --patience 15",
                   help="train options for every run (default: --epochs 3000 --patience 15)")
    p.add_argument("--out", required=True)
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: tabulate the finished runs (a method whose tuning runs are not all "
                        "finished is listed as unfinished; a selected variant's unfinished seeds are left out)")
    return p


def variants(method: str) -> list[str]:
    return [""] + list(METHODS[method][1])


def main(argv=None) -> int:
    from itemjax.commands import sweep
    from itemjax.commands.train import parser as train_parser
    from itemjax.cli import config_from_args
    from itemjax.train.run import reuse_or_fit

    args = parser().parse_args(argv)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    out = pathlib.Path(args.out)
    if args.table_only and not out.is_dir():
        raise ConfigError(f"--table-only: {out} does not exist, so there is nothing to tabulate; run the same "
                          "command without --table-only first (or pass the --out of an earlier run)")
    first, rows, unfinished = args.seeds[0], {}, {}
    for method in methods:
        options, _ = METHODS[method]
        base = f"--dataset {args.dataset} --model {args.model} --seed {first} {options} {args.common_args}"
        tune_dir = out / f"tune-{method.replace('+', '_')}"
        tuning_runs = [tune_dir / f"{n:02d}-{options_slug(v)}" for n, v in enumerate(variants(method))]
        if args.table_only and not all((r / "summary.json").exists() for r in tuning_runs):
            unfinished[method] = [{"variant": v, "finished": (r / "summary.json").exists(),
                                   "best_valid_ndcg@20": best_validation(r, "ndcg@20").get("ndcg@20")}
                                  for v, r in zip(variants(method), tuning_runs)]
            continue
        if not args.table_only:  # "=": a variant may be one flag
            sweep.main(["--base", base, "--out", str(tune_dir)] + [f"--variant={v}" for v in variants(method)])
        scored = [(best_validation(r, "ndcg@20").get("ndcg@20", -1.0), n, v)
                  for n, (v, r) in enumerate(zip(variants(method), tuning_runs))]
        best_value, best_n, chosen = max(scored, key=lambda t: (t[0], -t[1]))  # a tie keeps the earlier variant
        runs = []
        for seed in args.seeds:
            if seed == first:
                run = tuning_runs[best_n]
            else:
                run = out / "final" / f"{method.replace('+', '_')}-seed{seed}"
                if args.table_only and not (run / "summary.json").exists():
                    continue
                argv_s = shlex.split(base.replace(f"--seed {first}", f"--seed {seed}")) + shlex.split(chosen) \
                    + ["--out", str(run), "--no-progress"]
                reuse_or_fit(config_from_args(train_parser().parse_args(argv_s)))
            runs.append(json.loads((run / "summary.json").read_text()) | {"run": str(run), "seed": seed})
        rows[method] = {"options": options, "selected": chosen, "best_valid_ndcg@20": best_value,
                        "tuning": [{"variant": v, "best_valid_ndcg@20": s} for s, _, v in scored], "runs": runs}
    result = {"dataset": args.dataset, "model": args.model, "seeds": list(args.seeds),
              "common_args": args.common_args, "methods": rows, "unfinished": unfinished,
              "popularity": popularity(args.dataset, args.seeds, args.common_args),
              "paired": paired_against(rows, PAIRED_WITH)}
    write_json_atomic(out / "methods.json", result)
    text = markdown(result)
    (out / "methods.md").write_text(text)
    print(text)
    return 0


def paired_against(rows: dict, ours: str) -> dict:
    """``{method: {metric: [per-seed paired test of ours minus method]}}`` for every tabulated
    method but ``ours`` (:func:`itemjax.commands.compare.paired_tests`: per-user test metrics of the
    same seed's split, bootstrap interval, Wilcoxon p); ``{}`` when ``ours`` is not in the table."""
    from itemjax.commands.compare import paired_tests

    if ours not in rows:
        return {}

    def runs_of(name):
        return [{"seed": r["seed"], "out": r["run"]} for r in rows[name]["runs"]]

    return {name: paired_tests({ours: runs_of(ours), name: runs_of(name)}, name)[ours] for name in rows if name != ours}


def popularity(dataset: str, seeds, common_args: str) -> dict:
    """Test Recall@20 / NDCG@20 of the popularity ranking on each seed's split (mean, std)."""
    from itemjax.cli import config_from_args
    from itemjax.commands.train import parser as train_parser
    from itemjax.data.datasets import load_dataset
    from itemjax.evaluation.evaluate import evaluate, popularity_embeddings
    from itemjax.data.split import split_of

    values = {m: [] for m in METRICS}
    for seed in seeds:
        config = config_from_args(train_parser().parse_args(
            ["--dataset", dataset, "--seed", str(seed), "--out", "unused"] + shlex.split(common_args))).resolve()
        raw = load_dataset(config.dataset, data_dir=config.data_dir, min_rating=config.min_rating,
                           kcore=config.kcore, sep=config.sep, progress=False)
        split = split_of(raw, config)
        test = evaluate(*popularity_embeddings(split.train), [split.train, split.valid], split.test, ks=(20,))
        for m in METRICS:
            values[m].append(test[m])
    return {m: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
            for m, v in values.items()}


def markdown(result: dict) -> str:
    from itemjax.commands.compare import paired_markdown

    names = list(result["methods"])
    base = names[0]

    def stat(runs, key):
        v = np.array([r[key] for r in runs], float)
        return v.mean(), (v.std(ddof=1) if len(v) > 1 else 0.0)

    lines = [f"### {result['dataset']}, {result['model']}, seeds {','.join(map(str, result['seeds']))}", "",
             "Each method: its defaults plus two variants, selected on validation NDCG@20 at the first seed; test "
             f"metrics of the selected variant, mean ± std over seeds; common options `{result['common_args']}`.", "",
             f"| method | selected variant | seeds | Recall@20 | NDCG@20 | gain N@20 vs {base} | train s | epochs |",
             "|---|---|---|---|---|---|---|---|"]
    base_ndcg = stat(result["methods"][base]["runs"], "ndcg@20")[0]
    for name in names:
        row = result["methods"][name]
        runs = row["runs"]
        (r, rs), (n, ns) = stat(runs, "recall@20"), stat(runs, "ndcg@20")
        (t, _), (e, _) = stat(runs, "train_seconds"), stat(runs, "selected_epoch")
        seeds = ",".join(str(run["seed"]) for run in runs)
        spread = (lambda v, sd: f"{v:.4f} ± {sd:.4f}") if len(runs) > 1 else (lambda v, sd: f"{v:.4f}")
        lines.append(f"| {name} | `{row['selected'] or '(defaults)'}` | {seeds} | {spread(r, rs)} | {spread(n, ns)} | "
                     f"{(n - base_ndcg) / base_ndcg:+.1%} | {t:.0f} | {e:.0f} |")
    pop = result["popularity"]
    lines.append(f"| popularity | – | {','.join(map(str, result['seeds']))} | "
                 f"{pop['recall@20']['mean']:.4f} ± {pop['recall@20']['std']:.4f} | "
                 f"{pop['ndcg@20']['mean']:.4f} ± {pop['ndcg@20']['std']:.4f} | "
                 f"{(pop['ndcg@20']['mean'] - base_ndcg) / base_ndcg:+.1%} | – | – |")
    for name, tuning in result.get("unfinished", {}).items():
        done = ", ".join(f"`{t['variant'] or '(defaults)'}` " + (f"{t['best_valid_ndcg@20']:.4f}" if t["finished"]
                         else f"unfinished (best so far {t['best_valid_ndcg@20'] or 0:.4f})") for t in tuning)
        lines.append(f"\n{name}: tuning not finished, not in the table; validation NDCG@20 of its variants: {done}.")
    lines += paired_markdown(result.get("paired") or {}, f"of {PAIRED_WITH} minus each method", f"{PAIRED_WITH} minus")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(run_main(main, resume=RESUME))
