"""The training objectives: what one step minimises, sampled on the device.

Every objective has the signature ``objective(params, apply_fn, batch, key, step) -> (loss,
aux)`` once :func:`make_objective` has bound its options; :func:`itemjax.train.step.train_step`
differentiates it. All sampling happens inside it, from ``key`` (the step's key): pairs or
user lists (:mod:`itemjax.objective.sampling`), negatives (uniform, PPR, MixGCF's synthesised ones), the
SGL-ED views. ``aux`` holds ``rank_loss`` (the loss without L2) and, with ``--ssl``, ``ssl_loss``.
The maths of each is in docs/design.md.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from itemjax.objective import sampling
from itemjax.config import TrainConfig
from itemjax.parallel.distributed import shard_rows
from itemjax.errors import ConfigError
from itemjax.objective.listwise_losses import neural_ndcg_loss, sampled_softmax_loss
from itemjax.objective.losses import bpr_loss, info_nce, l2_penalty
from itemjax.model.models import MODELS, id_embeddings, pool_layers
from itemjax.graph.propagation import DeviceGraph, edge_dropout
from itemjax.objective.ranking_losses import bce_loss, item_loss_blocks


@flax.struct.dataclass
class Batch:
    """What every step reads: the propagation graph and the training interactions (device)."""

    graph: DeviceGraph
    data: sampling.TrainData


def _forward(params, apply_fn, batch, key, id_dropout=(0.0, 0.0), layers: bool = False, graph=None):
    """Final ``(user_emb, item_emb)`` of the training forward pass (per-layer ``[n, K + 1, d]``
    stacks with ``layers``), over ``batch.graph`` or the given ``graph`` (an SGL view).

    ``id_dropout = (p_user, p_item)`` (ID dropout, for the inductive protocols): each user's
    (item's) ID embedding row is zeroed with probability ``p_user`` (``p_item``) for the whole
    step (no rescaling), the convention an unseen user (a cold-start item) gets at inference
    (:func:`itemjax.evaluation.inductive.zero_id_rows`), so the model learns to represent a node
    from its neighbours (and side features) alone. Mask streams: ``fold_in(key, 1)`` for users,
    ``fold_in(key, 2)`` for items; with 0 the forward pass and its randomness are unchanged.
    """
    for p_drop, table_name, stream in ((id_dropout[0], "user_embedding", 1), (id_dropout[1], "item_embedding", 2)):
        if p_drop > 0:
            ids = params["ids"]
            table = ids[table_name]
            keep = jax.random.bernoulli(jax.random.fold_in(key, stream), 1.0 - p_drop, (table.shape[0], 1))
            params = {**params, "ids": {**ids, table_name: table * keep.astype(table.dtype)}}
    graph = batch.graph if graph is None else graph
    return apply_fn({"params": params}, graph, train=True, layers=layers, rngs={"dropout": key})


def _with_ssl(total, aux: dict, ssl, params, apply_fn, batch, key, step, users, items, item_where=None):
    """``(total + ssl(...), aux + {"ssl_loss"})`` with the auxiliary self-supervised term of
    :func:`sgl_loss` (already weighted) on the step's users and items; unchanged when ``ssl`` is None."""
    if ssl is None:
        return total, aux
    extra = ssl(params, apply_fn, batch, jax.random.fold_in(key, 7), step, users, items, item_where)
    return total + extra, {**aux, "ssl_loss": extra}


def _unique(ids: jax.Array, where=None, n_ids: int | None = None) -> tuple[jax.Array, jax.Array]:
    """The distinct valid ids of ``ids`` (any shape), padded: ``(ids [n], valid [n])`` with
    ``n = min(ids.size, n_ids)`` (static; ``n_ids`` the number of possible ids, so at most that
    many are distinct) and padding slots holding id 0 with ``valid = False``."""
    flat = ids.reshape(-1)
    if where is not None:
        flat = jnp.where(where.reshape(-1), flat, -1)
    size = flat.shape[0] if n_ids is None else min(flat.shape[0], n_ids)
    distinct = jnp.unique(flat, size=size, fill_value=-1)
    valid = distinct >= 0
    return jnp.where(valid, distinct, 0), valid


#: fold_in stream of the SGL views' key (kept apart from the step keys)
SGL_VIEW_STREAM = 0x5617


def sgl_loss(params, apply_fn, batch: Batch, key, step, users, items, item_where=None, *, seed: int,
             steps_per_epoch: int, drop: float, temperature: float, weight: float, id_dropout=(0.0, 0.0)):
    """SGL-ED's auxiliary loss (Wu et al., SIGIR 2021), ``weight * (InfoNCE_users + InfoNCE_items)``.

    Two views of the training graph, each dropping every interaction with probability ``drop``
    (:func:`itemjax.graph.propagation.edge_dropout`), drawn once per epoch: their key is
    ``fold_in(fold_in(PRNGKey(seed), SGL_VIEW_STREAM), step // steps_per_epoch)``, so every step
    of an epoch (and a resumed run) sees the same views. Both views go through the model
    (train mode); :func:`itemjax.objective.losses.info_nce` at ``temperature`` compares their final
    embeddings of the step's distinct users and of its distinct (valid) items, each against the
    other nodes of its kind in the batch. Cost: two more forward and backward passes per step.
    """
    epoch = step // steps_per_epoch
    view_key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), SGL_VIEW_STREAM), epoch)
    k_view1, k_view2 = jax.random.split(view_key)
    k_fwd1, k_fwd2 = jax.random.split(key)
    user1, item1 = _forward(params, apply_fn, batch, k_fwd1, id_dropout, graph=edge_dropout(batch.graph, k_view1, drop))
    user2, item2 = _forward(params, apply_fn, batch, k_fwd2, id_dropout, graph=edge_dropout(batch.graph, k_view2, drop))
    u, u_valid = _unique(users, n_ids=user1.shape[0])
    # ITEM's lists give B x P positives but a small catalogue has fewer items: InfoNCE over
    # [n, n] with n = min(B P, |I|) (256 x 32 = 8192 slots -> 1682 on ml-100k)
    i, i_valid = _unique(items, item_where, n_ids=item1.shape[0])
    return weight * (info_nce(user1[u], user2[u], u_valid, temperature=temperature)
                     + info_nce(item1[i], item2[i], i_valid, temperature=temperature))


