#!/usr/bin/env python
"""Train a recommender and evaluate it with full ranking.

    python experiments/train.py --model lightgcn --loss item            # ml-100k by default
    python experiments/train.py --model lightgcn --loss bpr --dataset gowalla --epochs 50
    python experiments/train.py --dataset my_clicks.csv --loss item     # your own user,item file

Results go to --out (default runs/<dataset>-<model>-<loss>-<time>/): config.json,
metrics.jsonl, summary.json, checkpoints/. Continue an interrupted run with the same command
plus --resume --out DIR.
"""

from __future__ import annotations

import argparse
import sys

from itemjax.cli import ArgumentParser, int_list, run_main
from itemjax.config import BACKEND_NAMES, COMPUTE_DTYPES, ITEM_METRICS, LOSS_NAMES, MODEL_NAMES, NEG_SAMPLERS, POSITIVE_PAIRS, PROTOCOLS, RANK_ESTIMATES, TrainConfig, USER_SAMPLINGS

D = TrainConfig()


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=D.dataset,
                   help="ml-100k, ml-1m, gowalla, yelp2018, amazon-book, or a path to a user,item[,rating[,ts]] file")
    g.add_argument("--data-dir", default=None, help="data root (default: $ITEMJAX_DATA, else ~/.cache/itemjax)")
    g.add_argument("--sep", default=None, help="column separator of a user file (default: detected)")
    g.add_argument("--min-rating", type=float, default=None, help="keep ratings >= this (default: every rating)")
    g.add_argument("--kcore", type=int, default=D.kcore, help="k-core filter (0: off)")
    g.add_argument("--test-frac", type=float, default=D.test_frac)
    g.add_argument("--valid-frac", type=float, default=D.valid_frac,
                   help="validation carved from train for early stopping and selection (0: none)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=D.model, choices=MODEL_NAMES)
    g.add_argument("--dim", type=int, default=D.dim)
    g.add_argument("--layers", type=int, default=D.layers)
    g.add_argument("--backend", default=D.backend, choices=BACKEND_NAMES,
                   help="propagation backend (auto: csr on CPU, segment elsewhere)")
    g.add_argument("--compute-dtype", default=D.compute_dtype, choices=COMPUTE_DTYPES,
                   help="dtype of propagation and scoring (params and loss stay float32); bfloat16 for GPU/TPU")
    g = p.add_argument_group("training")
    g.add_argument("--loss", default=D.loss, choices=LOSS_NAMES)
    g.add_argument("--epochs", type=int, default=D.epochs)
    g.add_argument("--batch-size", type=int, default=None,
                   help="triples per step for bpr (default 1024) and bce (2048), users per step for item (default 256)")
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 2e-3 bpr, 1e-3 bce and item)")
    g.add_argument("--l2", type=float, default=None, help="L2 on ego embeddings (default: 1e-3 bpr/bce, 1e-4 item)")
    g.add_argument("--user-sampling", choices=USER_SAMPLINGS, default=None,
                   help="users of a step: uniform (bpr/bce: a user, then one of its positives, as LightGCN's sampler), "
                        "or degree (in proportion to their training degree: bpr/bce draw interactions uniformly); "
                        "default: degree for bpr/bce, uniform for item")
    g.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop at the first evaluation after this much training + validation wall time (data loading "
                        "and the PPR table are timed apart); --resume continues within the same budget")
    g.add_argument("--refit", action=argparse.BooleanOptionalAction, default=D.refit,
                   help="after selecting on validation, train again from scratch on train + validation for the "
                        "selected number of steps and test that model (summary.json: refit/<metric>)")
    g.add_argument("--seed", type=int, default=D.seed)
    g = p.add_argument_group("ITEM loss and negatives")
    g.add_argument("--item-metric", default=D.item_metric, choices=ITEM_METRICS,
                   help="smooth metric the ITEM loss maximises (default ndcg+recall: 1 - NDCG~ plus 1 - Recall@20~)")
    g.add_argument("--tau", type=float, default=D.tau, help="smooth-rank temperature")
    g.add_argument("--tau-k", type=float, default=D.tau_k,
                   help="softness of the smooth recall's rank <= k step (--item-metric recall or ndcg+recall)")
    g.add_argument("--rank-estimate", choices=RANK_ESTIMATES, default=D.rank_estimate,
                   help="list: smooth rank within the sampled list; catalogue: negatives' terms weighted by "
                        "(|I| - |P_u|) / N so the rank estimates the full-catalogue rank (DESIGN.md)")
    g.add_argument("--rank-slope", type=float, default=D.rank_slope,
                   help="linear tail of the smooth rank for negatives scored above a positive (SupRank; 0: off)")
    g.add_argument("--rank-margin", type=float, default=D.rank_margin,
                   help="score gap beyond which the --rank-slope tail starts (SupRank's delta; default 0: at the tie)")
    g.add_argument("--positive-pairs", choices=POSITIVE_PAIRS, default=D.positive_pairs,
                   help="positive-vs-positive terms of the smooth rank: smooth (sigmoid), detach (its value, no "
                        "gradient: positives only rise above negatives; default), exact (the 0/1 step, no gradient)")
    g.add_argument("--recall-ks", type=int_list, default=D.recall_ks,
                   help="cut-offs of the smooth recall term; several (e.g. 1,2,4,8,16) average their recalls")
    g.add_argument("--calibration", type=float, default=D.calibration,
                   help="weight of a BPR term on each list's positive-negative pairs, added to the ITEM loss (0: off)")
    g.add_argument("--positives", type=int, default=D.positives, help="positives per user list")
    g.add_argument("--negatives", type=int, default=D.negatives, help="negatives per user list")
    g.add_argument("--neg-sampler", default=D.neg_sampler, choices=NEG_SAMPLERS)
    g.add_argument("--hard-ratio", type=float, default=D.hard_ratio, help="share of PPR negatives for --neg-sampler mixed")
    g.add_argument("--ppr-alpha", type=float, default=D.ppr_alpha)
    g.add_argument("--ppr-window", type=int_list, default=D.ppr_window, help="LO,HI ranks of PPR candidates")
    g.add_argument("--curriculum", dest="curriculum_epochs", type=int, default=D.curriculum_epochs,
                   help="raise the PPR share linearly from 0 over this many epochs (0: off)")
    g.add_argument("--shared-negatives", action="store_true",
                   help="one negative set per batch for all its users (a single matmul)")
    g = p.add_argument_group("devices")
    g.add_argument("--shard-embeddings", action="store_true",
                   help="shard the ID embedding tables' rows across devices (default: replicated)")
    g.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host GPU / Cloud TPU slice)")
    g = p.add_argument_group("evaluation and output")
    g.add_argument("--ks", type=int_list, default=D.ks, help="cut-offs K, e.g. 10,20,50")
    g.add_argument("--select-metric", default=D.select_metric, help="validation metric for selection/early stop")
    g.add_argument("--eval-every", type=int, default=D.eval_every, help="evaluate every N epochs")
    g.add_argument("--protocol", default=D.protocol, choices=PROTOCOLS,
                   help="inductive: hold --holdout-users of the users out of training and report on them "
                        "(embedded from --reveal of their items, no gradient step); selection stays on validation")
    g.add_argument("--holdout-users", type=float, default=D.holdout_users,
                   help="inductive: fraction of users held out of training")
    g.add_argument("--user-dropout", type=float, default=D.user_dropout,
                   help="ID dropout: each step zeroes each user's ID embedding with this probability, as an unseen "
                        "user's is at inference, so the layers learn to embed users from their items (default 0)")
    g.add_argument("--reveal", type=float, default=D.reveal,
                   help="inductive: fraction of a held-out user's interactions revealed as graph edges (rest: targets)")
    g.add_argument("--patience", type=int, default=D.patience, help="evaluations without gain before stopping")
    g.add_argument("--out", default=None, help="run directory (default runs/<dataset>-<model>-<loss>-<time>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args) -> TrainConfig:
    values = vars(args).copy()
    values["progress"] = not values.pop("no_progress")
    return TrainConfig(**values).resolve()


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    config = config_from_args(args)  # every option checked before any data is read
    from itemjax.run import fit

    fit(config)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
