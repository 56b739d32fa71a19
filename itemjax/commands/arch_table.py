"""Every architecture x loss x protocol on one dataset, as one markdown table.

    python experiments/arch_table.py                                   # ml-100k, runs/arch-table
    python experiments/arch_table.py --epochs 200 --extra "--eval-every 5 --patience 8" --out /tmp/arch-table
    python experiments/arch_table.py --extra "--patience 15" --extra-inductive "--user-dropout 0.2"
    python experiments/arch_table.py --tune-models ngcf,sage --tune-bpr "--l2 1e-2" --tune-item "--tau 0.3"

Each cell (model, loss, protocol) is a normal training run (``experiments/train.py`` options:
the shared ``--epochs`` cap, ``--extra`` options, and otherwise the per-loss defaults of
``itemjax.config.LOSS_DEFAULTS`` for every model, chosen on LightGCN) written to
``<out>/<model>-<loss>-<protocol>/``. A cell whose ``summary.json`` exists is reused (after
checking its ``config.json`` used the same options) and an interrupted cell is resumed, so the
command can simply be re-run; ``--table-only`` rebuilds the table from the cells finished so
far. MF, which has no graph to embed an unseen user with, gets transductive cells only.

Tuning: the cells of the ``--tune-models`` are also trained with each ``--tune-bpr`` (BPR
cells) or ``--tune-item`` (ITEM cells) variant of options, in
``<out>/<model>-<loss>-<protocol>--<variant>/``, and the table reports the run with the best
VALIDATION NDCG@20 (the defaults win a tie); test metrics never choose. Both losses must get
the same number of variants, so each has the same tuning budget.

The table (``<out>/arch_table.md``, also printed) has test Recall@20 / NDCG@20 of the epoch
selected on validation, training wall time and the selected epoch; inductive rows also give
the popularity baseline (most popular unseen items) on the same held-out users, from
``summary.json``'s ``popularity/...`` entries. Below it, one line per model says whether ITEM
>= BPR on NDCG@20, transductively and inductively.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shlex
import sys

from itemjax.commands.train import parser as train_parser
from itemjax.cli import RERUN, ArgumentParser, config_from_args, run_main
from itemjax.config import LOSS_DEFAULTS, LOSS_NAMES, MODEL_NAMES, PROTOCOLS
from itemjax.errors import ConfigError
from itemjax.runio import best_validation, options_slug

#: how an interrupted command continues (printed on Ctrl-C)
RESUME = RERUN

#: Models without message passing: an unseen user cannot be embedded, so no inductive cell.
NON_GRAPH_MODELS = ("mf",)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One table row: a (model, loss, protocol), the directory of its default-options run, and
    the ``(options, directory)`` of each tuning variant also tried (none unless tuned)."""

    model: str
    loss: str
    protocol: str
    run: pathlib.Path
    tuned: tuple = ()

    def candidates(self) -> tuple:
        """``(options, run directory)`` of every run of the cell, defaults (``""``) first."""
        return (("", pathlib.Path(self.run)),) + tuple((v, pathlib.Path(r)) for v, r in self.tuned)


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="itemjax arch-table", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--models", default="mf,lightgcn,ngcf,gat,sage",
                   help="comma-separated models (mf: transductive only)")
    p.add_argument("--losses", default="bpr,item", help="comma-separated losses")
    p.add_argument("--protocols", default="transductive,inductive", help="comma-separated protocols")
    p.add_argument("--epochs", type=int, default=1000, help="the same epoch cap for every cell (early stopping applies)")
    p.add_argument("--extra", default="", help="train.py options given to every cell, e.g. \"--eval-every 5 --patience 8\" (one flag alone: --extra=--flag)")
    p.add_argument("--extra-inductive", default="",
                   help="train.py options added to the inductive cells only, e.g. \"--user-dropout 0.2\"")
    p.add_argument("--tune-models", default="", help="comma-separated models whose cells are also trained with "
                   "the --tune-bpr / --tune-item variants (selection on validation)")
    p.add_argument("--tune-bpr", action="append", default=[], metavar="OPTIONS",
                   help="train.py options of one BPR tuning variant, e.g. \"--l2 1e-2\" (repeatable)")
    p.add_argument("--tune-item", action="append", default=[], metavar="OPTIONS",
                   help="train.py options of one ITEM tuning variant, e.g. \"--tau 0.3\" (repeatable; "
                   "as many as --tune-bpr)")
    p.add_argument("--out", default="runs/arch-table", help="folder of the cell runs and arch_table.md")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: rebuild arch_table.md from the cells finished so far")
    return p


def _names(text: str, allowed: tuple, flag: str) -> list:
    names = [n for n in text.split(",") if n]
    for n in names:
        if n not in allowed:
            raise ConfigError(f"unknown {n!r} in {flag}; choose from {', '.join(allowed)}")
    if not names:
        raise ConfigError(f"{flag} is empty; give comma-separated names from {', '.join(allowed)}")
    return names


