"""Smooth ranking losses (ITEM) over per-user candidate lists.

Every function takes ``scores`` of shape ``[..., L]``: users on the leading axes, one candidate
list of ``L`` items per user (its positives and sampled negatives, in any order), like rax.
``where`` (same shape, bool, ``True`` = valid entry) marks padding; a masked entry behaves as
if it had been dropped from the list. ``labels`` are binary relevance (``> 0`` = positive).

Smooth rank of entry ``i`` among the valid entries ``V`` of its list::

    rank~_i = 1 + sum_{j in V, j != i}  w_j * h(s_j - s_i),
    h(t)    = sigmoid(clip(t / tau, -clamp, clamp)) + slope * max(t, 0)

with ``w_j = 1`` (optionally ``w_j = negative_weight`` for negatives, which estimates the rank
in the full catalogue from ``N`` sampled negatives when set to ``(|I| - |P_u|) / N``). As
``tau -> 0`` with distinct scores and ``slope = 0``, ``rank~_i`` tends to the exact 1-based rank
among ``V``. ``slope > 0`` adds a linear tail for competitors scored above ``i`` (the SupRank
surrogate of Ramzi et al., NeurIPS 2021): the sigmoid saturates when ``s_j - s_i >> tau`` and
gives a badly ranked positive no gradient; the tail keeps a constant pull ``slope`` per
competitor ahead of it, and ``h`` still upper-bounds the step ``1[t > 0]`` for ``t >= 1/(2 slope)``.

``detach_positive_pairs``: exact NDCG and Recall do not change when two positives swap places,
but their smooth versions do (``1/log2(1 + r)`` is convex, so the gradient pushes positives apart
from each other). With this option the positive-vs-positive sigmoids keep their value but pass
no gradient (``stop_gradient``): positives are pushed only above negatives.

Smooth NDCG of user ``u`` with valid positives ``P_u``::

    NDCG~_u = [ sum_{p in P_u} 1 / log2(1 + rank~_p) ] / IDCG_u,
    IDCG_u  = sum_{i=1..|P_u|} 1 / log2(1 + i)

Smooth Recall@k::

    Recall~_u = min(1, sum_{p in P_u} sigmoid(clip((k - rank~_p) / tau_k, -clamp, clamp)) / min(|P_u|, k))

ITEM loss: the mean over users with at least one valid positive of ``1 - metric_u``.

The pairwise sigmoids are one ``[P, L]`` matrix per user (``P = L`` by default; pass ``query``,
the slots of the positives, to build only ``P x L``), computed by a per-list function vmapped
over the leading axes. Users without valid positives contribute exactly 0 and have zero, finite
gradients: masked scores are replaced before any arithmetic and every division or logarithm
that could see 0 goes through the double-``where`` pattern.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from itemjax.errors import ConfigError

Array = jax.Array

_REDUCTIONS = ("mean", "sum", None)
_METRICS = ("ndcg", "recall", "ndcg+recall")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _as_float(scores) -> Array:
    scores = jnp.asarray(scores)
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    return scores


def _valid_mask(scores: Array, where) -> Array:
    if where is None:
        return jnp.ones(scores.shape, bool)
    return jnp.broadcast_to(jnp.asarray(where, bool), scores.shape)


def _check_positive(name: str, value) -> None:
    if isinstance(value, (int, float)) and not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}; pass a positive number")


def _vmap_leading(fn: Callable, n_leading: int) -> Callable:
    """vmaps ``fn`` (defined on one list) over ``n_leading`` leading axes of every argument."""
    for _ in range(n_leading):
        fn = jax.vmap(fn)
    return fn


def _list_ranks(scores: Array, valid: Array, weights: Array, query: Array, tau, clamp, slope, detach) -> Array:
    """Smooth ranks of one list.

    Args:
      scores: ``[L]`` with masked entries already replaced by a finite value.
      valid: ``[L]`` bool.
      weights: ``[L]`` weight of each entry as a competitor (0 for masked entries).
      query: ``[P]`` int slots whose ranks are wanted.
      detach: ``[L]`` bool competitors whose terms pass no gradient.
    Returns:
      ``[P]``: ``1 + sum_{j != q} weights_j * h(s_j - s_q)`` (module docstring) for valid ``q``;
      ``1 + sum_{j != q} weights_j`` (after every valid entry) for a masked ``q``.
    """
    n_slots = scores.shape[-1]
    query_scores = scores[query]  # [P]
    diffs = scores[None, :] - query_scores[:, None]  # [P, L]: s_j - s_q
    beats = jax.nn.sigmoid(jnp.clip(diffs / tau, -clamp, clamp))
    beats = beats + slope * jnp.maximum(diffs, 0.0)
    beats = jnp.where(detach[None, :], jax.lax.stop_gradient(beats), beats)
    beats = jnp.where(valid[query][:, None], beats, 1.0)
    not_self = query[:, None] != jnp.arange(n_slots)[None, :]
    competitor = jnp.where(not_self, weights[None, :], 0.0)
    return 1.0 + jnp.sum(beats * competitor, axis=-1)


@jax.jit
def _weighted_ranks(scores, valid, weights, query, tau, clamp, slope=0.0, detach=None) -> Array:
    """Smooth ranks ``[..., P]`` over leading axes; ``query`` None means every slot."""
    if detach is None:
        detach = jnp.zeros(scores.shape, bool)
    n_slots = scores.shape[-1]
    safe_scores = jnp.where(valid, scores, 0.0)
    if query is None:
        query = jnp.broadcast_to(jnp.arange(n_slots, dtype=jnp.int32), scores.shape)
    else:
        query = jnp.broadcast_to(jnp.asarray(query, jnp.int32), scores.shape[:-1] + jnp.shape(query)[-1:])
    ranks_fn = _vmap_leading(
        lambda s, v, w, q, d: _list_ranks(s, v, w, q, tau, clamp, slope, d), scores.ndim - 1
    )
    return ranks_fn(safe_scores, valid, weights.astype(scores.dtype), query, detach)


def _positive_ranks(scores, labels, where, query, tau, clamp, negative_weight, slope, detach_positive_pairs):
    """Shared front end of the metrics.

    Returns ``(ranks [..., P], is_positive [..., P])`` at the query slots (all slots by
    default), where ``is_positive`` = labelled positive and valid.
    """
    scores = _as_float(scores)
    valid = _valid_mask(scores, where)
    is_positive = (jnp.broadcast_to(jnp.asarray(labels), scores.shape) > 0) & valid
    negative_weight = jnp.asarray(negative_weight, scores.dtype)[..., None]  # scalar or per user
    weights = jnp.where(valid, jnp.where(is_positive, 1.0, negative_weight), 0.0)
    detach = is_positive & jnp.asarray(detach_positive_pairs, bool)
    ranks = _weighted_ranks(scores, valid, weights, query, tau, clamp, slope, detach)
    if query is not None:
        query = jnp.broadcast_to(jnp.asarray(query, jnp.int32), ranks.shape)
        is_positive = jnp.take_along_axis(is_positive, query, axis=-1)
    return ranks, is_positive


def _ndcg_from_ranks(ranks, is_positive):
    """``(NDCG~_u [...], has_positive [...])`` from smooth ranks ``[..., P]`` at the query slots."""
    safe_ranks = jnp.where(is_positive, ranks, 1.0)
    gains = jnp.where(is_positive, 1.0 / jnp.log2(1.0 + safe_ranks), 0.0)
    dcg = jnp.sum(gains, axis=-1)
    n_positive = jnp.sum(is_positive, axis=-1)
    discounts = 1.0 / jnp.log2(2.0 + jnp.arange(ranks.shape[-1], dtype=ranks.dtype))  # 1/log2(1+i)
    in_ideal_list = jnp.arange(ranks.shape[-1]) < n_positive[..., None]
    ideal = jnp.sum(jnp.where(in_ideal_list, discounts, 0.0), axis=-1)
    has_positive = n_positive > 0
    ndcg = jnp.where(has_positive, dcg / jnp.where(has_positive, ideal, 1.0), 0.0)
    return ndcg, has_positive


def _recall_from_ranks(ranks, is_positive, k, tau_k, clamp):
    """``(Recall~_u [...], has_positive [...])`` from smooth ranks ``[..., P]`` at the query slots."""
    in_top_k = jax.nn.sigmoid(jnp.clip((k - ranks) / tau_k, -clamp, clamp))
    hits = jnp.sum(jnp.where(is_positive, in_top_k, 0.0), axis=-1)
    n_positive = jnp.sum(is_positive, axis=-1)
    has_positive = n_positive > 0
    denominator = jnp.minimum(n_positive, k).astype(ranks.dtype)
    recall = jnp.where(has_positive, hits / jnp.where(has_positive, denominator, 1.0), 0.0)
    return jnp.minimum(recall, 1.0), has_positive


@jax.jit
def _ndcg_per_user(scores, labels, where, query, tau, clamp, negative_weight, slope=0.0, detach_positive_pairs=False):
    """``(NDCG~_u [...], has_positive [...])``; 0 for users without valid positives."""
    return _ndcg_from_ranks(*_positive_ranks(scores, labels, where, query, tau, clamp, negative_weight, slope,
                                             detach_positive_pairs))


@jax.jit
def _recall_per_user(scores, labels, where, query, k, tau, tau_k, clamp, negative_weight, slope=0.0,
                     detach_positive_pairs=False):
    """``(Recall~_u [...], has_positive [...])``; 0 for users without valid positives."""
    ranks, is_positive = _positive_ranks(scores, labels, where, query, tau, clamp, negative_weight, slope,
                                         detach_positive_pairs)
    return _recall_from_ranks(ranks, is_positive, k, tau_k, clamp)


@jax.jit
def _ndcg_plus_recall_per_user(scores, labels, where, query, k, tau, tau_k, clamp, negative_weight, slope,
                               detach_positive_pairs):
    """``((1 - NDCG~_u) + (1 - Recall~_u) [...], has_positive [...])`` from ONE set of smooth ranks."""
    ranks, is_positive = _positive_ranks(scores, labels, where, query, tau, clamp, negative_weight, slope,
                                         detach_positive_pairs)
    ndcg, has_positive = _ndcg_from_ranks(ranks, is_positive)
    recall, _ = _recall_from_ranks(ranks, is_positive, k, tau_k, clamp)
    return (1.0 - ndcg) + (1.0 - recall), has_positive


def _check_options(tau, reduce="mean", k=1, tau_k=1.0, slope=0.0) -> None:
    _check_positive("tau", tau)
    if isinstance(slope, (int, float)) and not slope >= 0:
        raise ConfigError(f"slope must be >= 0, got {slope}; pass 0 (plain sigmoid) or a positive number")
    _check_positive("k", k)
    _check_positive("tau_k", tau_k)
    if reduce not in _REDUCTIONS:
        raise ConfigError(f"reduce={reduce!r} is not supported; use one of {_REDUCTIONS}")


def _reduce_over_users(per_user: Array, has_positive: Array, reduce) -> Array:
    if reduce is None:
        return per_user
    total = jnp.sum(jnp.where(has_positive, per_user, 0.0))
    if reduce == "sum":
        return total
    n_users = jnp.sum(has_positive)
    return total / jnp.maximum(n_users, 1).astype(per_user.dtype)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def smooth_ranks(scores, where=None, *, query=None, tau=0.1, clamp=50.0, slope=0.0) -> Array:
    """Smooth 1-based ranks of list entries (higher score = better = smaller rank).

    ``rank~_i = 1 + sum_{j valid, j != i} [sigmoid(clip((s_j - s_i) / tau, -clamp, clamp))
    + slope * max(s_j - s_i, 0)]``

    Args:
      scores: ``[..., L]`` float scores, users on the leading axes.
      where: optional ``[..., L]`` bool, ``True`` = valid entry. Masked entries do not compete;
        their own output is ``1 + (number of valid entries)`` (placed after the list), finite.
      query: optional ``[..., P]`` (or ``[P]``) int slots in ``[0, L)`` whose ranks are wanted;
        only a ``P x L`` sigmoid matrix is built per user. Default: every slot (``L x L``).
      tau: temperature (> 0); smaller is closer to the exact rank and less smooth.
      clamp: the sigmoid's argument is clipped to ``[-clamp, clamp]``.
      slope: ``>= 0``, linear tail for competitors ahead (SupRank); 0 = plain sigmoid.
    Returns:
      ``[..., L]`` (or ``[..., P]`` with ``query``) smooth ranks, ``>= 1``.
    """
    scores = _as_float(scores)
    _check_options(tau, slope=slope)
    valid = _valid_mask(scores, where)
    weights = valid.astype(scores.dtype)
    return _weighted_ranks(scores, valid, weights, query, tau, clamp, slope)


def smooth_ndcg(scores, labels, *, where=None, tau=0.1, clamp=50.0, reduce="mean", query=None,
                negative_weight=1.0, slope=0.0, detach_positive_pairs=False) -> Array:
    """Smooth NDCG of each user's list (all positives count: no cutoff).

    ``NDCG~_u = sum_{p in P_u} 1/log2(1 + rank~_p) / IDCG_u``,
    ``IDCG_u = sum_{i=1..|P_u|} 1/log2(1 + i)``, ``P_u`` = valid entries with ``labels > 0``.

    Args:
      scores: ``[..., L]`` float scores.
      labels: ``[..., L]`` binary relevance (``> 0`` = positive).
      where: optional ``[..., L]`` bool validity mask.
      tau, clamp, slope: as in :func:`smooth_ranks`.
      detach_positive_pairs: positive-vs-positive terms keep their value, pass no gradient.
      reduce: ``"mean"`` over users with at least one valid positive (0 if there is none),
        ``"sum"``, or ``None`` for per-user ``[...]`` values (0 for users without positives).
      query: optional ``[..., P]`` int slots of the positives: only those slots are ranked
        (``P x L`` sigmoids per user) and only labelled entries among them count as positives;
        every valid entry still competes in the rank sums.
      negative_weight: scalar or per-user ``[...]`` weight of the negatives' terms in the rank
        sums (1 = plain; ``(|I| - |P_u|) / N`` estimates the full-catalogue rank).
    Returns:
      scalar, or ``[...]`` with ``reduce=None``; values in ``[0, 1]`` when ``negative_weight >= 0``.
    """
    _check_options(tau, reduce, slope=slope)
    ndcg, has_positive = _ndcg_per_user(scores, labels, where, query, tau, clamp, negative_weight, slope,
                                        detach_positive_pairs)
    return _reduce_over_users(ndcg, has_positive, reduce)


def smooth_recall(scores, labels, *, where=None, k=20, tau=0.1, tau_k=1.0, clamp=50.0, reduce="mean",
                  query=None, negative_weight=1.0, slope=0.0, detach_positive_pairs=False) -> Array:
    """Smooth Recall@k of each user's list.

    ``Recall~_u = min(1, sum_{p in P_u} sigmoid(clip((k - rank~_p) / tau_k)) / min(|P_u|, k))``

    The ``min(1, .)`` matters only when ``|P_u| > k`` and ``tau_k`` is large (then many
    half-on sigmoids can add up past ``k``); exact Recall@k never exceeds 1.

    Args: as :func:`smooth_ndcg`, plus ``k`` (cutoff) and ``tau_k`` (> 0, softness of the
    ``rank <= k`` step).
    Returns: scalar, or ``[...]`` with ``reduce=None``; values in ``[0, 1]``.
    """
    _check_options(tau, reduce, k, tau_k, slope)
    recall, has_positive = _recall_per_user(scores, labels, where, query, k, tau, tau_k, clamp, negative_weight,
                                            slope, detach_positive_pairs)
    return _reduce_over_users(recall, has_positive, reduce)


def item_loss(scores, labels, *, where=None, metric="ndcg", tau=0.1, k=20, tau_k=1.0,
              negative_weight=1.0, clamp=50.0, query=None, slope=0.0, detach_positive_pairs=False) -> Array:
    """ITEM loss: ``mean_{u : |P_u| > 0} (1 - metric~_u)`` with metric ``"ndcg"`` or ``"recall"``.

    ``"ndcg+recall"`` adds the two: ``mean_u [(1 - NDCG~_u) + (1 - Recall~_u)]``; the recall term
    weighs every positive near the cut-off ``k`` alike, where NDCG's gain ``1/log2(1 + r)``
    concentrates the gradient on positives already ranked first.

    Args:
      scores, labels, where, tau, clamp, query, slope, detach_positive_pairs: as in :func:`smooth_ndcg`.
      metric: ``"ndcg"`` (:func:`smooth_ndcg`), ``"recall"`` (:func:`smooth_recall` at ``k``
        with softness ``tau_k``) or ``"ndcg+recall"`` (their sum).
      negative_weight: scalar or per-user ``[...]`` reweighting of the negatives' sigmoid terms
        inside the rank sums (1 = plain).
    Returns:
      scalar; 0 when no user has a valid positive (gradients then are zero, not NaN).
    """
    _check_options(tau, "mean", k, tau_k, slope)
    if metric == "ndcg":
        per_user, has_positive = _ndcg_per_user(scores, labels, where, query, tau, clamp, negative_weight, slope,
                                                detach_positive_pairs)
    elif metric == "recall":
        per_user, has_positive = _recall_per_user(scores, labels, where, query, k, tau, tau_k, clamp,
                                                  negative_weight, slope, detach_positive_pairs)
    elif metric == "ndcg+recall":
        losses, has_positive = _ndcg_plus_recall_per_user(scores, labels, where, query, k, tau, tau_k, clamp,
                                                          negative_weight, slope, detach_positive_pairs)
        return _reduce_over_users(losses, has_positive, "mean")
    else:
        raise ConfigError(f"metric={metric!r} is not supported; use one of {_METRICS}")
    return _reduce_over_users(1.0 - per_user, has_positive, "mean")


def bce_loss(pos_scores, neg_scores, *, pos_where=None, neg_where=None) -> Array:
    """Binary cross-entropy on positive and sampled negative edges (the classic baseline).

    ``L = mean_{valid pos} softplus(-s_pos) + mean_{valid neg} softplus(s_neg)``
    (``= -log sigmoid(s_pos)`` and ``-log(1 - sigmoid(s_neg))``); each mean is over its own
    valid entries and is 0 when there is none.

    Args:
      pos_scores: ``[...]`` scores of positive edges; ``pos_where`` optional bool mask.
      neg_scores: ``[...]`` scores of negative edges (any shape); ``neg_where`` optional mask.
    Returns:
      scalar.
    """

    def masked_mean(losses, where):
        if where is None:
            return jnp.mean(losses)
        where = jnp.broadcast_to(jnp.asarray(where, bool), losses.shape)
        total = jnp.sum(jnp.where(where, losses, 0.0))
        return total / jnp.maximum(jnp.sum(where), 1).astype(losses.dtype)

    pos_scores = _as_float(pos_scores)
    neg_scores = _as_float(neg_scores)
    if pos_where is not None:
        pos_scores = jnp.where(jnp.asarray(pos_where, bool), pos_scores, 0.0)
    if neg_where is not None:
        neg_scores = jnp.where(jnp.asarray(neg_where, bool), neg_scores, 0.0)
    return masked_mean(jax.nn.softplus(-pos_scores), pos_where) + masked_mean(jax.nn.softplus(neg_scores), neg_where)