def bpr_objective(params, apply_fn, batch: Batch, key, step, *, batch_size: int, l2: float, hard_share: float,
                  id_dropout=(0.0, 0.0), user_sampling: str = "degree", ssl=None):
    """BPR over ``batch_size`` training pairs, one negative each.

    Pairs from :func:`itemjax.objective.sampling.sample_pairs`: interaction-uniform (``"degree"``) or a
    user uniformly, then one of its positives (``"uniform"``, LightGCN's sampler).

    ``L = mean softplus(s_un - s_up) + l2 * 0.5 * (||e_u||^2 + ||e_p||^2 + ||e_n||^2) / B``
    on the ego (layer-0) embeddings, as in LightGCN.
    """
    k_fwd, k_edge, k_neg = jax.random.split(key, 3)
    users, pos = sampling.sample_pairs(k_edge, batch.data, batch_size, user_sampling)
    users, pos = shard_rows(users), shard_rows(pos)  # triples split across the mesh's data axis
    neg = sampling.negatives(k_neg, batch.data, users, 1, hard_share)[:, 0]
    user_emb, item_emb = _forward(params, apply_fn, batch, k_fwd, id_dropout)
    u = user_emb[users]
    pos_scores = jnp.sum(u * item_emb[pos], axis=-1, dtype=jnp.float32)  # loss in float32 whatever the compute dtype
    neg_scores = jnp.sum(u * item_emb[neg], axis=-1, dtype=jnp.float32)
    loss = bpr_loss(pos_scores, neg_scores)
    ego_u, ego_i = id_embeddings(params)
    reg = l2_penalty(ego_u[users], ego_i[pos], ego_i[neg], batch_size=batch_size)
    return _with_ssl(loss + l2 * reg, {"rank_loss": loss}, ssl, params, apply_fn, batch, key, step, users, pos)


