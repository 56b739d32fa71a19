"""Run configuration: one frozen dataclass holding every option, validated up front."""

from __future__ import annotations

import dataclasses
from typing import Optional

from itemjax.errors import ConfigError

MODEL_NAMES = ("mf", "lightgcn", "ngcf", "gat", "sage")
LOSS_NAMES = ("bpr", "bce", "item", "neuralndcg", "softmax")
BACKEND_NAMES = ("auto", "segment", "csr", "native")  # native: itemjax.native's C++ kernel (CPU; csr when not built)
NEG_SAMPLERS = ("uniform", "ppr", "mixed", "mixgcf")
PPR_SAMPLERS = ("ppr", "mixed")  # the samplers that need the PPR candidate table
# itemjax.graph.ppr: JAX block power iteration, the same with the native kernel's products, host scipy, or the
# native forward push (approximate: --ppr-eps)
PPR_BACKENDS = ("device", "scipy", "native", "push")
#: Default residual threshold of the forward push (``--ppr-eps``, ``eps`` of itemjax.graph.ppr): the largest eps
#: of the grid whose windows overlap the exact ones by >= 0.95 on ml-100k (0.975); larger catalogues agree less at
#: the same eps (gowalla: 0.79 at 1e-5, 0.94 at 1e-6), see docs/design.md#ppr-hard-negatives.
PPR_PUSH_EPS = 1e-5
SSL_METHODS = ("none", "sgl-ed")
SPLIT_METHODS = ("random", "temporal", "time-cut")  # itemjax.data.split
SSL_MODELS = ("lightgcn", "ngcf")  # models whose propagation reads the graph's (dropped) edge weights
COMPUTE_DTYPES = ("float32", "bfloat16")
#: XLA:CPU's YNNPACK library-fusion kinds (``--cpu-fusions``: a comma list of them, ``xla`` or ``none``).
YNN_FUSION_KINDS = ("dot", "eltwise", "reduce", "individual_dot")
#: ``--cpu-fusions`` by model when left unset (``xla`` otherwise): GAT's step is 2.2x faster on gowalla without
#: YNNPACK's fusions, which speed up ITEM's LightGCN step (benchmarks/RESULTS.md, "Per-step fusion kinds").
MODEL_CPU_FUSIONS = {"gat": "none"}
ITEM_METRICS = ("ndcg", "recall", "ndcg+recall")
POSITIVE_PAIRS = ("smooth", "detach", "exact")  # ITEM: positive-vs-positive terms of the smooth rank
RANK_ESTIMATES = ("list", "catalogue")  # ITEM: rank within the sampled list, or scaled to all items
LR_SCHEDULES = ("constant", "cosine", "exponential", "plateau")  # itemjax.train.step.learning_rate
USER_SAMPLINGS = ("uniform", "degree")  # users of a step uniformly, or by training degree (every interaction alike)
PROTOCOLS = ("transductive", "inductive", "inductive-items")  # itemjax.evaluation.inductive: users / items held out


#: Per-loss defaults of the options left as None. For BPR/BCE ``batch_size`` counts
#: (user, positive, negative) triples per step; for the list-wise losses (ITEM, NeuralNDCG,
#: softmax) it counts users per step.
#: ``user_sampling``: "degree" draws training interactions uniformly (users in proportion to
#: their degree), "uniform" draws a user uniformly, then one of its positives (BPR/BCE) or its list.
LOSS_DEFAULTS = {
    "bpr": dict(batch_size=1024, lr=5e-3, l2=1e-3, user_sampling="uniform", lr_schedule="plateau"),
    "bce": dict(batch_size=2048, lr=1e-3, l2=1e-4, user_sampling="degree"),
    "item": dict(batch_size=256, lr=5e-3, l2=1e-4, user_sampling="uniform", lr_schedule="plateau", weight_decay=0.1),
    "neuralndcg": dict(batch_size=256, lr=1e-3, l2=1e-4, user_sampling="uniform"),
    "softmax": dict(batch_size=256, lr=1e-3, l2=1e-4, user_sampling="uniform"),
}


#: Per-(model, loss) defaults over :data:`LOSS_DEFAULTS`, chosen on ml-100k validation NDCG@20
#: by the tuned architecture table (docs/results.md): models that score with concatenated,
#: row-normalised layers want a softer ITEM temperature and about 10x LightGCN's L2.
MODEL_LOSS_DEFAULTS = {  # tuned before the schedules existed (2026-12-02): constant lr, no weight decay
    **{(m, "bpr"): dict(l2=1e-2, lr=5e-4, lr_schedule="constant") for m in ("mf", "ngcf", "sage")},
    **{(m, "item"): dict(tau=0.3, l2=1e-3, lr=1e-3, lr_schedule="constant", weight_decay=0.0)
       for m in ("mf", "ngcf", "sage")},
}


