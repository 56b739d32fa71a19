"""The training loop: one jitted ``train_step``, evaluation, early stopping, checkpoints.

Functional core: :func:`train_step` is a module-level pure function
``train_step(state, batch, key) -> (state, metrics)``, jitted once per run. All sampling
happens inside it on the device; per-step randomness is ``fold_in(key, state.step)``, so a
run resumed from a checkpoint draws exactly the batches the uninterrupted run would have.

Host side (:func:`fit`): data loading and splitting, graph building, the epoch loop with a
tqdm bar, evaluation every ``eval_every`` epochs on the validation split, early stopping,
orbax checkpoints (``latest`` and ``best``), and the run directory::

    <out>/config.json      every option, package versions, devices, dataset checksums
    <out>/metrics.jsonl    one JSON object per evaluation (epoch, split, metrics, seconds)
    <out>/summary.json     test metrics of the selected checkpoint, train seconds, epochs
    <out>/checkpoints/     orbax: latest/ and best/
"""

from __future__ import annotations

import functools
import math
import pathlib
import platform
import sys
import time
from typing import Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from itemjax import sampling
from itemjax.distributed import shard_rows
from itemjax.config import TrainConfig
from itemjax.errors import ConfigError
from itemjax.losses import bpr_loss, l2_penalty
from itemjax.listwise_losses import neural_ndcg_loss, sampled_softmax_loss
from itemjax.ranking_losses import bce_loss, item_loss
from itemjax.models import MODELS, id_embeddings
from itemjax.propagation import DeviceGraph


class TrainState(train_state.TrainState):
    """Flax TrainState plus the (static) objective ``objective(params, apply_fn, batch, key, step)``."""

    objective: Callable = flax.struct.field(pytree_node=False)


@flax.struct.dataclass
class Batch:
    """What every step reads: the propagation graph and the training interactions (device)."""

    graph: DeviceGraph
    data: sampling.TrainData


@jax.jit
def train_step(state: TrainState, batch: Batch, key: jax.Array):
    """One optimisation step. Returns ``(new_state, {"loss": scalar, ...})``."""
    step_key = jax.random.fold_in(key, state.step)

    def objective(params):
        return state.objective(params, state.apply_fn, batch, step_key, state.step)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, {"loss": loss, **aux}


# ----------------------------------------------------------------------------- objectives


def _forward(params, apply_fn, batch, key, user_dropout: float = 0.0):
    """Final ``(user_emb, item_emb)`` of the training forward pass.

    ``user_dropout`` (ID dropout, for the inductive protocol): each user's ID embedding row is
    zeroed with this probability for the whole step (no rescaling), the convention an unseen
    user gets at inference (:func:`itemjax.inductive.zero_user_embeddings`), so the layers learn
    to represent a user from its neighbours alone. Mask stream: ``fold_in(key, 1)``; with 0 the
    forward pass and its randomness are unchanged.
    """
    if user_dropout > 0:
        ids = params["ids"]
        table = ids["user_embedding"]
        keep = jax.random.bernoulli(jax.random.fold_in(key, 1), 1.0 - user_dropout, (table.shape[0], 1))
        params = {**params, "ids": {**ids, "user_embedding": table * keep.astype(table.dtype)}}
    return apply_fn({"params": params}, batch.graph, train=True, rngs={"dropout": key})


