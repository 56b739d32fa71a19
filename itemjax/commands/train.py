"""Train a recommender and evaluate it with full ranking.

    python experiments/train.py --model lightgcn --loss item            # ml-100k by default
    python experiments/train.py --model lightgcn --loss bpr --dataset gowalla --epochs 50
    python experiments/train.py --dataset my_clicks.csv --loss item     # your own user,item file

Results go to --out (default runs/<dataset>-<model>-<loss>-<time>/): config.json,
metrics.jsonl, summary.json, checkpoints/. Continue an interrupted run with the same command
plus --resume --out DIR.
"""

from __future__ import annotations

import sys

from itemjax.cli import ArgumentParser, add_config_arguments, config_from_args, run_main


def parser() -> ArgumentParser:
    """train.py's flags: one per :class:`itemjax.config.TrainConfig` field (declared there)."""
    p = ArgumentParser(prog="itemjax train", description=__doc__.split("\n\n")[0])
    add_config_arguments(p)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    config = config_from_args(args)  # every option checked before any data is read
    from itemjax.train.run import fit

    fit(config)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