def option(default, help: str, *, group: str, flag: str | None = None, choices=None, metavar=None):
    """A :class:`TrainConfig` field with everything the command line needs to expose it.

    The parser of ``itemjax train`` is generated from these fields
    (:func:`itemjax.cli.add_config_arguments`): the flag is ``--<name with dashes>`` unless
    ``flag`` says otherwise, its type follows the default (bool: ``--x/--no-x``; tuple:
    comma-separated integers), ``choices`` are checked, and ``help`` is the help text.
    """
    meta = {"help": help, "group": group, "flag": flag, "choices": choices, "metavar": metavar}
    return dataclasses.field(default=default, metadata=meta)


_DATA, _MODEL, _TRAIN, _ITEM, _DEVICES, _EVAL = ("data", "model", "training", "ITEM loss and negatives", "devices",
                                                  "evaluation and output")
_LISTWISE = "NeuralNDCG and sampled softmax (over the ITEM lists)"
_SSL = "self-supervised auxiliary loss"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run, declared once: the ``itemjax train`` / ``experiments/train.py``
    flags, their help and defaults are generated from these fields. Options left ``None`` are
    filled by :meth:`resolve` from :data:`LOSS_DEFAULTS` and :data:`MODEL_LOSS_DEFAULTS`."""

    # data
    dataset: str = option("ml-100k", "ml-100k, ml-1m, gowalla, yelp2018, amazon-book, or a path to a "
                          "user,item[,rating[,ts]] file", group=_DATA)
    data_dir: Optional[str] = option(None, "data root (default: $ITEMJAX_DATA, else ~/.cache/itemjax)", group=_DATA)
    sep: Optional[str] = option(None, "column separator of a user file (default: detected)", group=_DATA)
    min_rating: Optional[float] = option(None, "keep ratings >= this (default: every rating)", group=_DATA)
    kcore: int = option(0, "k-core filter (0: off)", group=_DATA)
    test_frac: float = option(0.2, "per-user fraction held out for test (datasets without a predefined test split)",
                              group=_DATA)
    valid_frac: float = option(0.1, "validation carved from train for early stopping and selection (0: none)",
                               group=_DATA)
    split: str = option("random", "how test and validation are held out: random (per user), temporal (each "
                        "user's latest interactions) or time-cut (everything at or after --cut-date); the last two "
                        "need timestamps", group=_DATA, choices=SPLIT_METHODS)
    cut_date: Optional[str] = option(None, "--split time-cut: the cut, an ISO date (YYYY-MM-DD[THH:MM:SS], UTC) or "
                                     "UNIX seconds", group=_DATA)
    item_features: Optional[str] = option(None, "item side features: genres (MovieLens) or a file of "
                                          "id,feature[,value] lines; a node's ego embedding adds the mean of its "
                                          "features' embeddings", group=_DATA)
    user_features: Optional[str] = option(None, "user side features: demographics (MovieLens age group, gender, "
                                          "occupation) or a file of id,feature[,value] lines", group=_DATA)
    # model
    model: str = option("lightgcn", "graph model", group=_MODEL, choices=MODEL_NAMES)
    dim: int = option(64, "embedding size", group=_MODEL)
    layers: int = option(3, "propagation layers", group=_MODEL)
    backend: str = option("auto", "propagation backend (auto: native on CPU, csr there when the native kernel was not "
                          "built, segment elsewhere; native: itemjax's C++ CPU kernel; csr: XLA's CSR product)", group=_MODEL,
                          choices=BACKEND_NAMES)
    cpu_fusions: Optional[str] = option(
        None, "XLA:CPU's YNNPACK library fusions in the training step: xla (XLA's own choice), none, or a comma list "
        f"of {', '.join(YNN_FUSION_KINDS)} (default: none for gat, xla otherwise); ignored on GPU and TPU",
        group=_MODEL, metavar="KINDS")
    compute_dtype: str = option("float32", "dtype of propagation and scoring (params and loss stay float32); "
                                "bfloat16 for GPU/TPU", group=_MODEL, choices=COMPUTE_DTYPES)
    # optimisation
    loss: str = option("bpr", "training objective", group=_TRAIN, choices=LOSS_NAMES)
    epochs: int = option(1000, "epoch cap", group=_TRAIN)
    time_budget: Optional[float] = option(
        None, "stop at the first evaluation after this much training + validation wall time (data loading and the "
        "PPR table are timed apart); --resume continues within the same budget", group=_TRAIN, metavar="SECONDS")
    refit: bool = option(False, "after selecting on validation, train again from scratch on train + validation for "
                         "the selected number of steps and test that model (summary.json: refit/<metric>)",
                         group=_TRAIN)
    batch_size: Optional[int] = option(None, "triples per step for bpr (default 1024) and bce (2048), users per step "
                                       "for item, neuralndcg and softmax (default 256)", group=_TRAIN)
    lr: Optional[float] = option(None, "Adam learning rate (default: 5e-3 bpr and item, 1e-3 bce, neuralndcg and "
                                 "softmax; 5e-4 bpr and 1e-3 item on mf/ngcf/sage)", group=_TRAIN)
    l2: Optional[float] = option(None, "L2 on ego embeddings (default: 1e-3 bpr, 1e-4 bce and list-wise; 1e-2 bpr and "
                                 "1e-3 item on mf/ngcf/sage)", group=_TRAIN)
    lr_schedule: Optional[str] = option(None, "learning-rate schedule (default: plateau for bpr and item on lightgcn "
                              "and gat, constant otherwise): constant; cosine (from --lr down to --lr-min-ratio "
                              "x --lr over --decay-epochs after the warmup, or over the --time-budget when it is set "
                              "and --decay-epochs is not); exponential (halved every --decay-epochs, floored at "
                              "--lr-min-ratio x --lr); plateau (halved after --lr-patience epochs without a "
                              "validation gain, floored at --lr-min-ratio x --lr)", group=_TRAIN, choices=LR_SCHEDULES)
    lr_patience: int = option(15, "--lr-schedule plateau: epochs without a validation gain (since the best or the last "
                              "halving, checked at evaluations) before the learning rate halves; at most "
                              "10 halvings (lr / 1024); keep it below --patience x --eval-every", group=_TRAIN)
    warmup_epochs: float = option(0.0, "linear learning-rate warmup from 0 over this many epochs, before any "
                                  "--lr-schedule (0: off)", group=_TRAIN)
    decay_epochs: Optional[float] = option(None, "--lr-schedule cosine: epochs of the cosine after the warmup (default: "
                                           "--epochs minus the warmup); exponential: the half-life in epochs "
                                           "(required)", group=_TRAIN)
    lr_min_ratio: float = option(0.0, "floor of --lr-schedule cosine and exponential, as a fraction of --lr",
                                 group=_TRAIN)
    weight_decay: Optional[float] = option(None, "decoupled weight decay (AdamW, optax.adamw): every step shrinks "
                                           "every parameter by lr x this, whether or not its row was in the batch "
                                           "(default: 0.1 for item on lightgcn and gat, else 0; the --l2 penalty acts "
                                           "only on the rows a step samples)", group=_TRAIN)
    clip_norm: Optional[float] = option(None, "clip each step's gradient to this global L2 norm before Adam "
                                        "(optax.clip_by_global_norm; default: off)", group=_TRAIN)
    user_sampling: Optional[str] = option(
        None, "users of a step: uniform (bpr/bce: a user, then one of its positives, as LightGCN's sampler), or "
        "degree (in proportion to their training degree: bpr/bce draw interactions uniformly); default: degree for "
        "bce, uniform for the others (bpr: chosen on ml-100k validation)", group=_TRAIN, choices=USER_SAMPLINGS)
    seed: int = option(0, "seed of the split, the initialisation and every sampled batch", group=_TRAIN)
    # ITEM / list-wise losses (batch_size then counts users per step)
    item_metric: str = option("ndcg+recall", "smooth metric the ITEM loss maximises (ndcg+recall: 1 - NDCG~ plus "
                              "1 - Recall~)", group=_ITEM, choices=ITEM_METRICS)
    tau: Optional[float] = option(None, "smooth-rank temperature (default 0.1; 0.3 on mf/ngcf/sage)", group=_ITEM)
    tau_start: Optional[float] = option(None, "temperature schedule: start the smooth rank at this --tau and move it "
                                        "geometrically to --tau over --tau-epochs (default: a constant --tau)",
                                        group=_ITEM)
    tau_epochs: float = option(0.0, "epochs of the --tau-start schedule", group=_ITEM)
    tau_k: float = option(30.0, "softness of the smooth recall's rank <= k step (1.0 gives no gradient at start)",
                          group=_ITEM)
    rank_estimate: str = option("list", "list: smooth rank within the sampled list; catalogue: negatives' terms "
                                "weighted by (|I| - |P_u|) / N so the rank estimates the full-catalogue rank "
                                "(docs/design.md)", group=_ITEM, choices=RANK_ESTIMATES)
    rank_slope: float = option(0.0, "linear tail of the smooth rank for negatives scored above a positive "
                               "(SupRank; 0: off)", group=_ITEM)
    rank_margin: float = option(0.0, "score gap beyond which the --rank-slope tail starts (SupRank's delta; 0: at "
                                "the tie)", group=_ITEM)
    positive_pairs: str = option("detach", "positive-vs-positive terms of the smooth rank: smooth (sigmoid), detach "
                                 "(its value, no gradient: positives only rise above negatives), exact (the 0/1 "
                                 "step, no gradient)", group=_ITEM, choices=POSITIVE_PAIRS)
    recall_ks: tuple = option((20,), "cut-offs of the smooth recall term; several (e.g. 1,2,4,8,16) average their "
                              "recalls", group=_ITEM)
    tau_by_positives: float = option(0.0, "per-user temperature --tau * (P / P_u) ** this, P = --positives, P_u = "
                                     "the user's positives in its list (<= P): softer ranks for users with fewer "
                                     "training items than a list holds (0: one --tau for all)", group=_ITEM)
    calibration: float = option(0.0, "weight of a BPR term on each list's positive-negative pairs, added to the "
                                "ITEM loss (0: off)", group=_ITEM)
    positives: int = option(32, "positives per user list", group=_ITEM)
    negatives: int = option(256, "negatives per user list", group=_ITEM)
    neg_sampler: str = option("uniform", "negatives: uniform non-training items, PPR hard negatives, a mix, or "
                              "mixgcf (--loss bpr: one negative synthesised from --mixgcf-candidates uniform ones "
                              "by positive and hop mixing, MixGCF)", group=_ITEM, choices=NEG_SAMPLERS)
    mixgcf_candidates: int = option(64, "--neg-sampler mixgcf: candidate negatives per (user, positive), M "
                                    "(MixGCF's yelp2018 setting)", group=_ITEM)
    hard_ratio: float = option(0.5, "share of PPR negatives for --neg-sampler mixed", group=_ITEM)
    ppr_alpha: float = option(0.15, "PPR restart probability", group=_ITEM)
    ppr_window: tuple = option((10, 100), "LO,HI ranks of PPR candidates", group=_ITEM)
    ppr_backend: str = option("device", "where the PPR table's power iteration runs: device (jitted JAX on the "
                              "default device; on CPU one core, about 2x faster than scipy on gowalla), scipy (the "
                              "host, one core) or native (device's iteration on itemjax's C++ CPU kernel; device "
                              "when it was not built); same table up to swaps of tied items "
                              "(docs/design.md#ppr-hard-negatives); push: approximate PPR by forward push in "
                              "itemjax's C++ library, threads, residual threshold --ppr-eps (device when it was not "
                              "built)", group=_ITEM, choices=PPR_BACKENDS)
    ppr_eps: float = option(PPR_PUSH_EPS, "--ppr-backend push: residual threshold eps of the forward push (push node v "
                            "while its residual r(v) > eps * deg(v)); smaller: closer to the exact table, slower; the "
                            "default agrees with it on 0.975 of the window on ml-100k, on 0.78 on gowalla, where 1e-6 "
                            "gives 0.94 (docs/design.md#ppr-hard-negatives)", group=_ITEM)
    curriculum_epochs: int = option(0, "raise the PPR share linearly from 0 over this many epochs (0: off)",
                                    group=_ITEM, flag="--curriculum")
    shared_negatives: bool = option(False, "one negative set per batch for all its users (a single matmul)",
                                    group=_ITEM)
    # NeuralNDCG and sampled softmax: the same lists (--positives, --negatives, --neg-sampler)
    neuralndcg_temperature: float = option(1.0, "NeuralSort temperature of --loss neuralndcg (smaller: closer to "
                                           "the hard sort, less smooth)", group=_LISTWISE)
    sinkhorn_iters: int = option(50, "Sinkhorn iterations making the NeuralSort matrix doubly stochastic (0: off)",
                                 group=_LISTWISE)
    neuralndcg_k: Optional[int] = option(None, "cut-off of NeuralNDCG (default: the whole list)", group=_LISTWISE)
    softmax_temperature: float = option(1.0, "temperature of --loss softmax; scores are raw dot products whose scale "
                                        "the model learns, so 1 (0.05-0.2 is for cosine scores)", group=_LISTWISE)
    logq_correction: bool = option(False, "--loss softmax: subtract log(N Q(n)) from each negative's logit, Q(n) "
                                   "the --neg-sampler's probability of n per draw (docs/design.md)", group=_LISTWISE)
    # self-supervised auxiliary loss (any --loss)
    ssl: str = option("none", "auxiliary self-supervised loss added to --loss: sgl-ed (two edge-dropout views of "
                      "the training graph per epoch, InfoNCE between their embeddings of the batch's users and "
                      "items; SGL-ED, lightgcn and ngcf)", group=_SSL, choices=SSL_METHODS)
    ssl_weight: float = option(0.1, "weight lambda of the --ssl loss", group=_SSL)
    ssl_temperature: float = option(0.2, "InfoNCE temperature of --ssl (on cosine similarities)", group=_SSL)
    ssl_drop: float = option(0.1, "--ssl sgl-ed: share of training interactions each view drops", group=_SSL)
    # evaluation and selection
    ks: tuple = option((10, 20, 50), "cut-offs K, e.g. 10,20,50", group=_EVAL)
    select_metric: str = option("ndcg@20", "validation metric for selection and early stopping", group=_EVAL)
    eval_every: int = option(5, "evaluate every N epochs", group=_EVAL)
    patience: int = option(10, "evaluations without gain before stopping", group=_EVAL)
    popularity_guard: float = option(0.05, "until validation --select-metric beats the popularity ranking's by this "
                                     "share, evaluations count neither toward --patience nor toward --lr-patience (a "
                                     "model still ranking by popularity is not stopped there; 0: off)", group=_EVAL)
    diagnostics: bool = option(False, "add to every metrics.jsonl record the gradient norm of each loss term, the "
                               "embedding norms, the share of unsaturated sigmoid pairs and the overlap of the top 20 "
                               "with the popularity ranking (itemjax.train.diagnostics; docs/tuning.md)", group=_EVAL)
    eval_chunk: int = option(1024, "users scored per evaluation chunk", group=_EVAL)
    protocol: str = option("transductive", "inductive: hold --holdout-users of the users out of training and report "
                           "on them (embedded from --reveal of their items, no gradient step); inductive-items: hold "
                           "--holdout-items of the items out and rank them for their users from --item-features "
                           "alone; selection stays on validation", group=_EVAL, choices=PROTOCOLS)
    holdout_users: float = option(0.2, "inductive: fraction of users held out of training", group=_EVAL)
    user_dropout: float = option(0.0, "ID dropout: each step zeroes each user's ID embedding with this probability, "
                                 "as an unseen user's is at inference, so the layers learn to embed users from their "
                                 "items", group=_EVAL)
    holdout_items: float = option(0.1, "inductive-items: fraction of items held out of training (cold-start "
                                  "items)", group=_EVAL)
    item_dropout: float = option(0.0, "ID dropout: each step zeroes each item's ID embedding with this probability, "
                                 "as a cold-start item's is at inference, so the model learns to embed items from "
                                 "their features", group=_EVAL)
    reveal: float = option(0.5, "inductive: fraction of a held-out user's interactions revealed as graph edges "
                           "(rest: targets)", group=_EVAL)
    # devices (itemjax.parallel.distributed): a 1-D mesh over every device, users split across it
    shard_embeddings: bool = option(False, "shard the ID embedding tables' rows across devices (default: "
                                    "replicated)", group=_DEVICES)
    distributed: bool = option(False, "several processes (hosts) run together: call jax.distributed.initialize() "
                               "first (multi-host GPU / Cloud TPU slice, or several CPU processes); every process runs "
                               "the same command, process 0 alone writes the run files; needs --out on a filesystem "
                               "every process sees", group=_DEVICES)
    coordinator_address: Optional[str] = option(
        None, "--distributed: HOST:PORT where process 0 serves the coordinator, the same for every process "
        "(default: $JAX_COORDINATOR_ADDRESS, else detected on Cloud TPU, SLURM and Open MPI)", group=_DEVICES,
        metavar="HOST:PORT")
    num_processes: Optional[int] = option(None, "--distributed: how many processes run (default: $JAX_NUM_PROCESSES, "
                                          "else detected)", group=_DEVICES)
    process_id: Optional[int] = option(None, "--distributed: this process's rank, 0 .. --num-processes - 1; process 0 "
                                       "serves the coordinator and writes the run files (default: $JAX_PROCESS_ID, "
                                       "else detected)", group=_DEVICES)
    heartbeat_timeout: int = option(100, "--distributed: seconds without a heartbeat after which a process counts as "
                                    "dead; every other process then stops with an error naming it",
                                    group=_DEVICES, metavar="SECONDS")
    # bookkeeping
    out: Optional[str] = option(None, "run directory (default runs/<dataset>-<model>-<loss>-<time>)", group=_EVAL)
    resume: bool = option(False, "continue the run in --out from its latest checkpoint", group=_EVAL)
    progress: bool = option(True, "progress bars", group=_EVAL)
    tensorboard: bool = option(False, "write TensorBoard scalars under <out>/tensorboard (the tracking extra: "
                               "pip install 'itemjax[tracking]')", group=_EVAL)

    def resolve(self) -> "TrainConfig":
        """Validate, then fill the options left as None from :data:`LOSS_DEFAULTS`."""
        self.validate()
        defaults = {**_GLOBAL_DEFAULTS, **LOSS_DEFAULTS[self.loss], **MODEL_LOSS_DEFAULTS.get((self.model, self.loss), {})}
        if self.valid_frac == 0:  # the plateau rule reads validation: without it the default schedule is constant
            defaults["lr_schedule"] = defaults["lr_schedule"] if defaults["lr_schedule"] != "plateau" else "constant"
        defaults["cpu_fusions"] = MODEL_CPU_FUSIONS.get(self.model, "xla")
        fill = {k: v for k, v in defaults.items() if getattr(self, k) is None}
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
        need(self.cpu_fusions in (None, "xla", "none")
             or all(kind in YNN_FUSION_KINDS for kind in self.cpu_fusions.split(",")),
             f"unknown --cpu-fusions {self.cpu_fusions!r}; choose xla, none, or a comma list of "
             f"{', '.join(YNN_FUSION_KINDS)}")
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
        need(self.tau is None or self.tau > 0, f"--tau must be > 0 (got {self.tau})")
        need(self.time_budget is None or self.time_budget > 0, f"--time-budget must be > 0 seconds (got {self.time_budget})")
        need(not (self.refit and self.valid_frac == 0),
             "--refit retrains on train + validation after selecting on validation: it needs --valid-frac > 0")
        need(not (self.refit and self.protocol != "transductive"), "--refit is for --protocol transductive only")
        need(self.user_sampling is None or self.user_sampling in USER_SAMPLINGS,
             f"unknown --user-sampling {self.user_sampling!r}; choose one of {', '.join(USER_SAMPLINGS)}")
        need(self.rank_estimate in RANK_ESTIMATES,
             f"unknown --rank-estimate {self.rank_estimate!r}; choose one of {', '.join(RANK_ESTIMATES)}")
        need(self.lr_schedule is None or self.lr_schedule in LR_SCHEDULES,
             f"unknown --lr-schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        need(self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0 (got {self.warmup_epochs})")
        need(self.decay_epochs is None or self.decay_epochs > 0, f"--decay-epochs must be > 0 (got {self.decay_epochs})")
        need(not (self.lr_schedule == "exponential" and self.decay_epochs is None),
             "--lr-schedule exponential needs --decay-epochs N (the learning rate's half-life in epochs)")
        need(not (self.decay_epochs is not None and self.lr_schedule in ("constant", "plateau")),
             f"--decay-epochs is for --lr-schedule cosine or exponential (the schedule is {self.lr_schedule})")
        need(self.popularity_guard >= 0, f"--popularity-guard must be >= 0 (got {self.popularity_guard}); 0 turns it off")
        need(self.lr_patience >= 1, f"--lr-patience must be >= 1 (got {self.lr_patience})")
        need(not (self.lr_schedule == "plateau" and self.valid_frac == 0),
             "--lr-schedule plateau halves the learning rate when validation stops improving: it needs --valid-frac > 0")
        need(0 <= self.lr_min_ratio < 1, f"--lr-min-ratio must be in [0, 1) (got {self.lr_min_ratio})")
        need(self.weight_decay is None or self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})")
        need(self.clip_norm is None or self.clip_norm > 0, f"--clip-norm must be > 0 (got {self.clip_norm})")
        need(self.tau_start is None or self.tau_start > 0, f"--tau-start must be > 0 (got {self.tau_start})")
        need(self.tau_epochs >= 0, f"--tau-epochs must be >= 0 (got {self.tau_epochs})")
        need(not (self.tau_start is not None and self.tau_epochs == 0),
             "--tau-start needs --tau-epochs N (the epochs over which the temperature moves to --tau)")
        need(self.tau_k > 0, f"--tau-k must be > 0 (got {self.tau_k})")
        need(self.positive_pairs in POSITIVE_PAIRS,
             f"unknown --positive-pairs {self.positive_pairs!r}; choose one of {', '.join(POSITIVE_PAIRS)}")
        need(self.rank_margin >= 0, f"--rank-margin must be >= 0 (got {self.rank_margin})")
        need(len(self.recall_ks) >= 1 and all(k >= 1 for k in self.recall_ks),
             f"--recall-ks must be positive integers (got {self.recall_ks})")
        need(self.tau_by_positives >= 0,
             f"--tau-by-positives must be >= 0 (got {self.tau_by_positives}); 0 keeps one --tau for all users")
        need(self.calibration >= 0, f"--calibration must be >= 0 (got {self.calibration}); 0 turns it off")
        need(self.rank_slope >= 0, f"--rank-slope must be >= 0 (got {self.rank_slope}); 0 is the plain sigmoid")
        need(self.neuralndcg_temperature > 0,
             f"--neuralndcg-temperature must be > 0 (got {self.neuralndcg_temperature})")
        need(self.sinkhorn_iters >= 0, f"--sinkhorn-iters must be >= 0 (got {self.sinkhorn_iters}); 0 skips Sinkhorn")
        need(self.neuralndcg_k is None or self.neuralndcg_k >= 1,
             f"--neuralndcg-k must be >= 1 (got {self.neuralndcg_k}); leave it out for the whole list")
        need(self.softmax_temperature > 0, f"--softmax-temperature must be > 0 (got {self.softmax_temperature})")
        need(not (self.logq_correction and self.loss != "softmax"),
             f"--logq-correction corrects the sampled softmax only; pass --loss softmax (got --loss {self.loss})")
        need(self.split in SPLIT_METHODS, f"unknown --split {self.split!r}; choose one of {', '.join(SPLIT_METHODS)}")
        need(not (self.split == "time-cut" and not self.cut_date), "--split time-cut needs --cut-date (a date or "
             "UNIX seconds)")
        need(not (self.cut_date and self.split != "time-cut"), "--cut-date is for --split time-cut")
        need(self.mixgcf_candidates >= 1, f"--mixgcf-candidates must be >= 1 (got {self.mixgcf_candidates})")
        need(not (self.neg_sampler == "mixgcf" and self.loss != "bpr"),
             f"--neg-sampler mixgcf synthesises BPR negatives; pass --loss bpr (got --loss {self.loss})")
        need(self.ssl in SSL_METHODS, f"unknown --ssl {self.ssl!r}; choose one of {', '.join(SSL_METHODS)}")
        need(self.ssl == "none" or self.model in SSL_MODELS,
             f"--ssl {self.ssl} drops edges of the propagation graph: use --model {' or '.join(SSL_MODELS)} "
             f"(got --model {self.model})")
        need(self.ssl == "none" or self.layers >= 1, "--ssl needs message passing: use --layers >= 1")
        need(self.ssl_weight >= 0, f"--ssl-weight must be >= 0 (got {self.ssl_weight})")
        need(self.ssl_temperature > 0, f"--ssl-temperature must be > 0 (got {self.ssl_temperature})")
        need(0 <= self.ssl_drop < 1, f"--ssl-drop must be in [0, 1) (got {self.ssl_drop})")
        need(0 < self.test_frac < 1, f"--test-frac must be in (0, 1) (got {self.test_frac})")
        need(0 <= self.valid_frac < 1, f"--valid-frac must be in [0, 1) (got {self.valid_frac})")
        need(0 <= self.hard_ratio <= 1, f"--hard-ratio must be in [0, 1] (got {self.hard_ratio})")
        need(self.ppr_backend in PPR_BACKENDS,
             f"unknown --ppr-backend {self.ppr_backend!r}; choose one of {', '.join(PPR_BACKENDS)}")
        need(0 < self.ppr_alpha < 1, f"--ppr-alpha must be in (0, 1) (got {self.ppr_alpha})")
        need(self.ppr_eps > 0, f"--ppr-eps must be > 0 (got {self.ppr_eps}); e.g. --ppr-eps {PPR_PUSH_EPS:g}")
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
        need(0 < self.holdout_items < 1, f"--holdout-items must be in (0, 1) (got {self.holdout_items})")
        need(0 <= self.item_dropout < 1, f"--item-dropout must be in [0, 1) (got {self.item_dropout})")
        need(not (self.protocol == "inductive-items" and not self.item_features),
             "--protocol inductive-items ranks cold-start items by their side features: pass --item-features "
             "genres (MovieLens) or --item-features FILE")
        need(0 < self.reveal < 1, f"--reveal must be in (0, 1) (got {self.reveal})")
        need(not (self.protocol == "inductive" and (self.model == "mf" or self.layers == 0)),
             "--protocol inductive embeds unseen users by message passing: use a graph --model with --layers >= 1")
        need(not (self.resume and not self.out), "--resume needs --out DIR naming the run directory to continue")
        for name in ("coordinator_address", "num_processes", "process_id"):
            need(getattr(self, name) is None or self.distributed,
                 f"--{name.replace('_', '-')} is for multi-process runs: add --distributed")
        need(self.num_processes is None or self.num_processes >= 1,
             f"--num-processes must be >= 1 (got {self.num_processes})")
        need(self.process_id is None or self.process_id >= 0, f"--process-id must be >= 0 (got {self.process_id})")
        need(self.process_id is None or self.num_processes is None or self.process_id < self.num_processes,
             f"--process-id must be below --num-processes {self.num_processes} (got {self.process_id}); ranks "
             "are 0 .. N-1")
        need(self.heartbeat_timeout >= 1, f"--heartbeat-timeout must be >= 1 second (got {self.heartbeat_timeout})")
        need(not (self.distributed and not self.out),
             "--distributed needs --out DIR, the same for every process, on a filesystem every process sees "
             "(process 0 writes the run files there, every process its share of the checkpoints)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, *, strict: bool = False, where: str = "the configuration") -> "TrainConfig":
        """A config from ``to_dict()`` output or a run's ``config.json["config"]`` (JSON lists back
        to tuples). Unknown keys are skipped (an option of a newer version), or with ``strict``
        raise :class:`ConfigError` naming the first."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if strict and unknown:
            raise ConfigError(f"{where}: unknown option {unknown[0]!r}; options are train.py's, with underscores")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})