def bpr_objective(params, apply_fn, batch: Batch, key, step, *, batch_size: int, l2: float, hard_share: float,
                  user_dropout: float = 0.0, user_sampling: str = "degree"):
    """BPR over ``batch_size`` training pairs, one negative each.

    Pairs from :func:`itemjax.sampling.sample_pairs`: interaction-uniform (``"degree"``) or a
    user uniformly, then one of its positives (``"uniform"``, LightGCN's sampler).

    ``L = mean softplus(s_un - s_up) + l2 * 0.5 * (||e_u||^2 + ||e_p||^2 + ||e_n||^2) / B``
    on the ego (layer-0) embeddings, as in LightGCN.
    """
    k_fwd, k_edge, k_neg = jax.random.split(key, 3)
    users, pos = sampling.sample_pairs(k_edge, batch.data, batch_size, user_sampling)
    users, pos = shard_rows(users), shard_rows(pos)  # triples split across the mesh's data axis
    neg = sampling.negatives(k_neg, batch.data, users, 1, hard_share)[:, 0]
    user_emb, item_emb = _forward(params, apply_fn, batch, k_fwd, user_dropout)
    u = user_emb[users]
    pos_scores = jnp.sum(u * item_emb[pos], axis=-1, dtype=jnp.float32)  # loss in float32 whatever the compute dtype
    neg_scores = jnp.sum(u * item_emb[neg], axis=-1, dtype=jnp.float32)
    loss = bpr_loss(pos_scores, neg_scores)
    ego_u, ego_i = id_embeddings(params)
    reg = l2_penalty(ego_u[users], ego_i[pos], ego_i[neg], batch_size=batch_size)
    return loss + l2 * reg, {"rank_loss": loss}


def bce_objective(params, apply_fn, batch: Batch, key, step, *, batch_size: int, l2: float, hard_share,
                  user_dropout: float = 0.0, user_sampling: str = "degree"):
    """Binary cross-entropy over ``batch_size`` training pairs (as BPR's) and as many sampled non-edges.

    ``L = mean softplus(-s_up) + mean softplus(s_un)`` plus the same L2 term as BPR.
    """
    k_fwd, k_edge, k_neg = jax.random.split(key, 3)
    users, pos = sampling.sample_pairs(k_edge, batch.data, batch_size, user_sampling)
    users, pos = shard_rows(users), shard_rows(pos)
    neg = sampling.negatives(k_neg, batch.data, users, 1, hard_share)[:, 0]
    user_emb, item_emb = _forward(params, apply_fn, batch, k_fwd, user_dropout)
    u = user_emb[users]
    loss = bce_loss(jnp.sum(u * item_emb[pos], -1, dtype=jnp.float32), jnp.sum(u * item_emb[neg], -1, dtype=jnp.float32))
    ego_u, ego_i = id_embeddings(params)
    reg = l2_penalty(ego_u[users], ego_i[pos], ego_i[neg], batch_size=batch_size)
    return loss + l2 * reg, {"rank_loss": loss}


def item_objective(params, apply_fn, batch: Batch, key, step, *, n_users: int, n_pos: int, n_neg: int,
                   metric: str, tau: float, k: int, l2: float, hard_share, shared_negatives: bool,
                   slope: float = 0.0, positive_pairs: str = "smooth", users_by_degree: bool = False,
                   tau_k: float = 1.0, catalogue_rank: bool = False, user_dropout: float = 0.0, margin: float = 0.0,
                   calibration: float = 0.0):
    """ITEM: ``mean_u (1 - smooth_metric_u)`` over user-centric lists (docs/design.md).

    Each step draws ``n_users`` users; for each, up to ``n_pos`` of its training items (masked
    padding when fewer) and ``n_neg`` negatives (PPR hard / uniform mix, see
    :func:`itemjax.sampling.negatives`), all scored against ONE propagation of the GNN. The list
    of a user is ``[positives | negatives]``, ``scores [B, P + N]``.

    ``shared_negatives`` (PinSAGE): one set of ``n_neg`` items for the whole batch, scored by a
    single ``[B, d] x [d, N]`` matmul; entries that are a user's own training items are masked.
    ``hard_share`` may be a callable of the step (curriculum).

    ``k``: the smooth recall's cut-off, or a tuple of them (their mean); ``slope``, ``margin``,
    ``positive_pairs``, ``calibration``: see :func:`itemjax.ranking_losses.item_loss`.

    ``catalogue_rank``: each negative's sigmoid term counts ``(|I| - |P_u|) / N_u`` times
    (``|P_u|`` = the user's training degree, ``N_u`` = its valid negatives), so a positive's
    smooth rank estimates its rank among all ``|I|`` items instead of within the list of
    ``P + N`` (docs/design.md); the Recall@k cut-off then refers to the catalogue rank.
    """
    share = hard_share(step) if callable(hard_share) else hard_share
    lists = user_lists(params, apply_fn, batch, key, share, n_users=n_users, n_pos=n_pos, n_neg=n_neg,
                       shared_negatives=shared_negatives, users_by_degree=users_by_degree, user_dropout=user_dropout)
    data, users = batch.data, lists.users
    negative_weight = 1.0
    if catalogue_rank:
        degree = (data.indptr[users + 1] - data.indptr[users]).astype(jnp.float32)  # [B]
        n_valid = jnp.maximum(lists.neg_where.sum(-1).astype(jnp.float32), 1.0)
        negative_weight = jnp.maximum(data.n_items - degree, 0.0) / n_valid  # [B]
    loss = item_loss(lists.scores, lists.labels, where=lists.where, metric=metric, tau=tau, k=k, tau_k=tau_k,
                     slope=slope, positive_pairs=positive_pairs, margin=margin, calibration=calibration,
                     negative_weight=negative_weight,
                     query=jnp.arange(n_pos, dtype=jnp.int32))  # only positives are ranked: [B, P, L]
    return _with_list_l2(loss, params, lists, l2, n_users)