def mix_hard_negatives(user: jax.Array, pos_layers: jax.Array, item_layers: jax.Array, candidates: jax.Array,
                       alpha: jax.Array, pool: str, dense_scores: bool | None = None) -> jax.Array:
    """MixGCF's synthesised hard negative (Huang et al., KDD 2021), per layer ``l`` of ``L = K + 1``.

    Positive mixing: ``m_{b,c,l} = alpha_{b,l} p_{b,l} + (1 - alpha_{b,l}) n_{b,c,l}`` for each
    of the ``M`` candidates ``c``. Hop mixing: layer ``l`` of the negative is the mixed candidate
    scoring highest with the user, ``c*_l = argmax_c <u, m_{b,c,l}>`` (no gradient through the
    choice), where ``u`` is the user's pooled embedding (``pool="mean"``) or its layer ``l``
    (``pool="concat"``).

    Since ``<u, m_{b,c,l}> = alpha <u, p_{b,l}> + (1 - alpha) <u, n_{b,c,l}>`` with ``1 - alpha > 0``,
    ``c*_l = argmax_c <u, n_{b,c,l}>``: the choice is made on the candidates' layers read without
    gradient, and only the ``L`` chosen rows per pair are gathered with one. The ``[B, M, L, d]``
    candidate block then has no backward pass (no scatter-add of ``B M L d`` values into the
    item table), which made MixGCF's step ~2x cheaper at ``M = 64``. The candidates' scores are
    read from ``<u, n_{i,l}>`` for every item ``i`` (one ``[B, n_items, L]`` matmul) when
    ``dense_scores`` (default: ``n_items <= 32 M``, where the matmul beat XLA's CPU gather of the
    ``[B, M, L, d]`` block on ml-100k: 180-250 ms vs 350-380 ms at ``B = 2048, M = 64``), else
    from that gathered block.

    Args:
      user: ``[B, d]`` pooled (``"mean"``) or ``[B, L, d]`` per layer (``"concat"``).
      pos_layers: ``[B, L, d]`` the positive's layers.
      item_layers: ``[n_items, L, d]`` every item's layers; candidates: ``[B, M]`` item ids.
      alpha: ``[B, L]`` mixing weights in [0, 1).
    Returns:
      ``[B, L, d]``: the negative's layers (pool them as the model does).
    """
    n_items, n_layers = item_layers.shape[:2]
    fixed_items, fixed_user = jax.lax.stop_gradient(item_layers), jax.lax.stop_gradient(user)
    if dense_scores is None:
        dense_scores = n_items <= 32 * candidates.shape[1]
    if dense_scores:
        spec = "bd,nld->bln" if pool == "mean" else "bld,nld->bln"
        every = jnp.einsum(spec, fixed_user, fixed_items, preferred_element_type=jnp.float32)  # [B, L, n_items]
        scores = jnp.take_along_axis(every, candidates[:, None, :], axis=2)  # [B, L, M]
        pick = jnp.argmax(scores, axis=2)  # [B, L]
    else:
        spec = "bd,bmld->bml" if pool == "mean" else "bld,bmld->bml"
        scores = jnp.einsum(spec, fixed_user, fixed_items[candidates], preferred_element_type=jnp.float32)
        pick = jnp.argmax(scores, axis=1)  # [B, L]
    chosen = jnp.take_along_axis(candidates, pick, axis=1)  # [B, L] item ids
    negative = item_layers[chosen, jnp.arange(n_layers)[None, :]]  # [B, L, d], with gradient
    a = alpha[..., None].astype(item_layers.dtype)
    return a * pos_layers + (1 - a) * negative


