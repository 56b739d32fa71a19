"""Tune one loss's options with Optuna: TPE sampling, pruning on validation NDCG@20, resumable.

    itemjax tune --base "--dataset ml-100k --model lightgcn --epochs 300" --loss item --trials 20 \\
        --out runs/tune-item

Each trial is a normal training run (``<out>/trial-<n>/``) of ``<base> --loss <loss>`` plus the
options a TPE sampler (seeded) draws from the loss's search space (:data:`SEARCH_SPACES`, or
the ``--space`` JSON file). Its value is its best VALIDATION ``--select-metric`` (NDCG@20 by
default); every evaluation is reported to Optuna, whose median pruner stops a trial that trails
the earlier trials at the same epoch. The study lives in ``<out>/study.db`` (SQLite): run the
same command again after an interruption and it continues until ``--trials`` trials have
finished (completed or pruned; an interrupted trial is left behind and rerun). Compare losses
with the same ``--trials`` each. ``<out>/tune.md`` and ``best.json`` list the trials and the
best options, which ``itemjax train`` takes as flags.

Needs the ``tune`` extra (``pip install 'itemjax[tune]'``).
"""

from __future__ import annotations

import json
import pathlib
import shlex
import shutil
import sys

from itemjax.cli import RERUN, ArgumentParser, config_from_args, run_main
from itemjax.config import LOSS_NAMES
from itemjax.errors import ConfigError, require_extra
from itemjax.runio import best_validation, write_json_atomic

#: how an interrupted command continues (printed on Ctrl-C)
RESUME = RERUN

#: per loss, option -> ("log" | "float" | "int" | "categorical", low or choices, high); the
#: neighbourhoods of the defaults that docs/tuning.md explored by hand
SEARCH_SPACES = {
    "bpr": {"lr": ("log", 1e-4, 1e-2), "l2": ("log", 1e-5, 1e-1), "batch_size": ("categorical", [1024, 2048, 4096, 8192])},
    "bce": {"lr": ("log", 1e-4, 1e-2), "l2": ("log", 1e-5, 1e-1), "batch_size": ("categorical", [1024, 2048, 4096, 8192])},
    "item": {"lr": ("log", 1e-4, 1e-2), "l2": ("log", 1e-5, 1e-1), "tau": ("log", 0.03, 1.0),
             "tau_k": ("log", 1.0, 100.0)},
    "neuralndcg": {"lr": ("log", 1e-4, 1e-2), "l2": ("log", 1e-5, 1e-1),
                   "neuralndcg_temperature": ("log", 0.1, 10.0)},
    "softmax": {"lr": ("log", 1e-4, 1e-2), "l2": ("log", 1e-5, 1e-1), "softmax_temperature": ("log", 0.05, 2.0)},
}


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="itemjax tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="", help="train options shared by every trial (not --loss, not --out)")
    p.add_argument("--loss", required=True, choices=LOSS_NAMES)
    p.add_argument("--trials", type=int, default=20, help="finished trials to reach (default 20)")
    p.add_argument("--space", default=None, help="JSON file {option: [kind, low|choices, high]} replacing the "
                   "loss's search space")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--startup-trials", type=int, default=5,
                   help="random trials before TPE, and trials before the pruner acts (default 5)")
    p.add_argument("--out", required=True, help="folder of the study (study.db, trials, tune.md)")
    return p


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def suggest(trial, space: dict) -> dict:
    """``{option: value}`` drawn by ``trial`` from ``space``."""
    values = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "log":
            values[name] = trial.suggest_float(name, spec[1], spec[2], log=True)
        elif kind == "float":
            values[name] = trial.suggest_float(name, spec[1], spec[2])
        elif kind == "int":
            values[name] = trial.suggest_int(name, spec[1], spec[2])
        elif kind == "categorical":
            values[name] = trial.suggest_categorical(name, list(spec[1]))
        else:
            raise ConfigError(f"search space of {name}: unknown kind {kind!r}; use log, float, int or categorical")
    return values


