"""README's headline table, written from finished comparisons: one row per ``comparison.json``.

    itemjax headline experiments/headline.json --readme README.md

The spec (JSON) lists the rows: ``{"rows": [{"setting": ..., "comparison": FOLDER, "command": ...,
"source": LINK, "published": DATASET (optional), "timed": false (optional)}]}``. ``FOLDER`` holds the ``comparison.json`` of
``itemjax compare`` (``paper-scale`` writes it to ``<out>/final``; ``compare --runs`` gathers runs
trained apart) and ``command`` is what creates it, quoted when the folder is missing. Each row
states, for the second loss against the first (the baseline): Recall@20 and NDCG@20 (the refit
model's when every run was refit, else the selected checkpoint's; means over seeds), the gains,
the per-user Wilcoxon p-values of each seed (on the selected checkpoint's test users), the
fraction of the baseline's time to its best validation NDCG@20 the other loss needed to reach
it (left out with ``"timed": false``, for runs whose wall times are not comparable), and the
published rows of :data:`itemjax.commands.paper_scale.PUBLISHED` for ``published``.
With ``--readme`` the table replaces the lines between :data:`BEGIN` and :data:`END` there.
"""

from __future__ import annotations

import pathlib
import sys

from itemjax.cli import ArgumentParser, run_main
from itemjax.errors import ConfigError
from itemjax.runio import read_json

#: the lines of README.md between which the table is written
BEGIN = "<!-- headline table: written by `itemjax headline experiments/headline.json --readme README.md` -->"
END = "<!-- end of the headline table -->"

METRICS = ("recall@20", "ndcg@20")
#: the keys every row of the spec needs
ROW_KEYS = ("setting", "comparison", "command", "source")
NAMES = {"recall@20": "Recall@20", "ndcg@20": "NDCG@20"}


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="itemjax headline", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="JSON file listing the rows (see experiments/headline.json)")
    p.add_argument("--readme", default=None, help="write the table into this file between its headline markers")
    return p


def row_text(comparison: dict, published: list = (), *, timed: bool = True) -> str:
    """The "ours vs baseline" cell of one comparison (``itemjax compare``'s comparison.json); the
    time-to-best fraction only when ``timed``."""
    table, base = comparison["table"], comparison["baseline"]
    other = next(loss for loss in table if loss != base)
    refit = all(table[loss][f"refit/{m}"]["mean"] is not None for loss in (base, other) for m in METRICS)
    key = (lambda m: f"refit/{m}") if refit else (lambda m: m)
    parts = []
    for m in METRICS:
        e, b = table[other][key(m)], table[base][key(m)]
        parts.append(f"{NAMES[m]} {e['mean']:.4f} vs {b['mean']:.4f} ({e['gain_vs_' + base]:+.1%})")
    n_seeds = len(comparison["runs"][other])
    text = ("refit " if refit else "") + ", ".join(parts) + (f" (mean of {n_seeds} seeds)" if n_seeds > 1 else "")
    paired = (comparison.get("paired") or {}).get(other) or {}
    if all(paired.get(m) for m in METRICS):
        cells = []
        for m in METRICS:
            tests = paired[m]
            ps = "/".join("–" if t["p_wilcoxon"] is None else f"{t['p_wilcoxon']:.2g}" for t in tests)
            ahead = sum(t["mean_diff"] > 0 for t in tests)
            side = ("ahead" if ahead else "behind") if len(tests) == 1 else f"ahead on {ahead} of {len(tests)} seeds"
            cells.append(f"{NAMES[m]} p {ps} ({side})")
        text += "; per user " + ", ".join(cells)
    fractions = (table[other].get(f"fraction_of_{base}_time_to_its_best") or []) if timed else []
    if fractions:
        reached = [f for f in fractions if f is not None]
        if len(reached) == len(fractions):
            text += (f"; {other.upper()} at {base.upper()}'s best validation NDCG@20 in "
                     f"{sum(reached) / len(reached):.2f} of {base.upper()}'s time")
        else:
            text += (f"; {other.upper()} did not reach {base.upper()}'s best validation NDCG@20 in "
                     f"{len(fractions) - len(reached)} of {len(fractions)} seeds")
    for p in published:
        text += f"; published {p['method']}: {p['recall@20']:.4f} / {p['ndcg@20']:.4f}"
    return text


def read_spec(path) -> dict:
    """The spec in ``path``, each row checked for :data:`ROW_KEYS`; :class:`ConfigError` naming what is wrong."""
    if not pathlib.Path(path).exists():
        raise ConfigError(f"{path}: no such spec file; the project's is experiments/headline.json")
    spec = read_json(path, "")
    rows = spec.get("rows") if isinstance(spec, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f'{path}: needs {{"rows": [...]}} with at least one row')
    for n, row in enumerate(rows):
        missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise ConfigError(f"{path}: row {n} lacks {missing[0]!r}; every row has {', '.join(ROW_KEYS)}")
    return spec


def table_markdown(spec: dict, root: pathlib.Path) -> str:
    """The headline table of ``spec``'s rows, comparison folders relative to ``root``."""
    from itemjax.commands.paper_scale import PUBLISHED

    losses, lines = None, []
    for row in spec["rows"]:
        path = root / row["comparison"] / "comparison.json"
        if not path.exists():
            raise ConfigError(f"headline row {row['setting']!r}: {path} is missing; create it with: {row['command']}")
        comparison = read_json(path, "")
        pair = (comparison["baseline"], next(loss for loss in comparison["table"] if loss != comparison["baseline"]))
        if losses not in (None, pair):
            raise ConfigError(f"headline row {row['setting']!r} compares {pair[1]} with {pair[0]}, the rows above "
                              f"{losses[1]} with {losses[0]}; one table compares one pair")
        losses = pair
        cell = row_text(comparison, PUBLISHED.get(row.get("published"), []) if row.get("published") else [],
                        timed=row.get("timed", True))
        lines.append(f"| {row['setting']} | {cell} | [results]({row['source']}) |")
    head = [f"| setting | {losses[1].upper()} vs {losses[0].upper()} | source |", "|---|---|---|"]
    return "\n".join(head + lines) + "\n"


def replace_block(text: str, table: str, where: str) -> str:
    """``text`` with the lines between :data:`BEGIN` and :data:`END` replaced by ``table``."""
    try:
        start = text.index(BEGIN) + len(BEGIN)
        stop = text.index(END, start)
    except ValueError:
        raise ConfigError(f"{where} lacks the headline markers; put the two lines\n{BEGIN}\n{END}\n"
                          "where the table belongs") from None
    return text[:start] + "\n" + table + text[stop:]


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    table = table_markdown(read_spec(args.spec), pathlib.Path.cwd())
    print(table, end="")
    if args.readme:
        readme = pathlib.Path(args.readme)
        readme.write_text(replace_block(readme.read_text(), table, str(readme)))
        print(f"headline table written into {readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