def mixgcf_objective(params, apply_fn, batch: Batch, key, step, *, batch_size: int, l2: float, n_candidates: int,
                     pool: str, id_dropout=(0.0, 0.0), user_sampling: str = "degree", hard_share=0.0, ssl=None):
    """BPR with MixGCF negatives: for each pair, ``n_candidates`` uniform negatives are mixed
    into one hard negative (:func:`mix_hard_negatives`, ``alpha ~ U(0, 1)`` per pair and layer),
    pooled like the model's layers (``pool``, the model's ``LAYER_POOL``).

    ``L = mean softplus(s_un~ - s_up) + l2 * 0.5 * (||e_u||^2 + ||e_p||^2 + ||n~_0||^2) / B``
    with ``n~_0`` the negative's (mixed) layer-0 embedding, as in MixGCF's code.
    """
    k_fwd, k_edge, k_neg, k_mix = jax.random.split(key, 4)
    users, pos = sampling.sample_pairs(k_edge, batch.data, batch_size, user_sampling)
    users, pos = shard_rows(users), shard_rows(pos)
    candidates = sampling.negatives(k_neg, batch.data, users, n_candidates, 0.0)  # [B, M]
    user_layers, item_layers = _forward(params, apply_fn, batch, k_fwd, id_dropout, layers=True)
    u_layers, p_layers = user_layers[users], item_layers[pos]  # [B, L, d]
    u = pool_layers(u_layers, pool)
    alpha = jax.random.uniform(k_mix, (users.shape[0], u_layers.shape[1]))
    n_layers = mix_hard_negatives(u if pool == "mean" else u_layers, p_layers, item_layers, candidates, alpha, pool)
    pos_scores = jnp.sum(u * pool_layers(p_layers, pool), axis=-1, dtype=jnp.float32)
    neg_scores = jnp.sum(u * pool_layers(n_layers, pool), axis=-1, dtype=jnp.float32)
    loss = bpr_loss(pos_scores, neg_scores)
    ego_u, ego_i = id_embeddings(params)
    reg = l2_penalty(ego_u[users], ego_i[pos], n_layers[:, 0].astype(jnp.float32), batch_size=batch_size)
    return _with_ssl(loss + l2 * reg, {"rank_loss": loss}, ssl, params, apply_fn, batch, key, step, users, pos)


def bce_objective(params, apply_fn, batch: Batch, key, step, *, batch_size: int, l2: float, hard_share,
                  id_dropout=(0.0, 0.0), user_sampling: str = "degree", ssl=None):
    """Binary cross-entropy over ``batch_size`` training pairs (as BPR's) and as many sampled non-edges.

    ``L = mean softplus(-s_up) + mean softplus(s_un)`` plus the same L2 term as BPR.
    """
    k_fwd, k_edge, k_neg = jax.random.split(key, 3)
    users, pos = sampling.sample_pairs(k_edge, batch.data, batch_size, user_sampling)
    users, pos = shard_rows(users), shard_rows(pos)
    neg = sampling.negatives(k_neg, batch.data, users, 1, hard_share)[:, 0]
    user_emb, item_emb = _forward(params, apply_fn, batch, k_fwd, id_dropout)
    u = user_emb[users]
    loss = bce_loss(jnp.sum(u * item_emb[pos], -1, dtype=jnp.float32), jnp.sum(u * item_emb[neg], -1, dtype=jnp.float32))
    ego_u, ego_i = id_embeddings(params)
    reg = l2_penalty(ego_u[users], ego_i[pos], ego_i[neg], batch_size=batch_size)
    return _with_ssl(loss + l2 * reg, {"rank_loss": loss}, ssl, params, apply_fn, batch, key, step, users, pos)