class UserLists(NamedTuple):
    """One step's user-centric lists, ``[positives | negatives]`` per user (``L = P + N``)."""

    users: jax.Array  # [B] int32
    scores: jax.Array  # [B, L] float32
    labels: jax.Array  # [B, L] 1 at the P positive slots, 0 at the N negative ones
    where: jax.Array  # [B, L] bool: padded positives and (shared) negatives that are training items masked
    pos: jax.Array  # [B, P] item ids (padding: item 0)
    pos_where: jax.Array  # [B, P] bool
    neg_ids: jax.Array  # [B, N] item ids
    neg_where: jax.Array  # [B, N] bool


def user_lists(params, apply_fn, batch: Batch, key, share, *, n_users: int, n_pos: int, n_neg: int,
               shared_negatives: bool, users_by_degree: bool = False, user_dropout: float = 0.0) -> UserLists:
    """The lists every list-wise objective (ITEM, NeuralNDCG, softmax) scores, from one forward pass.

    Draws ``n_users`` users (uniformly, or by training degree with ``users_by_degree``); for each,
    up to ``n_pos`` of its training items (masked padding when fewer) and ``n_neg`` negatives
    (:func:`itemjax.sampling.negatives` with PPR share ``share``). ``shared_negatives``
    (PinSAGE): one set of ``n_neg`` items for the whole batch (the negatives of uniformly drawn
    batch users, ``owners``), scored by a single ``[B, d] x [d, N]`` matmul; entries that are a
    user's own training items are masked. Keys: ``split(key, 5)`` = forward, users, positives,
    negatives, owners.
    """
    k_fwd, k_users, k_pos, k_neg, k_owner = jax.random.split(key, 5)
    data = batch.data
    users = sampling.sample_users(k_users, data, n_users, by_degree=users_by_degree)
    users = shard_rows(users)  # lists split across the data axis
    pos, pos_where = sampling.sample_positives(k_pos, data, users, n_pos)
    user_emb, item_emb = _forward(params, apply_fn, batch, k_fwd, user_dropout)
    u = user_emb[users]  # [B, d]
    pos_scores = jnp.einsum("bd,bpd->bp", u, item_emb[pos], preferred_element_type=jnp.float32)
    if shared_negatives:
        owners = users[jax.random.randint(k_owner, (n_neg,), 0, n_users)]  # hard candidates of batch users
        neg = sampling.negatives(k_neg, data, owners, 1, share)[:, 0]  # [N]
        neg_scores = jnp.matmul(u, item_emb[neg].T, preferred_element_type=jnp.float32)  # [B, N]
        neg_where = ~sampling.is_training_item(data, users[:, None], neg[None, :])
        neg_ids = jnp.broadcast_to(neg[None, :], neg_scores.shape)
    else:
        neg_ids = sampling.negatives(k_neg, data, users, n_neg, share)  # [B, N]
        neg_scores = jnp.einsum("bd,bnd->bn", u, item_emb[neg_ids], preferred_element_type=jnp.float32)
        neg_where = jnp.ones(neg_scores.shape, bool)
    scores = jnp.concatenate([pos_scores, neg_scores], axis=-1)
    labels = jnp.concatenate([jnp.ones_like(pos_scores), jnp.zeros_like(neg_scores)], axis=-1)
    where = jnp.concatenate([pos_where, neg_where], axis=-1)
    return UserLists(users, scores, labels, where, pos, pos_where, neg_ids, neg_where)


