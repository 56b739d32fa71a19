"""Learning-curve plots of run directories (host side, matplotlib's Agg canvas).

A run directory's ``metrics.jsonl`` holds one record per evaluation (see :mod:`itemjax.train.run`):
``epoch``, ``loss`` (mean training loss of that epoch), ``elapsed`` (training + evaluation
seconds so far, summed over resumed sessions), ``split`` (``valid``, or ``test`` when the run
has no validation split) and every metric (``ndcg@20``, ``recall@20``, ...).

* :func:`plot_run` draws ``<run_dir>/learning_curve.png``: a 2 x 2 grid, training loss (top)
  and validation NDCG@K / Recall@K (bottom) against epoch (left) and wall time (right), with
  the selected epoch of ``summary.json`` marked when the run has finished.
* :func:`plot_comparison` draws one validation NDCG@K curve per run against wall time.

Figures are built with :class:`matplotlib.figure.Figure` (the Agg canvas), never through
``pyplot``: no global backend switch, no window, safe in a headless training job. Each PNG
is written to a temporary file and renamed, so a crash never leaves a truncated image.
"""

from __future__ import annotations

import json
import pathlib

from itemjax.errors import DataError
from itemjax.runio import atomic_file, read_jsonl

__all__ = ["plot_run", "plot_comparison", "plot_diagnostics", "run_records", "run_label"]


def run_records(run_dir) -> list[dict]:
    """The evaluation records of ``run_dir/metrics.jsonl`` in epoch order.

    Raises :class:`DataError` when the directory or the file is missing or holds no record.
    """
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory; give a directory written by experiments/train.py --out")
    path = run_dir / "metrics.jsonl"
    records = read_jsonl(path)
    if not records:
        state = "is empty" if path.exists() else "is missing"
        raise DataError(f"{path} {state}: the run has not evaluated yet; train at least --eval-every epochs")
    return sorted(records, key=lambda r: r["epoch"])


def run_label(run_dir) -> str:
    """``<dir name> (<model>+<loss>)`` from config.json when readable, else the dir name."""
    run_dir = pathlib.Path(run_dir)
    try:
        config = json.loads((run_dir / "config.json").read_text())["config"]
        return f"{run_dir.name} ({config['model']}+{config['loss']})"
    except (OSError, ValueError, KeyError, TypeError):
        return run_dir.name