def item_objective(params, apply_fn, batch: Batch, key, step, *, n_users: int, n_pos: int, n_neg: int,
                   metric: str, tau: float, k: int, l2: float, hard_share, shared_negatives: bool,
                   slope: float = 0.0, positive_pairs: str = "smooth", users_by_degree: bool = False,
                   tau_k: float = 1.0, catalogue_rank: bool = False, id_dropout=(0.0, 0.0), margin: float = 0.0,
                   calibration: float = 0.0, tau_by_positives: float = 0.0, ssl=None):
    """ITEM: ``mean_u (1 - smooth_metric_u)`` over user-centric lists (docs/design.md).

    Each step draws ``n_users`` users; for each, up to ``n_pos`` of its training items (masked
    padding when fewer) and ``n_neg`` negatives (PPR hard / uniform mix, see
    :func:`itemjax.objective.sampling.negatives`), all scored against ONE propagation of the GNN. The list
    of a user is ``[positives | negatives]``, ``scores [B, P + N]``.

    ``shared_negatives`` (PinSAGE): one set of ``n_neg`` items for the whole batch, scored by a
    single ``[B, d] x [d, N]`` matmul; entries that are a user's own training items are masked.
    ``hard_share`` may be a callable of the step (curriculum).

    ``tau`` may be a callable of the step (``--tau-start``: :func:`tau_schedule`).
    ``tau_by_positives`` (``a``): user ``u``'s temperature is ``tau * (P / P_u) ** a``, ``P_u`` =
    its valid positives in the list (``1 <= P_u <= P``), so a user with fewer training items than
    the list holds ranks more softly; 0 keeps one ``tau`` (docs/design.md).

    ``k``: the smooth recall's cut-off, or a tuple of them (their mean); ``slope``, ``margin``,
    ``positive_pairs``, ``calibration``: see :func:`itemjax.objective.ranking_losses.item_loss`.

    ``catalogue_rank``: each negative's sigmoid term counts ``(|I| - |P_u|) / N_u`` times
    (``|P_u|`` = the user's training degree, ``N_u`` = its valid negatives), so a positive's
    smooth rank estimates its rank among all ``|I|`` items instead of within the list of
    ``P + N`` (docs/design.md); the Recall@k cut-off then refers to the catalogue rank.
    """
    share = hard_share(step) if callable(hard_share) else hard_share
    tau = tau(step) if callable(tau) else tau
    lists = user_lists(params, apply_fn, batch, key, share, n_users=n_users, n_pos=n_pos, n_neg=n_neg,
                       shared_negatives=shared_negatives, users_by_degree=users_by_degree, id_dropout=id_dropout)
    data, users = batch.data, lists.users
    if tau_by_positives:
        n_valid = jnp.maximum(lists.pos_where.sum(-1).astype(jnp.float32), 1.0)  # [B]
        tau = tau * (n_pos / n_valid) ** tau_by_positives  # [B]
    negative_weight = 1.0
    if catalogue_rank:
        degree = (data.indptr[users + 1] - data.indptr[users]).astype(jnp.float32)  # [B]
        n_valid = jnp.maximum(lists.neg_where.sum(-1).astype(jnp.float32), 1.0)
        negative_weight = jnp.maximum(data.n_items - degree, 0.0) / n_valid  # [B]
    # only the positives are ranked: item_loss(lists.scores, lists.labels, where=lists.where,
    # query=arange(n_pos), ...), with the P x P and P x N blocks apart (the former without gradient
    # when positive pairs are detached or exact)
    loss = item_loss_blocks(lists.scores[:, :n_pos], lists.scores[:, n_pos:], pos_where=lists.pos_where,
                            neg_where=None if not shared_negatives else lists.neg_where, metric=metric, tau=tau,
                            k=k, tau_k=tau_k, slope=slope, positive_pairs=positive_pairs, margin=margin,
                            calibration=calibration, negative_weight=negative_weight)
    return _with_list_l2(loss, params, lists, l2, n_users, ssl, apply_fn, batch, key, step)


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


#: :func:`user_lists` scores a step's users against every item with one ``[B, d] x [d, n_items]``
#: matmul, then picks each list's entries, when ``n_items <= DENSE_SCORING_RATIO * (P + N)``;
#: otherwise it gathers the ``B (P + N)`` item rows (and scatter-adds their gradients). On a CPU
#: the dense scores (fwd + bwd) were 3.6x faster at ml-100k's 1682 items, 1.3x at 16000 and 1.7x
#: slower at gowalla's 40981 (B = 256, P + N = 288, d = 64; benchmarks/RESULTS.md, "ITEM step on
#: small catalogues").
DENSE_SCORING_RATIO = 32


def _dense_scoring(n_items: int, list_length: int, dense_scoring) -> bool:
    if dense_scoring is None:
        return n_items <= DENSE_SCORING_RATIO * list_length
    return bool(dense_scoring)