def _with_list_l2(loss, params, lists: UserLists, l2: float, n_users: int):
    """``(loss + l2 * LightGCN's L2 on the ego embeddings of the lists, {"rank_loss": loss})``
    (padded positives excluded, divided by the users per step)."""
    total = loss
    if l2 > 0:
        ego_u, ego_i = id_embeddings(params)
        reg = l2_penalty(ego_u[lists.users], ego_i[lists.pos] * lists.pos_where[..., None], ego_i[lists.neg_ids],
                         batch_size=n_users)
        total = loss + l2 * reg
    return total, {"rank_loss": loss}


def negative_log_counts(data: sampling.TrainData, users: jax.Array, neg_ids: jax.Array, share, *,
                        shared_negatives: bool) -> jax.Array:
    """``[B, N]`` ``log(N Q(n))``: log of the expected number of times the step's negative sampler
    draws each negative in ``N`` draws, the logQ correction of the sampled softmax.

    One draw of :func:`itemjax.sampling.negatives` for user ``b`` (``F_b = |I| - deg_b`` items it
    has not trained on, ``W_b`` valid PPR candidates, hard share ``h``) returns ``n`` with
    probability::

        q_b(n) = h 1[n in cand_b] / W_b + (1 - h) 1[n not trained by b] / F_b     (W_b > 0)
        q_b(n) = 1[n not trained by b] / F_b                                       (W_b = 0)

    (a hard slot takes the candidates in a uniformly random order, so each hard slot's marginal
    is uniform over them; uniform sampler: ``h = 0``, ``q_b = 1 / F_b``). Per-user lists:
    ``Q = q_b``. Shared negatives: each of the ``N`` slots is drawn for an owner picked uniformly
    among the ``B`` batch users, so ``Q(n) = mean_b q_b(n)``, the same for every user.
    """
    start = data.indptr[users]
    free = jnp.maximum(data.n_items - (data.indptr[users + 1] - start), 1).astype(jnp.float32)  # [B]
    ids = neg_ids[:1] if shared_negatives else neg_ids  # [1 | B, N]
    not_trained = 1.0
    if shared_negatives:
        not_trained = (~sampling.is_training_item(data, users[:, None], ids)).astype(jnp.float32)  # [B, N]
    q = not_trained / free[:, None]  # [B, N]: q_b(n) of the uniform sampler
    if data.hard_negatives.shape[1] and not (isinstance(share, (int, float)) and share == 0):
        row = data.hard_negatives[users]  # [B, W]
        n_candidates = jnp.sum(row >= 0, axis=-1).astype(jnp.float32)  # [B]
        member = jnp.any((row[:, None, :] == ids[..., None]) & (row[:, None, :] >= 0), axis=-1)  # [B, N]
        hard = share * member / jnp.maximum(n_candidates, 1.0)[:, None] + (1.0 - share) * q
        q = jnp.where(n_candidates[:, None] > 0, hard, q)
    if shared_negatives:
        q = jnp.broadcast_to(jnp.mean(q, axis=0, keepdims=True), neg_ids.shape)
    q = jnp.broadcast_to(q, neg_ids.shape)
    return jnp.log(neg_ids.shape[-1] * jnp.maximum(q, jnp.finfo(jnp.float32).tiny))


