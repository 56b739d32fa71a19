"""Turn finished run directories into a markdown table and a comparison plot.

    python experiments/report.py runs/ml-100k-mf-bpr-* runs/ml-100k-lightgcn-bpr-*
    python experiments/report.py RUN_A RUN_B --out report.md --plot compare.png

One row per run, read from its ``summary.json`` (test metrics of the checkpoint selected on
validation, epochs, selected epoch, train seconds) and ``config.json`` (dataset, model, loss):
run, dataset, model, loss, protocol, Recall@K, NDCG@K, epochs, selected epoch, train time; when
some run was refit (``--refit``: the selected number of steps again on train + validation, tested
with every known interaction excluded), also its refit Recall@K, NDCG@K and train time ("–" for a
run without a refit).
The table is printed and, with ``--out``, written to a file. ``--plot`` draws validation
NDCG@K of every run against wall time (from each ``metrics.jsonl``). A directory that is not
a run, or a run that has not finished (no ``summary.json``), is an error (exit 2).
"""

from __future__ import annotations

import pathlib
import sys

from itemjax.cli import ArgumentParser, run_main
from itemjax.errors import DataError
from itemjax.runio import read_json

COLUMNS = ("run", "dataset", "model", "loss", "protocol", "recall@{k}", "ndcg@{k}", "epochs", "selected epoch",
           "train time (s)")
#: the columns added when some run has a refit (summary.json ``refit/<metric>``, ``refit_train_seconds``)
REFIT_COLUMNS = ("refit recall@{k}", "refit ndcg@{k}", "refit train time (s)")


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="itemjax report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by train.py --out")
    p.add_argument("--out", default=None, help="write the markdown table to this file too")
    p.add_argument("--plot", default=None, help="write a comparison plot (PNG) of validation NDCG@K vs wall time")
    p.add_argument("--diagnostics-plot", default=None, metavar="PNG",
                   help="write the --diagnostics fields of the runs (gradient norms per term, embedding norms, sigmoid "
                   "saturation, popularity overlap) against the optimiser step to this PNG")
    p.add_argument("--k", type=int, default=20, help="cut-off of the reported Recall@K / NDCG@K (default 20)")
    return p


def load_run(run_dir, *, k: int = 20) -> dict:
    """One table row (column -> value) for ``run_dir``; :class:`DataError` if it is not a finished run."""
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory; give directories written by experiments/train.py --out")
    damaged = "the run directory is damaged"
    config = read_json(run_dir / "config.json", "not a run directory (train.py writes config.json when a run "
                       "starts); check the path", damaged=damaged)["config"]
    summary = read_json(run_dir / "summary.json", "the run has not finished; continue it with "
                        f"experiments/train.py <same options> --resume --out {run_dir}", damaged=damaged)
    missing = [m for m in (f"recall@{k}", f"ndcg@{k}") if m not in summary]
    if missing:
        raise DataError(f"{run_dir / 'summary.json'} has no {missing[0]}; the run did not evaluate K={k} (pass --k)")
    return {
        "run": run_dir.name,
        "dataset": summary.get("dataset", config.get("dataset")),
        "model": summary.get("model", config.get("model")),
        "loss": summary.get("loss", config.get("loss")),
        "protocol": summary.get("protocol", "transductive"),
        f"recall@{k}": summary[f"recall@{k}"],
        f"ndcg@{k}": summary[f"ndcg@{k}"],
        "epochs": summary["epochs"],
        "selected epoch": summary["selected_epoch"],
        "train time (s)": summary["train_seconds"],
        f"refit recall@{k}": summary.get(f"refit/recall@{k}"),
        f"refit ndcg@{k}": summary.get(f"refit/ndcg@{k}"),
        "refit train time (s)": summary.get("refit_train_seconds"),
    }


def _cell(column: str, value) -> str:
    if value is None:
        return "–"
    if "@" in column:
        return f"{value:.4f}"
    if column.endswith("train time (s)"):
        return f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict], *, k: int = 20) -> str:
    """A GitHub-flavoured markdown table; metrics with 4 decimals, train time with 1; the refit columns
    only when some row has a refit."""
    refit = [c.format(k=k) for c in REFIT_COLUMNS]
    columns = [c.format(k=k) for c in COLUMNS] + (refit if any(row[refit[0]] is not None for row in rows) else [])
    header = [c.replace(f"recall@{k}", f"Recall@{k}").replace(f"ndcg@{k}", f"NDCG@{k}") for c in columns]
    numeric = {f"recall@{k}", f"ndcg@{k}", "epochs", "selected epoch", "train time (s)", *refit}
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if c in numeric else "---" for c in columns) + "|"]
    lines += ["| " + " | ".join(_cell(c, row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    rows = [load_run(d, k=args.k) for d in args.run_dirs]  # every directory checked before writing
    table = markdown_table(rows, k=args.k)
    print(table, end="")
    if args.out:
        pathlib.Path(args.out).write_text(table)
    if args.plot:
        from itemjax.evaluation.plots import plot_comparison

        plot_comparison(args.run_dirs, args.plot, metric=f"ndcg@{args.k}")
        print(f"comparison plot: {args.plot}", file=sys.stderr)
    if args.diagnostics_plot:
        from itemjax.evaluation.plots import plot_diagnostics

        plot_diagnostics(args.run_dirs, args.diagnostics_plot)
        print(f"diagnostics plot: {args.diagnostics_plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