def user_lists(params, apply_fn, batch: Batch, key, share, *, n_users: int, n_pos: int, n_neg: int,
               shared_negatives: bool, users_by_degree: bool = False, id_dropout=(0.0, 0.0),
               dense_scoring=None) -> UserLists:
    """The lists every list-wise objective (ITEM, NeuralNDCG, softmax) scores, from one forward pass.

    Draws ``n_users`` users (uniformly, or by training degree with ``users_by_degree``); for each,
    up to ``n_pos`` of its training items (masked padding when fewer) and ``n_neg`` negatives
    (:func:`itemjax.objective.sampling.negatives` with PPR share ``share``). ``shared_negatives``
    (PinSAGE): one set of ``n_neg`` items for the whole batch (the negatives of uniformly drawn
    batch users, ``owners``), scored by a single ``[B, d] x [d, N]`` matmul; entries that are a
    user's own training items are masked. Keys: ``split(key, 5)`` = forward, users, positives,
    negatives, owners.

    ``dense_scoring``: score the users against every item with one matmul and pick the lists'
    entries (True), or gather the lists' item rows (False); None (default) chooses by the size
    rule of :data:`DENSE_SCORING_RATIO`. The scores are the same either way (up to float rounding).
    """
    k_fwd, k_users, k_pos, k_neg, k_owner = jax.random.split(key, 5)
    data = batch.data
    users = sampling.sample_users(k_users, data, n_users, by_degree=users_by_degree)
    users = shard_rows(users)  # lists split across the data axis
    pos, pos_where = sampling.sample_positives(k_pos, data, users, n_pos)
    user_emb, item_emb = _forward(params, apply_fn, batch, k_fwd, id_dropout)
    u = user_emb[users]  # [B, d]
    if _dense_scoring(item_emb.shape[0], n_pos + n_neg, dense_scoring):
        all_scores = jnp.matmul(u, item_emb.T, preferred_element_type=jnp.float32)  # [B, n_items]

        def score(ids):  # ids [B, M] -> [B, M]
            return jnp.take_along_axis(all_scores, ids, axis=-1, mode="promise_in_bounds")
    else:
        def score(ids):
            return jnp.einsum("bd,bmd->bm", u, item_emb[ids], preferred_element_type=jnp.float32)
    pos_scores = score(pos)
    if shared_negatives:
        owners = users[jax.random.randint(k_owner, (n_neg,), 0, n_users)]  # hard candidates of batch users
        neg = sampling.negatives(k_neg, data, owners, 1, share)[:, 0]  # [N]
        neg_ids = jnp.broadcast_to(neg[None, :], (users.shape[0], n_neg))
        if _dense_scoring(item_emb.shape[0], n_pos + n_neg, dense_scoring):
            neg_scores = score(neg_ids)
        else:
            neg_scores = jnp.matmul(u, item_emb[neg].T, preferred_element_type=jnp.float32)  # [B, N]
        neg_where = ~sampling.is_training_item(data, users[:, None], neg[None, :])
    else:
        neg_ids = sampling.negatives(k_neg, data, users, n_neg, share)  # [B, N]
        neg_scores = score(neg_ids)
        neg_where = jnp.ones(neg_scores.shape, bool)
    scores = jnp.concatenate([pos_scores, neg_scores], axis=-1)
    labels = jnp.concatenate([jnp.ones_like(pos_scores), jnp.zeros_like(neg_scores)], axis=-1)
    where = jnp.concatenate([pos_where, neg_where], axis=-1)
    return UserLists(users, scores, labels, where, pos, pos_where, neg_ids, neg_where)


def _with_list_l2(loss, params, lists: UserLists, l2: float, n_users: int, ssl=None, apply_fn=None, batch=None,
                  key=None, step=None):
    """``(loss + l2 * LightGCN's L2 on the ego embeddings of the lists, {"rank_loss": loss})``
    (padded positives excluded, divided by the users per step), plus the ``ssl`` term on the
    lists' users and valid positives (:func:`_with_ssl`)."""
    total = loss
    if l2 > 0:
        total = loss + l2 * _list_l2_penalty(params, lists, n_users)
    return _with_ssl(total, {"rank_loss": loss}, ssl, params, apply_fn, batch, key, step, lists.users, lists.pos,
                     lists.pos_where)