#: Defaults of options that are None-able only so that a model can override them.
_GLOBAL_DEFAULTS = {"tau": 0.1, "lr_schedule": "constant", "weight_decay": 0.0}

#: Options that never change what a run computes (bookkeeping, display, where files live).
BOOKKEEPING = frozenset({"out", "resume", "progress", "data_dir", "eval_chunk", "distributed", "coordinator_address",
                         "num_processes", "process_id", "heartbeat_timeout", "tensorboard", "diagnostics"})


#: What every run had before these options existed (2026-12-04; cpu_fusions 2026-12-07): a run whose config.json
#: lacks one trained with this value (constant learning rate, no weight decay, no popularity guard, XLA's fusions).
BEFORE_OPTION = {"lr_schedule": "constant", "weight_decay": 0.0, "popularity_guard": 0.0, "cpu_fusions": "xla"}


def _uses_ppr(c: dict) -> bool:
    return c.get("neg_sampler") in PPR_SAMPLERS


#: Options a run reads only under a condition on its other options (a config's JSON form -> bool):
#: the PPR table's options only with PPR negatives, the push's threshold only with the push. Two
#: configs that differ in such an option where neither reads it compute the same run.
USED_ONLY_IF = {
    "ppr_alpha": _uses_ppr, "ppr_window": _uses_ppr, "ppr_backend": _uses_ppr, "curriculum_epochs": _uses_ppr,
    "ppr_eps": lambda c: _uses_ppr(c) and c.get("ppr_backend") == "push",
    "hard_ratio": lambda c: c.get("neg_sampler") == "mixed",
}