def neuralndcg_objective(params, apply_fn, batch: Batch, key, step, *, n_users: int, n_pos: int, n_neg: int,
                         l2: float, hard_share, shared_negatives: bool, temperature: float = 1.0,
                         sinkhorn_iters: int = 50, k=None, users_by_degree: bool = False,
                         user_dropout: float = 0.0):
    """NeuralNDCG (Pobrotyn & Białobrzeski 2021): ``mean_u (1 - NeuralNDCG_u@k)`` over the
    lists ITEM uses (:func:`user_lists`), plus the same L2 on the ego embeddings.

    The whole list ``[positives | negatives]`` (``L = P + N``, padding masked) is softly sorted:
    one ``L x L`` NeuralSort matrix per user, ``sinkhorn_iters`` Sinkhorn iterations
    (:func:`itemjax.listwise_losses.neural_ndcg_loss`). ``k = None`` is the whole list.
    """
    share = hard_share(step) if callable(hard_share) else hard_share
    lists = user_lists(params, apply_fn, batch, key, share, n_users=n_users, n_pos=n_pos, n_neg=n_neg,
                       shared_negatives=shared_negatives, users_by_degree=users_by_degree, user_dropout=user_dropout)
    loss = neural_ndcg_loss(lists.scores, lists.labels, where=lists.where, temperature=temperature,
                            sinkhorn_iters=sinkhorn_iters, k=k)
    return _with_list_l2(loss, params, lists, l2, n_users)


def softmax_objective(params, apply_fn, batch: Batch, key, step, *, n_users: int, n_pos: int, n_neg: int,
                      l2: float, hard_share, shared_negatives: bool, temperature: float = 1.0,
                      logq_correction: bool = False, users_by_degree: bool = False, user_dropout: float = 0.0):
    """Sampled softmax / InfoNCE over the lists ITEM uses (:func:`user_lists`), plus the same L2.

    For each valid positive ``p``: ``softplus(logsumexp_n(s_n/T - c_n) - s_p/T)`` over the user's
    valid negatives, mean over its positives, then over users
    (:func:`itemjax.listwise_losses.sampled_softmax_loss`). ``logq_correction``: ``c_n =
    log(N Q(n))`` (:func:`negative_log_counts`; the positive is not corrected), else ``c_n = 0``.
    """
    share = hard_share(step) if callable(hard_share) else hard_share
    lists = user_lists(params, apply_fn, batch, key, share, n_users=n_users, n_pos=n_pos, n_neg=n_neg,
                       shared_negatives=shared_negatives, users_by_degree=users_by_degree, user_dropout=user_dropout)
    log_q = 0.0
    if logq_correction:
        counts = negative_log_counts(batch.data, lists.users, lists.neg_ids, share, shared_negatives=shared_negatives)
        log_q = jnp.concatenate([jnp.zeros(lists.pos.shape, counts.dtype), counts], axis=-1)
    loss = sampled_softmax_loss(lists.scores, lists.labels, where=lists.where, temperature=temperature, log_q=log_q)
    return _with_list_l2(loss, params, lists, l2, n_users)