def _selected_epoch(run_dir: pathlib.Path):
    try:
        return json.loads((run_dir / "summary.json").read_text())["selected_epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_png(fig, path: pathlib.Path) -> pathlib.Path:
    """Render ``fig`` to ``path`` through a temporary file and an atomic rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return path


def plot_run(run_dir, *, k: int = 20, path=None) -> pathlib.Path:
    """Draw the learning curves of one run; return the PNG's path.

    Args:
      run_dir: a run directory with ``metrics.jsonl`` (``summary.json`` optional).
      k: the cut-off of the plotted NDCG@k / Recall@k.
      path: where to write (default ``<run_dir>/learning_curve.png``).
    """
    from matplotlib.figure import Figure

    run_dir = pathlib.Path(run_dir)
    records = run_records(run_dir)
    epochs = [r["epoch"] for r in records]
    seconds = [r.get("elapsed", r.get("train_seconds", 0.0)) for r in records]
    split = records[-1].get("split", "valid")
    selected = _selected_epoch(run_dir)

    fig = Figure(figsize=(10, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex="col")
    for col, (x, xlabel) in enumerate(((epochs, "epoch"), (seconds, "wall time (s, train + eval)"))):
        loss_ax, metric_ax = axes[0, col], axes[1, col]
        loss_ax.plot(x, [r["loss"] for r in records], marker=".", color="tab:gray")
        loss_ax.set_ylabel("training loss (epoch mean)")
        for name, color in (("ndcg", "tab:blue"), ("recall", "tab:orange")):
            key = f"{name}@{k}"
            if any(key in r for r in records):
                metric_ax.plot(x, [r.get(key, float("nan")) for r in records], marker=".", color=color,
                               label=f"{split} {name.capitalize() if name == 'recall' else 'NDCG'}@{k}")
        metric_ax.set_ylabel(f"{split} metric")
        metric_ax.set_xlabel(xlabel)
        if metric_ax.get_legend_handles_labels()[0]:  # a run whose records hold no @k metric has nothing to label
            metric_ax.legend(loc="best")
        if selected is not None and selected in epochs:
            at = x[epochs.index(selected)]
            for ax in (loss_ax, metric_ax):
                ax.axvline(at, color="tab:green", linestyle="--", linewidth=1)
        for ax in (loss_ax, metric_ax):
            ax.grid(alpha=0.3)
    title = run_label(run_dir)
    if selected is not None:
        title += f", selected epoch {selected}"
    fig.suptitle(title)
    return _save_png(fig, path or run_dir / "learning_curve.png")


def plot_comparison(run_dirs, path, *, metric: str = "ndcg@20") -> pathlib.Path:
    """One curve per run: ``metric`` on the evaluated split against wall time; return the path."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for run_dir in run_dirs:
        records = run_records(run_dir)
        if not any(metric in r for r in records):
            raise DataError(f"{pathlib.Path(run_dir) / 'metrics.jsonl'}: no {metric} recorded; pick a metric the run evaluated")
        ax.plot([r.get("elapsed", r.get("train_seconds", 0.0)) for r in records],
                [r.get(metric, float("nan")) for r in records], marker=".", label=run_label(run_dir))
    ax.set_xlabel("wall time (s, train + eval)")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_png(fig, path)


#: The panels of :func:`plot_diagnostics`: (title, [(record key, line label)], log scale)
DIAGNOSTIC_PANELS = (
    ("validation NDCG@20", [("ndcg@20", None)], False),
    ("overlap of the top 20 with popularity's", [("popularity_overlap@20", None)], False),
    ("top singular direction's share", [("emb/item_top_share", "final item embeddings"),
                                        ("grad/top_share", "item-table gradient")], False),
    ("sampled (positive, negative) pairs", [("pairs/active", "unsaturated sigmoid"),
                                            ("pairs/violated", "negative above positive"),
                                            ("pairs/violated_active", "unsaturated among those")], False),
    ("mean row norm", [("emb/user_ego", "user ID table"), ("emb/item_ego", "item ID table"),
                       ("emb/user", "final users"), ("emb/item", "final items")], True),
    ("gradient norm", [("grad/ndcg", "1 - NDCG~"), ("grad/recall", "1 - Recall~"), ("grad/rank", "rank loss"),
                       ("grad/l2", "L2")], True),
)


def plot_diagnostics(run_dirs, path, *, labels=None) -> pathlib.Path:
    """The ``--diagnostics`` fields (:mod:`itemjax.train.diagnostics`) of one or more runs against the
    optimiser step, one panel per quantity (:data:`DIAGNOSTIC_PANELS`), one colour per run and one
    line style per field; return the PNG's path."""
    from matplotlib.figure import Figure

    labels = list(labels) if labels is not None else [pathlib.Path(d).name for d in run_dirs]
    runs = [run_records(d) for d in run_dirs]
    if not any("emb/item_top_share" in r for records in runs for r in records):
        raise DataError("no --diagnostics fields in these runs' metrics.jsonl; train them with --diagnostics")
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    axes = fig.subplots(2, 3, sharex=True).ravel()
    styles = ("-", "--", ":", "-.")
    colors = [f"C{i}" for i in range(10)]
    for ax, (title, fields, log) in zip(axes, DIAGNOSTIC_PANELS):
        for run_i, (records, label) in enumerate(zip(runs, labels)):
            steps = [r["step"] for r in records]
            shown = [(key, name) for key, name in fields if any(key in r for r in records)]
            for style, (key, name) in zip(styles, shown):
                line_label = label if name is None else (f"{label}: {name}" if len(runs) > 1 else name)
                ax.plot(steps, [r.get(key, float("nan")) for r in records], linestyle=style,
                        color=colors[run_i % len(colors)], label=line_label if (run_i == 0 or name is None) else None)
        ax.set_title(title)
        ax.set_xlabel("optimiser step")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    return _save_png(fig, path)