def config_diff(current: dict, saved: dict, *, ignore=()) -> dict:
    """``{option: (saved value, current value)}`` where two configs (``to_dict()`` or a run's
    ``config.json["config"]``) differ, options in ``ignore`` aside.

    Both sides are compared in their JSON form (tuples as lists). An option missing from an
    older run's config.json is taken at the default it had then: :data:`BEFORE_OPTION` for the
    options whose arrival changed what a run computes, else today's field default, or for
    per-loss options (``None`` fields), the resolved value of ``current`` (so that it is not a
    difference). An option of :data:`USED_ONLY_IF` that neither config reads is not a difference
    (a BPR run with uniform negatives resumes after ``--ppr-eps``'s default changed). Used by
    ``--resume``, the table scripts, recommend and the tests.
    """
    import json

    current = json.loads(json.dumps(current))
    saved = json.loads(json.dumps(saved))
    field_defaults = json.loads(json.dumps(TrainConfig().to_dict()))
    diffs = {}
    for key, value in current.items():
        if key in ignore:
            continue
        if key in saved:
            old = saved[key]
        elif key in BEFORE_OPTION:
            old = BEFORE_OPTION[key]
        elif field_defaults.get(key) is not None:
            old = field_defaults[key]
        else:
            old = value
        if old != value:
            diffs[key] = (old, value)
    unused = [k for k in diffs if k in USED_ONLY_IF
              and not USED_ONLY_IF[k](current) and not USED_ONLY_IF[k]({**current, **saved})]
    for key in unused:
        del diffs[key]
    return diffs