def make_objective(config: TrainConfig, steps_per_epoch: int = 1) -> Callable:
    """The objective function for ``config.loss`` with its static options bound.

    With ``curriculum_epochs > 0`` the PPR share rises linearly from 0 to its target over that
    many epochs (PinSAGE's curriculum): ``share(step) = target * min(1, step / (E * steps))``.
    """
    hard_share = {"uniform": 0.0, "ppr": 1.0, "mixed": config.hard_ratio}[config.neg_sampler]
    if config.curriculum_epochs:
        ramp = config.curriculum_epochs * steps_per_epoch
        target = hard_share
        hard_share = functools.partial(_curriculum, target=target, ramp=ramp)
    common = dict(l2=config.l2, hard_share=hard_share, user_dropout=config.user_dropout)
    if config.loss == "bpr":
        return functools.partial(bpr_objective, batch_size=config.batch_size, user_sampling=config.user_sampling,
                                 **common)
    if config.loss == "bce":
        return functools.partial(bce_objective, batch_size=config.batch_size, user_sampling=config.user_sampling,
                                 **common)
    if config.loss == "item":
        return functools.partial(
            item_objective, n_users=config.batch_size, n_pos=config.positives, n_neg=config.negatives,
            metric=config.item_metric, tau=config.tau, tau_k=config.tau_k, slope=config.rank_slope,
            k=config.recall_ks[0] if len(config.recall_ks) == 1 else tuple(config.recall_ks),
            margin=config.rank_margin, positive_pairs=config.positive_pairs, calibration=config.calibration,
            users_by_degree=config.user_sampling == "degree",
            catalogue_rank=config.rank_estimate == "catalogue", shared_negatives=config.shared_negatives, **common)
    lists = dict(n_users=config.batch_size, n_pos=config.positives, n_neg=config.negatives,
                 users_by_degree=config.user_sampling == "degree", shared_negatives=config.shared_negatives)
    if config.loss == "neuralndcg":
        return functools.partial(neuralndcg_objective, temperature=config.neuralndcg_temperature,
                                 sinkhorn_iters=config.sinkhorn_iters, k=config.neuralndcg_k, **lists, **common)
    if config.loss == "softmax":
        return functools.partial(softmax_objective, temperature=config.softmax_temperature,
                                 logq_correction=config.logq_correction, **lists, **common)
    raise ConfigError(f"unknown --loss {config.loss!r}")


def _curriculum(step, *, target, ramp):
    return target * jnp.minimum(1.0, step / ramp)


def steps_per_epoch(config: TrainConfig, data: sampling.TrainData) -> int:
    """Pairwise losses (bpr, bce): ``ceil(n_train / B)`` steps; list-wise (item, neuralndcg,
    softmax: ``B`` users per step): ``ceil(n_active_users / B)``."""
    if config.loss in ("bpr", "bce"):
        return max(1, math.ceil(data.n_train / config.batch_size))
    return max(1, math.ceil(data.active_users.shape[0] / config.batch_size))


# ----------------------------------------------------------------------------- model and state


def make_model(config: TrainConfig, n_users: int, n_items: int):
    cls = MODELS[config.model]
    kwargs = dict(n_users=n_users, n_items=n_items, dim=config.dim)
    if "n_layers" in cls.__dataclass_fields__:
        kwargs["n_layers"] = config.layers
    if config.compute_dtype != "float32":  # propagation and scoring dtype; params stay float32
        if "dtype" not in cls.__dataclass_fields__:
            raise ConfigError(f"--compute-dtype {config.compute_dtype} is not supported by --model {config.model}; "
                              "use --compute-dtype float32")
        kwargs["dtype"] = jnp.dtype(config.compute_dtype)
    return cls(**kwargs)


def create_state(config: TrainConfig, model, graph: DeviceGraph, data: sampling.TrainData, key) -> TrainState:
    params = model.init(key, graph)["params"]
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=optax.adam(config.lr),
        objective=make_objective(config, steps_per_epoch(config, data)),
    )


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def embed(apply_fn, params, graph):
    """Final ``(user_emb, item_emb)`` in inference mode."""
    return apply_fn({"params": params}, graph, train=False)


# ----------------------------------------------------------------------------- the run


def environment() -> dict:
    """Package versions, JAX backend and devices, JAX/XLA environment variables, the itemjax
    git commit: recorded in config.json so that a run can be reproduced from its directory."""
    import importlib.metadata
    import os

    import itemjax

    versions = {"itemjax": itemjax.__version__}
    for dist in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "jraph", "numpy", "scipy", "tqdm",
                 "matplotlib"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "itemjax_git": _git_commit(pathlib.Path(itemjax.__file__).parent),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("JAX_", "XLA_", "ITEMJAX_"))},
    }


def _git_commit(package_dir: pathlib.Path):
    """``<commit>`` (``+dirty`` when files differ) of a git checkout holding itemjax, else None."""
    import subprocess

    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()

        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def default_out(config: TrainConfig) -> pathlib.Path:
    name = pathlib.Path(config.dataset).stem if pathlib.Path(config.dataset).exists() else config.dataset
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return pathlib.Path("runs") / f"{name}-{config.model}-{config.loss}-{stamp}"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