def tuning_variants(args) -> dict:
    """``{model: {loss: [options, ...]}}`` of the tuning variants (empty lists for untuned models)."""
    models = _names(args.models, MODEL_NAMES, "--models")
    losses = _names(args.losses, LOSS_NAMES, "--losses")
    tuned = [m for m in args.tune_models.split(",") if m]
    for m in tuned:
        if m not in models:
            raise ConfigError(f"--tune-models names {m!r}, which is not in --models {args.models!r}")
    grids = {"bpr": list(args.tune_bpr), "item": list(args.tune_item)}
    if tuned and not any(grids[loss] for loss in losses if loss in grids):
        raise ConfigError("--tune-models needs variants: give --tune-bpr and --tune-item options, "
                          "e.g. --tune-bpr \"--l2 1e-2\" --tune-item \"--tau 0.3\"")
    if any(grids.values()) and not tuned:
        raise ConfigError("--tune-bpr / --tune-item given without --tune-models; name the models to tune")
    sizes = {loss: len(grids.get(loss, [])) for loss in losses}
    if tuned and len(set(sizes.values())) > 1:
        raise ConfigError("give every loss the same number of tuning variants (the same tuning budget); got "
                          + ", ".join(f"{n} for {loss}" for loss, n in sizes.items()))
    return {m: {loss: (grids.get(loss, []) if m in tuned else []) for loss in losses} for m in models}


def cell_configs(args) -> list:
    """``[(Cell, (resolved TrainConfig per candidate, ...))]`` in run and table order (model,
    protocol, loss), candidates in :meth:`Cell.candidates` order; all checked before training."""
    out = pathlib.Path(args.out)
    extra = shlex.split(args.extra)
    extra_inductive = shlex.split(args.extra_inductive)
    variants = tuning_variants(args)
    cells = []
    for model in _names(args.models, MODEL_NAMES, "--models"):
        for protocol in _names(args.protocols, PROTOCOLS, "--protocols"):
            for loss in _names(args.losses, LOSS_NAMES, "--losses"):
                if protocol == "inductive" and model in NON_GRAPH_MODELS:
                    continue
                run = out / f"{model}-{loss}-{protocol}"
                cell = Cell(model, loss, protocol, run,
                            tuple((v, out / f"{run.name}--{options_slug(v)}") for v in variants[model][loss]))
                configs = []
                for options, path in cell.candidates():
                    argv = ["--dataset", args.dataset, "--model", model, "--loss", loss, "--protocol", protocol,
                            "--epochs", str(args.epochs), "--out", str(path)] + extra
                    if protocol == "inductive":
                        argv += extra_inductive
                    argv += shlex.split(options)
                    if args.no_progress:
                        argv.append("--no-progress")
                    try:
                        ns = train_parser().parse_args(argv)
                    except SystemExit:
                        raise ConfigError(f"bad train.py options in --extra {args.extra!r}, --extra-inductive "
                                          f"{args.extra_inductive!r} or the {loss} tuning variant {options!r}") from None
                    configs.append(config_from_args(ns))
                cells.append((cell, tuple(configs)))
    return cells


def select_candidate(cell: Cell, metric: str = "ndcg@20"):
    """``(options, run directory)`` of the cell's run with the best validation ``metric``, or
    None until every candidate has a ``summary.json``. A single candidate needs no validation
    record; among several the earlier (defaults first) wins a tie."""
    candidates = cell.candidates()
    if not all((run / "summary.json").exists() for _, run in candidates):
        return None
    if len(candidates) == 1:
        return candidates[0]
    return max(candidates, key=lambda c: best_validation(c[1], metric).get(metric, -math.inf))


def read_rows(cells: list) -> list:
    """One dict per cell from its selected run's ``summary.json`` (``finished=False`` until
    every candidate run has one)."""
    rows = []
    for c in cells:
        chosen = select_candidate(c)
        row = {"model": c.model, "loss": c.loss, "protocol": c.protocol, "finished": chosen is not None,
               "n_candidates": len(c.candidates())}
        if chosen is not None:
            options, run = chosen
            s = json.loads((run / "summary.json").read_text())
            row["all_train_seconds"] = sum(json.loads((r / "summary.json").read_text())["train_seconds"]
                                           for _, r in c.candidates())
            row.update({"recall@20": s["recall@20"], "ndcg@20": s["ndcg@20"], "train_seconds": s["train_seconds"],
                        "selected_epoch": s["selected_epoch"], "epochs": s["epochs"],
                        "popularity/recall@20": s.get("popularity/recall@20"),
                        "popularity/ndcg@20": s.get("popularity/ndcg@20"), "options": options})
        rows.append(row)
    return rows