def _list_l2_penalty(params, lists: UserLists, n_users: int) -> jax.Array:
    """LightGCN's L2 on the ego rows of the lists' users, valid positives and negatives,
    ``l2_penalty(ego_u[users], ego_i[pos] * pos_where, ego_i[neg_ids], batch_size=n_users)``,
    computed as ``0.5 * (sum_u c_u ||e_u||^2 + sum_i c_i ||e_i||^2) / n_users`` with ``c`` the
    number of times each row occurs in the step: a scatter-add of ``B (1 + P + N)`` counts and two
    dense row-norm sums instead of gathering ``B (P + N)`` rows of ``d`` and scatter-adding their
    gradients back (the gradient, ``c_i e_i / n_users``, is dense like the propagation's anyway)."""
    ego_u, ego_i = id_embeddings(params)
    user_counts = jnp.zeros(ego_u.shape[0], jnp.float32).at[lists.users].add(1.0)
    item_counts = (jnp.zeros(ego_i.shape[0], jnp.float32).at[lists.pos].add(lists.pos_where.astype(jnp.float32))
                   .at[lists.neg_ids].add(1.0))
    total = (jnp.sum(user_counts * jnp.sum(jnp.square(ego_u), axis=-1))  # not jnp.dot: no reduced-precision matmul
             + jnp.sum(item_counts * jnp.sum(jnp.square(ego_i), axis=-1)))
    return 0.5 * total / n_users


