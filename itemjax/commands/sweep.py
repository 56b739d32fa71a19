"""Run a list of train.py variants and tabulate them by VALIDATION NDCG@20.

    python experiments/sweep.py --base "--model lightgcn --loss item" \\
        --variant "--tau 0.05" --variant "--tau 0.2" --out runs/sweep-tau

Every variant is ``<base> <variant>``; each run goes to ``<out>/<n>-<slug>/``. The table
(``<out>/sweep.md``, sorted by best validation NDCG@20, which is what selects defaults; test
metrics are shown for the record, never for choosing) is printed at the end. Finished runs are
reused, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import json
import pathlib
import shlex
import sys

from itemjax.commands.train import parser as train_parser
from itemjax.cli import RERUN, ArgumentParser, config_from_args, run_main
from itemjax.errors import ConfigError
from itemjax.runio import best_validation, options_slug

#: how an interrupted command continues (printed on Ctrl-C)
RESUME = RERUN


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="itemjax sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="", help="train.py options shared by every variant")
    p.add_argument("--variant", action="append", default=[], help="extra options of one variant (repeatable)")
    p.add_argument("--out", required=True, help="folder for the runs and sweep.md")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    out = pathlib.Path(args.out)
    variants = args.variant or [""]
    configs = []
    for n, v in enumerate(variants):
        argv_v = shlex.split(args.base) + shlex.split(v) + ["--out", str(out / f"{n:02d}-{options_slug(v)}"), "--no-progress"]
        try:
            configs.append((v, config_from_args(train_parser().parse_args(argv_v))))
        except SystemExit:
            raise ConfigError(f"bad train.py options in variant {v!r}") from None
    from itemjax.train.run import reuse_or_fit

    rows = []
    for v, c in configs:
        run = pathlib.Path(c.out)
        reuse_or_fit(c, f"[sweep] {v or '(base)'}")
        s = json.loads((run / "summary.json").read_text())
        best = best_validation(run, "ndcg@20")
        rows.append((best.get("ndcg@20", float("nan")), v, best.get("epoch"), s))
    rows.sort(key=lambda r: -r[0])
    lines = [f"base: `{args.base}`", "", "| variant | valid NDCG@20 | best epoch | test Recall@20 | test NDCG@20 | train s |",
             "|---|---|---|---|---|---|"]
    for best, v, epoch, s in rows:
        lines.append(f"| `{v or '(base)'}` | {best:.4f} | {epoch} | {s['recall@20']:.4f} | {s['ndcg@20']:.4f} | "
                     f"{s['train_seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    (out / "sweep.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, resume=RESUME))