def _fmt(value, digits: int = 4) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def verdicts(rows: list, base: str = "bpr", challenger: str = "item") -> list:
    """Per model, whether ``challenger`` >= ``base`` on NDCG@20 under each protocol (finished pairs only)."""
    by_key = {(r["model"], r["loss"], r["protocol"]): r for r in rows if r["finished"]}
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        parts = []
        for protocol in dict.fromkeys(r["protocol"] for r in rows):
            b, c = by_key.get((model, base, protocol)), by_key.get((model, challenger, protocol))
            if b is None or c is None:
                continue
            ok = c["ndcg@20"] >= b["ndcg@20"]
            parts.append(f"{protocol} {'yes' if ok else 'NO'} ({c['ndcg@20']:.4f} vs {b['ndcg@20']:.4f}, "
                         f"{(c['ndcg@20'] - b['ndcg@20']) / b['ndcg@20']:+.1%})")
        if parts:
            lines.append(f"- {model}: {challenger.upper()} >= {base.upper()} on NDCG@20: " + "; ".join(parts))
    return lines


def markdown(rows: list, header: str = "") -> str:
    """The table (one line per row), then the per-model ITEM >= BPR lines."""
    tuned = any(r.get("n_candidates", 1) > 1 for r in rows)
    lines = ([header, ""] if header else []) + [
        "| model | loss | protocol | Recall@20 | NDCG@20 | train time (s) | selected epoch "
        "| popularity Recall@20 | popularity NDCG@20 |" + (" options (chosen on validation) | train time of all its runs (s) |" if tuned else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if tuned else "")]
    for r in rows:
        if not r["finished"]:
            lines.append(f"| {r['model']} | {r['loss'].upper()} | {r['protocol']} | not finished | | | | | |"
                         + (" | |" if tuned else ""))
            continue
        options = ""
        if tuned:
            n = r.get("n_candidates", 1)
            options = f" {'`' + r['options'] + '`' if r['options'] else 'defaults'}" + (f", best of {n}" if n > 1 else "") \
                + f" | {r['all_train_seconds']:.0f} |"
        lines.append(
            f"| {r['model']} | {r['loss'].upper()} | {r['protocol']} | {_fmt(r['recall@20'])} | {_fmt(r['ndcg@20'])} "
            f"| {r['train_seconds']:.0f} | {r['selected_epoch']} of {r['epochs']} | {_fmt(r['popularity/recall@20'])} "
            f"| {_fmt(r['popularity/ndcg@20'])} |" + options)
    found = verdicts(rows)
    if found:
        lines += [""] + found
    return "\n".join(lines) + "\n"


def header_text(args) -> str:
    defaults = "; ".join(f"{loss.upper()} " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                           for k, v in LOSS_DEFAULTS[loss].items())
                         for loss in _names(args.losses, LOSS_NAMES, "--losses"))
    return (f"{args.dataset}: test metrics of the epoch selected on validation NDCG@20 (inductive: held-out users' "
            f"targets). Epoch cap {args.epochs}, train.py options `{args.extra or '(none)'}`"
            + (f" (inductive cells also `{args.extra_inductive}`)" if args.extra_inductive else "")
            + "; the per-loss defaults "
            f"(chosen on LightGCN): {defaults}; over them, MF/NGCF/SAGE's own (itemjax.config.MODEL_LOSS_DEFAULTS)."
            + (f" Tuned on validation NDCG@20 for {args.tune_models.replace(',', ', ')}, each loss with "
               f"{len(args.tune_bpr)} variant(s) besides its defaults: BPR "
               + ", ".join(f"`{v}`" for v in args.tune_bpr) + "; ITEM " + ", ".join(f"`{v}`" for v in args.tune_item) + "."
               if args.tune_models else "")
            + " Produced by `experiments/arch_table.py`.")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cells = cell_configs(args)
    from itemjax.train.run import check_reusable, fit_or_resume

    runs = [(cell, options, config) for cell, configs in cells
            for (options, _), config in zip(cell.candidates(), configs)]
    for n, (cell, options, config) in enumerate(runs, 1):
        tag = f"[arch_table {n}/{len(runs)}] {cell.model} {cell.loss} {cell.protocol}" + (f" {options}" if options else "")
        run = pathlib.Path(config.out)
        if (run / "summary.json").exists():
            check_reusable(config, run)
            print(f"{tag}: reusing {run}", file=sys.stderr)
            continue
        if args.table_only:
            print(f"{tag}: not finished (--table-only)", file=sys.stderr)
            continue
        resume = (run / "config.json").exists()
        print(f"{tag}: {'resuming' if resume else 'training'} -> {run}", file=sys.stderr)
        fit_or_resume(config)
    text = markdown(read_rows([c for c, _ in cells]), header_text(args))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "arch_table.md").write_text(text)
    print(text)
    print(f"saved {out / 'arch_table.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, resume=RESUME))