def open_study(optuna, path: pathlib.Path, args):
    """The study stored at ``path`` (created if new), ready to continue.

    The TPE sampler's seed is ``--seed`` plus the number of trials already in the study, so a
    resumed study draws new points (the same seed would replay the first run's random startup
    trials). A trial still marked running was cut off by a killed process (trials run one at a
    time here): it is marked failed, and its number is not reused.
    """
    storage = f"sqlite:///{path.resolve()}"
    study = optuna.create_study(study_name="itemjax", storage=storage, load_if_exists=True, direction="maximize")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    sampler = optuna.samplers.TPESampler(seed=args.seed + len(study.trials), n_startup_trials=args.startup_trials)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials, n_warmup_steps=1)
    return optuna.create_study(study_name="itemjax", storage=storage, load_if_exists=True, direction="maximize",
                               sampler=sampler, pruner=pruner)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    optuna = require_extra("optuna", extra="tune", feature="itemjax tune")
    from itemjax.commands.train import parser as train_parser
    from itemjax.train.run import fit

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space = json.loads(pathlib.Path(args.space).read_text()) if args.space else SEARCH_SPACES[args.loss]
    base = shlex.split(args.base) + ["--loss", args.loss, "--no-progress"]
    if any(a in ("--out", "--resume") for a in base):
        raise ConfigError("--base must not hold --out or --resume: tune names each trial's folder")
    try:
        config = config_from_args(train_parser().parse_args(base + ["--out", str(out / "check")]))
    except SystemExit:
        raise ConfigError(f"bad train options in --base: {args.base}") from None
    metric = config.select_metric
    if config.valid_frac == 0:
        raise ConfigError("tune selects on validation: drop --valid-frac 0 from --base")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(optuna, out / "study.db", args)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def objective(trial):
        values = suggest(trial, space)
        run = out / f"trial-{trial.number:03d}"
        shutil.rmtree(run, ignore_errors=True)  # a trial number is never reused; clear a half-written folder
        extra = [a for name, v in values.items() for a in (flag(name), str(v))]
        trial_config = config_from_args(train_parser().parse_args(base + extra + ["--out", str(run)]))

        def report(record):
            if record.get("split") == "valid":
                trial.report(record[metric], record["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"{metric} {record[metric]:.4f} at epoch {record['epoch']}")

        print(f"[tune] trial {trial.number}: {' '.join(extra)} -> {run}", file=sys.stderr)
        fit(trial_config, on_evaluation=report)
        return best_validation(run, metric)[metric]

    done = sum(t.state in finished for t in study.trials)
    if done < args.trials:
        study.optimize(objective, n_trials=args.trials - done, catch=())
    text, best = report_study(study, space, metric, args)
    (out / "tune.md").write_text(text)
    write_json_atomic(out / "best.json", best)
    print(text)
    return 0


def report_study(study, space: dict, metric: str, args) -> tuple[str, dict]:
    """``(tune.md text, best.json dict)`` of a study."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    names = list(space)
    lines = [f"Optuna study of `--loss {args.loss}` over `{args.base}`: TPE (seed {args.seed}), median pruning "
             f"on validation {metric}; {len(complete)} complete, "
             f"{sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)} pruned.", "",
             "| trial | state | " + " | ".join(names) + f" | best valid {metric} | epochs reported |",
             "|---|---|" + "---|" * len(names) + "---|---|"]
    for t in study.trials:
        value = "–" if t.value is None else f"{t.value:.4f}"
        if t.value is None and t.intermediate_values:
            value = f"({max(t.intermediate_values.values()):.4f})"
        params = [f"{t.params[n]:.3g}" if isinstance(t.params.get(n), float) else str(t.params.get(n, "–"))
                  for n in names]
        lines.append(f"| {t.number} | {t.state.name.lower()} | " + " | ".join(params)
                     + f" | {value} | {len(t.intermediate_values)} |")
    summary = {"loss": args.loss, "base": args.base, "metric": metric, "trials": len(study.trials)}
    if best is not None:
        options = " ".join(f"{flag(n)} {best.params[n]}" for n in names)
        lines += ["", f"Best: trial {best.number}, validation {metric} {best.value:.4f}: `{options}`"]
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params, best_options=options)
    return "\n".join(lines) + "\n", summary


if __name__ == "__main__":
    sys.exit(run_main(main, resume=RESUME))