def negative_log_counts(data: sampling.TrainData, users: jax.Array, neg_ids: jax.Array, share, *,
                        shared_negatives: bool) -> jax.Array:
    """``[B, N]`` ``log(N Q(n))``: log of the expected number of times the step's negative sampler
    draws each negative in ``N`` draws, the logQ correction of the sampled softmax.

    One draw of :func:`itemjax.objective.sampling.negatives` for user ``b`` (``F_b = |I| - deg_b`` items it
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
                         id_dropout=(0.0, 0.0), ssl=None):
    """NeuralNDCG (Pobrotyn & Białobrzeski 2021): ``mean_u (1 - NeuralNDCG_u@k)`` over the
    lists ITEM uses (:func:`user_lists`), plus the same L2 on the ego embeddings.

    The whole list ``[positives | negatives]`` (``L = P + N``, padding masked) is softly sorted:
    one ``L x L`` NeuralSort matrix per user, ``sinkhorn_iters`` Sinkhorn iterations
    (:func:`itemjax.objective.listwise_losses.neural_ndcg_loss`). ``k = None`` is the whole list.
    """
    share = hard_share(step) if callable(hard_share) else hard_share
    lists = user_lists(params, apply_fn, batch, key, share, n_users=n_users, n_pos=n_pos, n_neg=n_neg,
                       shared_negatives=shared_negatives, users_by_degree=users_by_degree, id_dropout=id_dropout)
    loss = neural_ndcg_loss(lists.scores, lists.labels, where=lists.where, temperature=temperature,
                            sinkhorn_iters=sinkhorn_iters, k=k)
    return _with_list_l2(loss, params, lists, l2, n_users, ssl, apply_fn, batch, key, step)


def softmax_objective(params, apply_fn, batch: Batch, key, step, *, n_users: int, n_pos: int, n_neg: int,
                      l2: float, hard_share, shared_negatives: bool, temperature: float = 1.0,
                      logq_correction: bool = False, users_by_degree: bool = False, id_dropout=(0.0, 0.0),
                      ssl=None):
    """Sampled softmax / InfoNCE over the lists ITEM uses (:func:`user_lists`), plus the same L2.

    For each valid positive ``p``: ``softplus(logsumexp_n(s_n/T - c_n) - s_p/T)`` over the user's
    valid negatives, mean over its positives, then over users
    (:func:`itemjax.objective.listwise_losses.sampled_softmax_loss`). ``logq_correction``: ``c_n =
    log(N Q(n))`` (:func:`negative_log_counts`; the positive is not corrected), else ``c_n = 0``.
    """
    share = hard_share(step) if callable(hard_share) else hard_share
    lists = user_lists(params, apply_fn, batch, key, share, n_users=n_users, n_pos=n_pos, n_neg=n_neg,
                       shared_negatives=shared_negatives, users_by_degree=users_by_degree, id_dropout=id_dropout)
    log_q = 0.0
    if logq_correction:
        counts = negative_log_counts(batch.data, lists.users, lists.neg_ids, share, shared_negatives=shared_negatives)
        log_q = jnp.concatenate([jnp.zeros(lists.pos.shape, counts.dtype), counts], axis=-1)
    loss = sampled_softmax_loss(lists.scores, lists.labels, where=lists.where, temperature=temperature, log_q=log_q)
    return _with_list_l2(loss, params, lists, l2, n_users, ssl, apply_fn, batch, key, step)


def make_objective(config: TrainConfig, steps_per_epoch: int = 1) -> Callable:
    """The objective function for ``config.loss`` with its static options bound.

    With ``curriculum_epochs > 0`` the PPR share rises linearly from 0 to its target over that
    many epochs (PinSAGE's curriculum): ``share(step) = target * min(1, step / (E * steps))``.
    """
    hard_share = {"uniform": 0.0, "mixgcf": 0.0, "ppr": 1.0, "mixed": config.hard_ratio}[config.neg_sampler]
    if config.curriculum_epochs:
        ramp = config.curriculum_epochs * steps_per_epoch
        target = hard_share
        hard_share = functools.partial(_curriculum, target=target, ramp=ramp)
    common = dict(l2=config.l2, hard_share=hard_share, id_dropout=(config.user_dropout, config.item_dropout))
    if config.ssl == "sgl-ed":
        common["ssl"] = functools.partial(sgl_loss, seed=config.seed, steps_per_epoch=steps_per_epoch,
                                          drop=config.ssl_drop, temperature=config.ssl_temperature,
                                          weight=config.ssl_weight, id_dropout=(config.user_dropout, config.item_dropout))
    if config.loss == "bpr" and config.neg_sampler == "mixgcf":
        return functools.partial(mixgcf_objective, batch_size=config.batch_size, user_sampling=config.user_sampling,
                                 n_candidates=config.mixgcf_candidates, pool=MODELS[config.model].LAYER_POOL,
                                 **common)
    if config.loss == "bpr":
        return functools.partial(bpr_objective, batch_size=config.batch_size, user_sampling=config.user_sampling,
                                 **common)
    if config.loss == "bce":
        return functools.partial(bce_objective, batch_size=config.batch_size, user_sampling=config.user_sampling,
                                 **common)
    if config.loss == "item":
        return functools.partial(
            item_objective, n_users=config.batch_size, n_pos=config.positives, n_neg=config.negatives,
            metric=config.item_metric, tau=tau_schedule(config, steps_per_epoch), tau_k=config.tau_k,
            slope=config.rank_slope,
            k=config.recall_ks[0] if len(config.recall_ks) == 1 else tuple(config.recall_ks),
            margin=config.rank_margin, positive_pairs=config.positive_pairs, calibration=config.calibration,
            tau_by_positives=config.tau_by_positives, users_by_degree=config.user_sampling == "degree",
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


def tau_schedule(config: TrainConfig, steps_per_epoch: int = 1):
    """ITEM's temperature: ``config.tau``, or with ``--tau-start`` the callable
    ``tau(t) = tau_start * (tau / tau_start) ** min(1, t / T)``, ``T = tau_epochs * steps_per_epoch``
    (geometric: equal ratios per step, from the start's soft sigmoid to the final sharp one)."""
    if config.tau_start is None:
        return config.tau
    return functools.partial(_geometric, start=config.tau_start, end=config.tau,
                             steps=max(1.0, config.tau_epochs * steps_per_epoch))


def _geometric(step, *, start, end, steps):
    return start * (end / start) ** jnp.minimum(1.0, step / steps)


def _curriculum(step, *, target, ramp):
    return target * jnp.minimum(1.0, step / ramp)


def steps_per_epoch(config: TrainConfig, data: sampling.TrainData) -> int:
    """Pairwise losses (bpr, bce): ``ceil(n_train / B)`` steps; list-wise (item, neuralndcg,
    softmax: ``B`` users per step): ``ceil(n_active_users / B)``."""
    if config.loss in ("bpr", "bce"):
        return max(1, math.ceil(data.n_train / config.batch_size))
    return max(1, math.ceil(data.active_users.shape[0] / config.batch_size))
