"""Beyond the paper: ITEM vs BPR with side features, on cold-start items and under temporal splits.

    itemjax beyond --dataset ml-100k --seeds 0,1,2 --out runs/beyond-ml100k
    itemjax beyond --dataset $ITEMJAX_DATA/ml-1m/user_movie_pairs.dat.gz --settings random,features,cold-items \\
        --out runs/beyond-ml1m

Each setting of :data:`SETTINGS` (train options added to ``--common-args``) is trained with each
loss at its defaults and every seed into ``<out>/<setting>/<loss>-seed<s>/``; finished runs are
reused and unfinished ones resumed, so an interrupted table continues. ``<out>/beyond.md``
(and ``beyond.json``): per setting and loss, test Recall@20 and NDCG@20 (mean ± std over
seeds) and, for settings compared on the same users, the per-user paired difference of the
second loss against the first (Wilcoxon p-value per seed, as ``itemjax compare``); for
``cold-items`` the metrics are the held-out items' (ranked among themselves) with the two
baselines of :func:`itemjax.evaluation.inductive.cold_item_report` beside them.
"""

from __future__ import annotations

import json
import pathlib
import shlex
import sys

import numpy as np

from itemjax.cli import RERUN, ArgumentParser, int_list, run_main
from itemjax.errors import ConfigError
from itemjax.runio import write_json_atomic

#: how an interrupted command continues (printed on Ctrl-C)
RESUME = RERUN

_FEATURES = "--item-features genres --user-features demographics"
#: setting -> train options (MovieLens side features: genres; age group, gender, occupation)
SETTINGS = {
    "random": "",
    "features": _FEATURES,
    "temporal": "--split temporal",
    "cold-items": f"--protocol inductive-items --item-dropout 0.3 {_FEATURES}",
}
METRICS = ("recall@20", "ndcg@20")
BASELINES = ("popularity", "features_only")


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="itemjax beyond", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--model", default="lightgcn")
    p.add_argument("--losses", default="bpr,item", help="comma-separated; paired differences are against the first")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--seeds", type=int_list, default=(0, 1, 2))
    p.add_argument("--common-args", default="", help="train options for every run (default: none)")
    p.add_argument("--out", required=True)
    return p


def main(argv=None) -> int:
    from itemjax.cli import config_from_args
    from itemjax.commands.compare import paired_tests
    from itemjax.commands.train import parser as train_parser
    from itemjax.train.run import reuse_or_fit

    args = parser().parse_args(argv)
    settings, losses = args.settings.split(","), args.losses.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; choose from {', '.join(SETTINGS)}")
    out = pathlib.Path(args.out)
    table = {}
    for setting in settings:
        runs = {}
        for loss in losses:
            runs[loss] = []
            for seed in args.seeds:
                run = out / setting / f"{loss}-seed{seed}"
                argv_s = shlex.split(f"--dataset {args.dataset} --model {args.model} --loss {loss} --seed {seed} "
                                     f"{SETTINGS[setting]} {args.common_args}") + ["--out", str(run), "--no-progress"]
                reuse_or_fit(config_from_args(train_parser().parse_args(argv_s)))
                summary = json.loads((run / "summary.json").read_text())
                runs[loss].append({"seed": seed, "out": str(run), **summary})
        paired = {} if setting == "cold-items" else paired_tests(runs, losses[0])
        table[setting] = {"options": SETTINGS[setting], "runs": runs, "paired": paired}
    result = {"dataset": args.dataset, "model": args.model, "seeds": list(args.seeds), "losses": losses,
              "common_args": args.common_args, "settings": table}
    write_json_atomic(out / "beyond.json", result)
    text = markdown(result)
    (out / "beyond.md").write_text(text)
    print(text)
    return 0


def _stat(runs, key) -> str:
    values = np.array([r[key] for r in runs], float)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.4f} ± {std:.4f}"


def markdown(result: dict) -> str:
    losses = result["losses"]
    lines = [f"### {result['dataset']}, {result['model']}, seeds {','.join(map(str, result['seeds']))}", "",
             "Each loss at its defaults; test metrics mean ± std over seeds; p: Wilcoxon signed-rank p-values of the "
             f"per-user NDCG@20 difference against {losses[0]} per seed. cold-items: the held-out items ranked among "
             "themselves for their users (the model from features alone).", "",
             "| setting | options | loss | Recall@20 | NDCG@20 | p (N@20, per seed) |", "|---|---|---|---|---|---|"]
    for setting, entry in result["settings"].items():
        for loss in losses:
            runs = entry["runs"][loss]
            tests = entry["paired"].get(loss, {}).get("ndcg@20", [])
            p = ", ".join(f"{t['p_wilcoxon']:.2g}" if t["p_wilcoxon"] is not None else "–" for t in tests) or "–"
            lines.append(f"| {setting} | `{entry['options'] or '(none)'}` | {loss} | {_stat(runs, 'recall@20')} | "
                         f"{_stat(runs, 'ndcg@20')} | {p} |")
        if setting == "cold-items":
            runs = entry["runs"][losses[0]]  # the baselines do not depend on the loss
            for name in BASELINES:
                lines.append(f"| {setting} | – | {name.replace('_', ' ')} | {_stat(runs, name + '/recall@20')} | "
                             f"{_stat(runs, name + '/ndcg@20')} | – |")
            base = runs[0]
            lines.append(f"| {setting} | – | (split) | {int(base['cold/holdout_items'])} held-out items, "
                         f"{int(base['cold/users'])} users | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(run_main(main, resume=RESUME))
