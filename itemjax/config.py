"""Run configuration: one frozen dataclass holding every option, validated up front."""

from __future__ import annotations

import dataclasses
from typing import Optional

from itemjax.errors import ConfigError

MODEL_NAMES = ("mf", "lightgcn", "ngcf", "gat", "sage")
LOSS_NAMES = ("bpr", "bce", "item")
BACKEND_NAMES = ("auto", "segment", "csr")
NEG_SAMPLERS = ("uniform", "ppr", "mixed")
COMPUTE_DTYPES = ("float32", "bfloat16")
ITEM_METRICS = ("ndcg", "recall", "ndcg+recall")
POSITIVE_PAIRS = ("smooth", "detach", "exact")  # ITEM: positive-vs-positive terms of the smooth rank
RANK_ESTIMATES = ("list", "catalogue")  # ITEM: rank within the sampled list, or scaled to all items
USER_SAMPLINGS = ("uniform", "degree")  # users of a step uniformly, or by training degree (every interaction alike)
PROTOCOLS = ("transductive", "inductive")  # itemjax.inductive: users held out of training


#: Per-loss defaults of the options left as None. For BPR/BCE ``batch_size`` counts
#: (user, positive, negative) triples per step; for ITEM it counts users per step.
#: ``user_sampling``: "degree" draws training interactions uniformly (users in proportion to
#: their degree), "uniform" draws a user uniformly, then one of its positives (BPR/BCE) or its list (ITEM).
LOSS_DEFAULTS = {
    "bpr": dict(batch_size=1024, lr=2e-3, l2=1e-3, user_sampling="degree"),
    "bce": dict(batch_size=2048, lr=1e-3, l2=1e-4, user_sampling="degree"),
    "item": dict(batch_size=256, lr=1e-3, l2=1e-4, user_sampling="uniform"),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (what ``experiments/train.py`` exposes)."""

    # data
    dataset: str = "ml-100k"
    data_dir: Optional[str] = None
    sep: Optional[str] = None
    min_rating: Optional[float] = None
    kcore: int = 0
    test_frac: float = 0.2
    valid_frac: float = 0.1
    # model
    model: str = "lightgcn"
    dim: int = 64
    layers: int = 3
    backend: str = "auto"
    compute_dtype: str = "float32"  # propagation and scoring dtype (params and loss stay float32)
    # optimisation
    loss: str = "bpr"
    epochs: int = 1000
    time_budget: Optional[float] = None  # seconds of training + validation; stop at the next evaluation past it
    refit: bool = False  # after selection, retrain on train + valid for the selected steps, test that model
    batch_size: Optional[int] = None  # None: the loss's default (LOSS_DEFAULTS)
    lr: Optional[float] = None
    l2: Optional[float] = None
    # ITEM / list-wise losses (batch_size then counts users per step)
    item_metric: str = "ndcg+recall"
    tau: float = 0.1
    tau_k: float = 30.0  # softness of the rank <= k step of the smooth recall (1.0 gives no gradient at start)
    rank_estimate: str = "list"  # "catalogue": negatives' terms weighted (|I| - |P_u|) / N
    rank_slope: float = 0.0  # SupRank linear tail of the smooth rank (0: plain sigmoid)
    rank_margin: float = 0.0  # where the linear tail starts: score gap delta >= 0 beyond the tie
    positive_pairs: str = "detach"  # positive-vs-positive terms: smooth, detach (value, no gradient), exact step
    recall_ks: tuple = (20,)  # cut-offs of the smooth recall term (several: their mean, as ROADMAP's 1,2,4,8,16)
    calibration: float = 0.0  # weight of a BPR term on the list's positive-negative pairs
    user_sampling: Optional[str] = None  # "uniform" or "degree" (prob. ~ training degree); None: LOSS_DEFAULTS
    positives: int = 32
    negatives: int = 256
    neg_sampler: str = "uniform"
    hard_ratio: float = 0.5
    ppr_alpha: float = 0.15
    ppr_window: tuple = (10, 100)
    curriculum_epochs: int = 0  # >0: hard share rises linearly from 0 over this many epochs
    shared_negatives: bool = False  # one negative set per batch, scored by a single matmul
    # evaluation and selection
    ks: tuple = (10, 20, 50)
    select_metric: str = "ndcg@20"
    eval_every: int = 5
    patience: int = 10
    eval_chunk: int = 1024
    protocol: str = "transductive"  # "inductive": final report on users held out of training
    holdout_users: float = 0.2  # inductive: fraction of users held out of training
    user_dropout: float = 0.0  # ID dropout: zero each user's ID row with this probability per step
    reveal: float = 0.5  # inductive: fraction of a held-out user's interactions revealed as edges
    # devices (itemjax.distributed): a 1-D mesh over every device, users split across it
    shard_embeddings: bool = False  # shard the ID tables' rows across devices (default replicated)
    distributed: bool = False  # call jax.distributed.initialize() first (multi-host)
    # bookkeeping
    seed: int = 0
    out: Optional[str] = None
    resume: bool = False
    progress: bool = True

    def resolve(self) -> "TrainConfig":
        """Validate, then fill the options left as None from :data:`LOSS_DEFAULTS`."""
        self.validate()
        fill = {k: v for k, v in LOSS_DEFAULTS[self.loss].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill).validate()

    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` naming the first invalid option; return self."""

        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)

        need(self.model in MODEL_NAMES, f"unknown --model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        need(self.loss in LOSS_NAMES, f"unknown --loss {self.loss!r}; choose one of {', '.join(LOSS_NAMES)}")
        need(self.backend in BACKEND_NAMES, f"unknown --backend {self.backend!r}; choose one of {', '.join(BACKEND_NAMES)}")
        need(self.neg_sampler in NEG_SAMPLERS, f"unknown --neg-sampler {self.neg_sampler!r}; choose one of {', '.join(NEG_SAMPLERS)}")
        need(self.compute_dtype in COMPUTE_DTYPES,
             f"unknown --compute-dtype {self.compute_dtype!r}; choose one of {', '.join(COMPUTE_DTYPES)}")
        need(self.item_metric in ITEM_METRICS, f"unknown --item-metric {self.item_metric!r}; choose one of {', '.join(ITEM_METRICS)}")
        for name in ("dim", "epochs", "eval_every", "patience", "positives", "negatives", "eval_chunk"):
            need(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        need(self.layers >= 0, f"--layers must be >= 0 (got {self.layers})")
        need(self.curriculum_epochs >= 0, f"--curriculum must be >= 0 (got {self.curriculum_epochs})")
        need(not (self.curriculum_epochs and self.neg_sampler == "uniform"),
             "--curriculum needs PPR negatives: pass --neg-sampler ppr or mixed")
        need(self.kcore >= 0, f"--kcore must be >= 0 (got {self.kcore})")
        need(self.batch_size is None or self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})")
        need(self.lr is None or self.lr > 0, f"--lr must be > 0 (got {self.lr})")
        need(self.l2 is None or self.l2 >= 0, f"--l2 must be >= 0 (got {self.l2})")
        need(self.tau > 0, f"--tau must be > 0 (got {self.tau})")
        need(self.time_budget is None or self.time_budget > 0, f"--time-budget must be > 0 seconds (got {self.time_budget})")
        need(not (self.refit and self.valid_frac == 0),
             "--refit retrains on train + validation after selecting on validation: it needs --valid-frac > 0")
        need(not (self.refit and self.protocol != "transductive"), "--refit is for --protocol transductive only")
        need(self.user_sampling is None or self.user_sampling in USER_SAMPLINGS,
             f"unknown --user-sampling {self.user_sampling!r}; choose one of {', '.join(USER_SAMPLINGS)}")
        need(self.rank_estimate in RANK_ESTIMATES,
             f"unknown --rank-estimate {self.rank_estimate!r}; choose one of {', '.join(RANK_ESTIMATES)}")
        need(self.tau_k > 0, f"--tau-k must be > 0 (got {self.tau_k})")
        need(self.positive_pairs in POSITIVE_PAIRS,
             f"unknown --positive-pairs {self.positive_pairs!r}; choose one of {', '.join(POSITIVE_PAIRS)}")
        need(self.rank_margin >= 0, f"--rank-margin must be >= 0 (got {self.rank_margin})")
        need(len(self.recall_ks) >= 1 and all(k >= 1 for k in self.recall_ks),
             f"--recall-ks must be positive integers (got {self.recall_ks})")
        need(self.calibration >= 0, f"--calibration must be >= 0 (got {self.calibration}); 0 turns it off")
        need(self.rank_slope >= 0, f"--rank-slope must be >= 0 (got {self.rank_slope}); 0 is the plain sigmoid")
        need(0 < self.test_frac < 1, f"--test-frac must be in (0, 1) (got {self.test_frac})")
        need(0 <= self.valid_frac < 1, f"--valid-frac must be in [0, 1) (got {self.valid_frac})")
        need(0 <= self.hard_ratio <= 1, f"--hard-ratio must be in [0, 1] (got {self.hard_ratio})")
        need(0 < self.ppr_alpha < 1, f"--ppr-alpha must be in (0, 1) (got {self.ppr_alpha})")
        need(len(self.ppr_window) == 2, f"--ppr-window must be two ranks LO,HI (got {','.join(map(str, self.ppr_window))})")
        lo, hi = self.ppr_window
        need(0 <= lo < hi, f"--ppr-window must be LO,HI with 0 <= LO < HI (got {lo},{hi})")
        need(len(self.ks) >= 1 and all(k >= 1 for k in self.ks), f"--ks must be positive integers (got {self.ks})")
        name, _, k = self.select_metric.partition("@")
        need(
            name in ("recall", "ndcg", "precision", "hitrate") and k.isdigit() and int(k) in self.ks,
            f"--select-metric {self.select_metric!r} must be recall|ndcg|precision|hitrate@K with K in --ks {self.ks}",
        )
        need(self.protocol in PROTOCOLS, f"unknown --protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        need(0 < self.holdout_users < 1, f"--holdout-users must be in (0, 1) (got {self.holdout_users})")
        need(0 <= self.user_dropout < 1, f"--user-dropout must be in [0, 1) (got {self.user_dropout})")
        need(0 < self.reveal < 1, f"--reveal must be in (0, 1) (got {self.reveal})")
        need(not (self.protocol == "inductive" and (self.model == "mf" or self.layers == 0)),
             "--protocol inductive embeds unseen users by message passing: use a graph --model with --layers >= 1")
        need(not (self.resume and not self.out), "--resume needs --out DIR naming the run directory to continue")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
