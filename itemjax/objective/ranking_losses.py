"""Smooth ranking losses (ITEM) over per-user candidate lists.

Every function takes ``scores`` of shape ``[..., L]``: users on the leading axes, one candidate
list of ``L`` items per user (its positives and sampled negatives, in any order), like rax.
``where`` (same shape, bool, ``True`` = valid entry) marks padding; a masked entry behaves as
if it had been dropped from the list. ``labels`` are binary relevance (``> 0`` = positive).

Smooth rank of entry ``i`` among the valid entries ``V`` of its list::

    rank~_i = 1 + sum_{j in V, j != i}  w_j * h(s_j - s_i),
    h(t)    = sigmoid(clip(t / tau, -clamp, clamp)) + slope * max(t - margin, 0)

with ``w_j = 1`` (optionally ``w_j = negative_weight`` for negatives, which estimates the rank
in the full catalogue from ``N`` sampled negatives when set to ``(|I| - |P_u|) / N``). As
``tau -> 0`` with distinct scores and ``slope = 0``, ``rank~_i`` tends to the exact 1-based rank
among ``V``.

``h`` is the SupRank surrogate of Ramzi et al. (NeurIPS 2021, "Robust and Decomposable Average
Precision for Image Retrieval"; also used by ROADMAP and by their hierarchical follow-up): a
sigmoid near the tie ``t = 0`` and, beyond the margin ``delta = margin >= 0``, a linear tail of
slope ``rho = slope >= 0`` for competitors scored above ``i``. The sigmoid alone saturates when
``s_j - s_i >> tau`` and gives a badly ranked positive no gradient; the tail keeps a constant pull
``slope`` per competitor more than ``margin`` ahead of it. ``h`` upper-bounds the step
``1[t > 0]`` for ``t >= margin + 1/(2 slope)``. ``margin = 0`` (default) puts the tail right at
the tie; ``slope = 0`` (default) is the plain sigmoid.

``positive_pairs``: exact NDCG and Recall do not change when two positives swap places, but
their smooth versions do (``1/log2(1 + r)`` is convex, so the gradient pushes positives apart
from each other). ``"smooth"`` (default) keeps ``h`` for positive-vs-positive terms;
``"detach"`` keeps their value but passes no gradient (``stop_gradient``; the older boolean
``detach_positive_pairs=True`` means the same), so positives are pushed only above negatives;
``"exact"`` replaces them by the exact step ``1[s_j > s_i]`` (ties count 0, no sigmoid, no
linear tail), which passes no gradient either, as SupRank/ROADMAP do: a positive's smooth rank
then counts the positives ahead of it exactly.

Smooth NDCG of user ``u`` with valid positives ``P_u``::

    NDCG~_u = [ sum_{p in P_u} 1 / log2(1 + rank~_p) ] / IDCG_u,
    IDCG_u  = sum_{i=1..|P_u|} 1 / log2(1 + i)

Smooth Recall@k::

    Recall~_u@k = min(1, sum_{p in P_u} sigmoid(clip((k - rank~_p) / tau_k, -clamp, clamp)) / min(|P_u|, k))

With several cut-offs ``ks`` (``k`` a tuple) the smooth recall is their mean,
``Recall~_u = mean_{k in ks} Recall~_u@k``, each with its own denominator and cap (ROADMAP
averages over ``k in {1, 2, 4, 8, 16}``).

ITEM loss: the mean over users with at least one valid positive of ``1 - metric_u``, plus
optionally ``calibration * C`` with the pairwise calibration term::

    C = mean_{u : |P_u| > 0} [ mean_{p in P_u, n in N_u} softplus(s_n - s_p) ]

(a BPR loss on each list's valid positive-negative pairs, ``N_u`` = valid entries labelled 0;
0 for a user without valid negatives). The rank losses depend on scores only through the
differences ``(s_j - s_i) / tau``, so how far apart positives and negatives are pushed is set
implicitly by ``tau`` and ``tau_k`` (a large ``tau_k`` keeps pulling positives up long after they
are ranked first); ``C`` makes that score-scale pull explicit, as a named tunable weight
(ROADMAP likewise adds a calibration term to its rank loss).

The pairwise sigmoids are one ``[P, L]`` matrix per user (``P = L`` by default; pass ``query``,
the slots of the positives, to build only ``P x L``), computed by a per-list function vmapped
over the leading axes. Users without valid positives contribute exactly 0 and have zero, finite
gradients: masked scores are replaced before any arithmetic and every division or logarithm
that could see 0 goes through the double-``where`` pattern.

:func:`item_loss_blocks` is :func:`item_loss` for lists laid out as ``[positives | negatives]``
with only the positives ranked (the training objective's lists): it builds the ``P x P``
positive-vs-positive block and the ``P x N`` positive-vs-negative block apart, so that with
``positive_pairs="detach"`` or ``"exact"`` the ``P x P`` block is computed without gradient (no
backward pass through it) and only the ``P x N`` block is differentiated; the linear tail is
left out of the graph when ``slope`` is 0. Same value and gradient as :func:`item_loss` on the
concatenated list (up to float rounding: the sums are taken in another order).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp

from itemjax.errors import ConfigError
from itemjax.reductions import masked_mean

Array = jax.Array

_REDUCTIONS = ("mean", "sum", None)
_METRICS = ("ndcg", "recall", "ndcg+recall")
_POSITIVE_PAIRS = ("smooth", "detach", "exact")


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


def _check_nonnegative(name: str, value, fix: str) -> None:
    if isinstance(value, (int, float)) and not value >= 0:
        raise ConfigError(f"{name} must be >= 0, got {value}; pass {fix}")


def _vmap_leading(fn: Callable, n_leading: int) -> Callable:
    """vmaps ``fn`` (defined on one list) over ``n_leading`` leading axes of every argument."""
    for _ in range(n_leading):
        fn = jax.vmap(fn)
    return fn


def _list_ranks(scores: Array, valid: Array, weights: Array, query: Array, tau, clamp, slope, detach, margin=0.0,
                exact=False) -> Array:
    """Smooth ranks of one list.

    Args:
      scores: ``[L]`` with masked entries already replaced by a finite value.
      valid: ``[L]`` bool.
      weights: ``[L]`` weight of each entry as a competitor (0 for masked entries).
      query: ``[P]`` int slots whose ranks are wanted.
      detach: ``[L]`` bool competitors whose terms pass no gradient.
      margin: start ``delta`` of the linear tail.
      exact: static; if True the ``detach`` competitors' terms are the exact step
        ``1[s_j > s_q]`` (no sigmoid, no tail) instead of a detached ``h``.
    Returns:
      ``[P]``: ``1 + sum_{j != q} weights_j * h(s_j - s_q)`` (module docstring) for valid ``q``;
      ``1 + sum_{j != q} weights_j`` (after every valid entry) for a masked ``q``.
    """
    n_slots = scores.shape[-1]
    query_scores = scores[query]  # [P]
    diffs = scores[None, :] - query_scores[:, None]  # [P, L]: s_j - s_q
    beats = jax.nn.sigmoid(jnp.clip(diffs / tau, -clamp, clamp))
    beats = beats + slope * jnp.maximum(diffs - margin, 0.0)
    if exact:
        step = jax.lax.stop_gradient((diffs > 0).astype(beats.dtype))  # ties count 0
        beats = jnp.where(detach[None, :], step, beats)
    else:
        beats = jnp.where(detach[None, :], jax.lax.stop_gradient(beats), beats)
    beats = jnp.where(valid[query][:, None], beats, 1.0)
    not_self = query[:, None] != jnp.arange(n_slots)[None, :]
    competitor = jnp.where(not_self, weights[None, :], 0.0)
    return 1.0 + jnp.sum(beats * competitor, axis=-1)


@partial(jax.jit, static_argnames=("exact",))
def _weighted_ranks(scores, valid, weights, query, tau, clamp, slope=0.0, detach=None, margin=0.0,
                    exact=False) -> Array:
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
        lambda s, v, w, q, d: _list_ranks(s, v, w, q, tau, clamp, slope, d, margin, exact), scores.ndim - 1
    )
    return ranks_fn(safe_scores, valid, weights.astype(scores.dtype), query, detach)


def _positive_ranks(scores, labels, where, query, tau, clamp, negative_weight, slope, detach_positive_pairs,
                    margin=0.0, exact_positive_pairs=False):
    """Shared front end of the metrics.

    Returns ``(ranks [..., P], is_positive [..., P])`` at the query slots (all slots by
    default), where ``is_positive`` = labelled positive and valid. ``detach_positive_pairs``
    (bool, may be traced) detaches the positive competitors' terms; ``exact_positive_pairs``
    (static bool) replaces them by the exact step.
    """
    scores = _as_float(scores)
    valid = _valid_mask(scores, where)
    is_positive = (jnp.broadcast_to(jnp.asarray(labels), scores.shape) > 0) & valid
    negative_weight = jnp.asarray(negative_weight, scores.dtype)[..., None]  # scalar or per user
    weights = jnp.where(valid, jnp.where(is_positive, 1.0, negative_weight), 0.0)
    if exact_positive_pairs:
        detach = is_positive
    else:
        detach = is_positive & jnp.asarray(detach_positive_pairs, bool)
    ranks = _weighted_ranks(scores, valid, weights, query, tau, clamp, slope, detach, margin, exact_positive_pairs)
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


def _recall_at_k_from_ranks(ranks, is_positive, k, tau_k, clamp):
    """``(Recall~_u@k [...], has_positive [...])`` for one cut-off ``k`` (a scalar)."""
    in_top_k = jax.nn.sigmoid(jnp.clip((k - ranks) / tau_k, -clamp, clamp))
    hits = jnp.sum(jnp.where(is_positive, in_top_k, 0.0), axis=-1)
    n_positive = jnp.sum(is_positive, axis=-1)
    has_positive = n_positive > 0
    denominator = jnp.minimum(n_positive, k).astype(ranks.dtype)
    recall = jnp.where(has_positive, hits / jnp.where(has_positive, denominator, 1.0), 0.0)
    return jnp.minimum(recall, 1.0), has_positive


def _recall_from_ranks(ranks, is_positive, k, tau_k, clamp):
    """``(Recall~_u [...], has_positive [...])`` from smooth ranks ``[..., P]`` at the query slots.

    ``k`` is a scalar cut-off or a tuple of them (inside jit: a tuple of traced scalars); with a
    tuple the result is the mean over its cut-offs of the single-``k`` recalls.
    """
    if not isinstance(k, (tuple, list)):
        return _recall_at_k_from_ranks(ranks, is_positive, k, tau_k, clamp)
    total, has_positive = _recall_at_k_from_ranks(ranks, is_positive, k[0], tau_k, clamp)
    for cutoff in k[1:]:
        total = total + _recall_at_k_from_ranks(ranks, is_positive, cutoff, tau_k, clamp)[0]
    return total / len(k), has_positive


_PAIR_STATIC = ("exact_positive_pairs",)


@partial(jax.jit, static_argnames=_PAIR_STATIC)
def _ndcg_per_user(scores, labels, where, query, tau, clamp, negative_weight, slope=0.0, detach_positive_pairs=False,
                   margin=0.0, exact_positive_pairs=False):
    """``(NDCG~_u [...], has_positive [...])``; 0 for users without valid positives."""
    return _ndcg_from_ranks(*_positive_ranks(scores, labels, where, query, tau, clamp, negative_weight, slope,
                                             detach_positive_pairs, margin, exact_positive_pairs))


@partial(jax.jit, static_argnames=_PAIR_STATIC)
def _recall_per_user(scores, labels, where, query, k, tau, tau_k, clamp, negative_weight, slope=0.0,
                     detach_positive_pairs=False, margin=0.0, exact_positive_pairs=False):
    """``(Recall~_u [...], has_positive [...])``; 0 for users without valid positives."""
    ranks, is_positive = _positive_ranks(scores, labels, where, query, tau, clamp, negative_weight, slope,
                                         detach_positive_pairs, margin, exact_positive_pairs)
    return _recall_from_ranks(ranks, is_positive, k, tau_k, clamp)


@partial(jax.jit, static_argnames=_PAIR_STATIC)
def _ndcg_plus_recall_per_user(scores, labels, where, query, k, tau, tau_k, clamp, negative_weight, slope,
                               detach_positive_pairs, margin=0.0, exact_positive_pairs=False):
    """``((1 - NDCG~_u) + (1 - Recall~_u) [...], has_positive [...])`` from ONE set of smooth ranks."""
    ranks, is_positive = _positive_ranks(scores, labels, where, query, tau, clamp, negative_weight, slope,
                                         detach_positive_pairs, margin, exact_positive_pairs)
    ndcg, has_positive = _ndcg_from_ranks(ranks, is_positive)
    recall, _ = _recall_from_ranks(ranks, is_positive, k, tau_k, clamp)
    return (1.0 - ndcg) + (1.0 - recall), has_positive


@jax.jit
def _calibration_per_user(scores, labels, where, query):
    """``(C_u [...], has_positive [...])``: mean of ``softplus(s_n - s_p)`` over the valid
    (positive ``p`` at a query slot, negative ``n``) pairs of each list; 0 without such pairs."""
    scores = _as_float(scores)
    valid = _valid_mask(scores, where)
    labelled = jnp.broadcast_to(jnp.asarray(labels), scores.shape) > 0
    is_positive = labelled & valid
    is_negative = ~labelled & valid
    safe_scores = jnp.where(valid, scores, 0.0)
    if query is None:
        positive_scores, is_query_positive = safe_scores, is_positive
    else:
        query = jnp.broadcast_to(jnp.asarray(query, jnp.int32), scores.shape[:-1] + jnp.shape(query)[-1:])
        positive_scores = jnp.take_along_axis(safe_scores, query, axis=-1)
        is_query_positive = jnp.take_along_axis(is_positive, query, axis=-1)
    pairs = is_query_positive[..., :, None] & is_negative[..., None, :]  # [..., P, L]
    losses = jax.nn.softplus(safe_scores[..., None, :] - positive_scores[..., :, None])
    total = jnp.sum(jnp.where(pairs, losses, 0.0), axis=(-2, -1))
    n_pairs = jnp.sum(pairs, axis=(-2, -1))
    has_pairs = n_pairs > 0
    per_user = jnp.where(has_pairs, total / jnp.where(has_pairs, n_pairs, 1).astype(scores.dtype), 0.0)
    return per_user, jnp.any(is_query_positive, axis=-1)


def _cutoffs(k):
    """``k`` unchanged if it is one cut-off, else the tuple of its cut-offs."""
    if isinstance(k, (tuple, list)) or jnp.ndim(k) > 0:
        return tuple(k)
    return k


def _positive_pair_mode(positive_pairs, detach_positive_pairs):
    """``(detach flag, exact: static bool)`` from ``positive_pairs`` and the older boolean."""
    if positive_pairs is None:
        return detach_positive_pairs, False
    if positive_pairs not in _POSITIVE_PAIRS:
        raise ConfigError(f"positive_pairs={positive_pairs!r} is not supported; use one of {_POSITIVE_PAIRS}")
    if isinstance(detach_positive_pairs, jax.core.Tracer):
        raise ConfigError("positive_pairs cannot be combined with a traced detach_positive_pairs; "
                          "pass only positive_pairs")
    if bool(detach_positive_pairs) and positive_pairs != "detach":
        raise ConfigError(f"detach_positive_pairs=True contradicts positive_pairs={positive_pairs!r}; "
                          "pass only positive_pairs (detach_positive_pairs=True means positive_pairs='detach')")
    return positive_pairs == "detach", positive_pairs == "exact"


def _check_options(tau, reduce="mean", k=1, tau_k=1.0, slope=0.0, margin=0.0) -> None:
    _check_positive("tau", tau)
    _check_nonnegative("slope", slope, "0 (plain sigmoid) or a positive number")
    _check_nonnegative("margin", margin, "0 (linear tail from the tie on) or a positive score gap")
    cutoffs = k if isinstance(k, tuple) else (k,)
    if not cutoffs:
        raise ConfigError("k is an empty sequence of cut-offs; pass an int or a non-empty tuple of ints")
    for cutoff in cutoffs:
        _check_positive("k", cutoff)
    _check_positive("tau_k", tau_k)
    if reduce not in _REDUCTIONS:
        raise ConfigError(f"reduce={reduce!r} is not supported; use one of {_REDUCTIONS}")


def _reduce_over_users(per_user: Array, has_positive: Array, reduce) -> Array:
    if reduce is None:
        return per_user
    if reduce == "sum":
        return jnp.sum(jnp.where(has_positive, per_user, 0.0))
    return masked_mean(per_user, has_positive)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def smooth_ranks(scores, where=None, *, query=None, tau=0.1, clamp=50.0, slope=0.0, margin=0.0) -> Array:
    """Smooth 1-based ranks of list entries (higher score = better = smaller rank).

    ``rank~_i = 1 + sum_{j valid, j != i} [sigmoid(clip((s_j - s_i) / tau, -clamp, clamp))
    + slope * max(s_j - s_i - margin, 0)]``

    Args:
      scores: ``[..., L]`` float scores, users on the leading axes.
      where: optional ``[..., L]`` bool, ``True`` = valid entry. Masked entries do not compete;
        their own output is ``1 + (number of valid entries)`` (placed after the list), finite.
      query: optional ``[..., P]`` (or ``[P]``) int slots in ``[0, L)`` whose ranks are wanted;
        only a ``P x L`` sigmoid matrix is built per user. Default: every slot (``L x L``).
      tau: temperature (> 0); smaller is closer to the exact rank and less smooth.
      clamp: the sigmoid's argument is clipped to ``[-clamp, clamp]``.
      slope: ``>= 0``, linear tail for competitors ahead (SupRank ``rho``); 0 = plain sigmoid.
      margin: ``>= 0``, score gap beyond which the linear tail starts (SupRank ``delta``).
    Returns:
      ``[..., L]`` (or ``[..., P]`` with ``query``) smooth ranks, ``>= 1``.
    """
    scores = _as_float(scores)
    _check_options(tau, slope=slope, margin=margin)
    valid = _valid_mask(scores, where)
    weights = valid.astype(scores.dtype)
    return _weighted_ranks(scores, valid, weights, query, tau, clamp, slope, None, margin)


def smooth_ndcg(scores, labels, *, where=None, tau=0.1, clamp=50.0, reduce="mean", query=None,
                negative_weight=1.0, slope=0.0, detach_positive_pairs=False, margin=0.0,
                positive_pairs=None) -> Array:
    """Smooth NDCG of each user's list (all positives count: no cutoff).

    ``NDCG~_u = sum_{p in P_u} 1/log2(1 + rank~_p) / IDCG_u``,
    ``IDCG_u = sum_{i=1..|P_u|} 1/log2(1 + i)``, ``P_u`` = valid entries with ``labels > 0``.

    Args:
      scores: ``[..., L]`` float scores.
      labels: ``[..., L]`` binary relevance (``> 0`` = positive).
      where: optional ``[..., L]`` bool validity mask.
      tau, clamp, slope, margin: as in :func:`smooth_ranks`.
      positive_pairs: how positive-vs-positive terms enter a positive's rank (module docstring):
        ``"smooth"`` (``h``, with gradient), ``"detach"`` (``h``'s value, no gradient) or
        ``"exact"`` (the step ``1[s_j > s_i]``, no gradient). ``None`` (default) takes it from
        ``detach_positive_pairs``.
      detach_positive_pairs: older spelling; ``True`` is ``positive_pairs="detach"``, ``False``
        is ``"smooth"`` unless ``positive_pairs`` says otherwise. ``True`` together with another
        ``positive_pairs`` raises :class:`ConfigError`.
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
    _check_options(tau, reduce, slope=slope, margin=margin)
    detach, exact = _positive_pair_mode(positive_pairs, detach_positive_pairs)
    ndcg, has_positive = _ndcg_per_user(scores, labels, where, query, tau, clamp, negative_weight, slope, detach,
                                        margin, exact_positive_pairs=exact)
    return _reduce_over_users(ndcg, has_positive, reduce)


def smooth_recall(scores, labels, *, where=None, k=20, tau=0.1, tau_k=1.0, clamp=50.0, reduce="mean",
                  query=None, negative_weight=1.0, slope=0.0, detach_positive_pairs=False, margin=0.0,
                  positive_pairs=None) -> Array:
    """Smooth Recall@k of each user's list.

    ``Recall~_u@k = min(1, sum_{p in P_u} sigmoid(clip((k - rank~_p) / tau_k)) / min(|P_u|, k))``;
    with a tuple ``k = (k_1, ..., k_m)``: ``Recall~_u = (1/m) sum_i Recall~_u@k_i``.

    The ``min(1, .)`` matters only when ``|P_u| > k`` and ``tau_k`` is large (then many
    half-on sigmoids can add up past ``k``); exact Recall@k never exceeds 1.

    Args: as :func:`smooth_ndcg`, plus ``k`` (cut-off: an int, or a tuple/list of ints whose
    single-cut-off recalls are averaged) and ``tau_k`` (> 0, softness of the ``rank <= k`` step).
    Returns: scalar, or ``[...]`` with ``reduce=None``; values in ``[0, 1]``.
    """
    k = _cutoffs(k)
    _check_options(tau, reduce, k, tau_k, slope, margin)
    detach, exact = _positive_pair_mode(positive_pairs, detach_positive_pairs)
    recall, has_positive = _recall_per_user(scores, labels, where, query, k, tau, tau_k, clamp, negative_weight,
                                            slope, detach, margin, exact_positive_pairs=exact)
    return _reduce_over_users(recall, has_positive, reduce)


def _item_options(k, tau, tau_k, slope, margin, calibration, metric, positive_pairs, detach_positive_pairs):
    """The checks shared by :func:`item_loss` and :func:`item_loss_blocks`; returns
    ``(cut-offs, detach, exact)``."""
    k = _cutoffs(k)
    _check_options(tau, "mean", k, tau_k, slope, margin)
    _check_nonnegative("calibration", calibration, "0 (no calibration term) or a positive weight")
    if metric not in _METRICS:
        raise ConfigError(f"metric={metric!r} is not supported; use one of {_METRICS}")
    detach, exact = _positive_pair_mode(positive_pairs, detach_positive_pairs)
    return k, detach, exact


def item_loss(scores, labels, *, where=None, metric="ndcg", tau=0.1, k=20, tau_k=1.0,
              negative_weight=1.0, clamp=50.0, query=None, slope=0.0, detach_positive_pairs=False,
              margin=0.0, positive_pairs=None, calibration=0.0) -> Array:
    """ITEM loss: ``mean_{u : |P_u| > 0} (1 - metric~_u)`` with metric ``"ndcg"`` or ``"recall"``,
    plus ``calibration * C`` (module docstring).

    ``"ndcg+recall"`` adds the two: ``mean_u [(1 - NDCG~_u) + (1 - Recall~_u)]``; the recall term
    weighs every positive near the cut-off ``k`` alike, where NDCG's gain ``1/log2(1 + r)``
    concentrates the gradient on positives already ranked first.

    Args:
      scores, labels, where, tau, clamp, query, slope, margin, positive_pairs,
        detach_positive_pairs: as in :func:`smooth_ndcg`.
      metric: ``"ndcg"`` (:func:`smooth_ndcg`), ``"recall"`` (:func:`smooth_recall` at ``k``
        with softness ``tau_k``; ``k`` may be a tuple of cut-offs) or ``"ndcg+recall"`` (their sum).
      negative_weight: scalar or per-user ``[...]`` reweighting of the negatives' sigmoid terms
        inside the rank sums (1 = plain).
      calibration: ``>= 0`` weight of the pairwise calibration term
        ``C = mean_{u : |P_u| > 0} mean_{p in P_u, n in N_u} softplus(s_n - s_p)`` (a BPR loss on
        the list's valid positive-negative pairs; with ``query`` the positives are the labelled
        valid query slots, the negatives all valid entries labelled 0; a user without valid
        negatives adds 0). It makes explicit, as a tunable weight, the score-scale pull that a
        large ``tau_k`` exerts implicitly. 0 (default) skips it.
    Returns:
      scalar; 0 when no user has a valid positive (gradients then are zero, not NaN).
    """
    k, detach, exact = _item_options(k, tau, tau_k, slope, margin, calibration, metric, positive_pairs,
                                     detach_positive_pairs)
    if metric == "ndcg":
        per_user, has_positive = _ndcg_per_user(scores, labels, where, query, tau, clamp, negative_weight, slope,
                                                detach, margin, exact_positive_pairs=exact)
        loss = _reduce_over_users(1.0 - per_user, has_positive, "mean")
    elif metric == "recall":
        per_user, has_positive = _recall_per_user(scores, labels, where, query, k, tau, tau_k, clamp,
                                                  negative_weight, slope, detach, margin, exact_positive_pairs=exact)
        loss = _reduce_over_users(1.0 - per_user, has_positive, "mean")
    else:
        losses, has_positive = _ndcg_plus_recall_per_user(scores, labels, where, query, k, tau, tau_k, clamp,
                                                          negative_weight, slope, detach, margin,
                                                          exact_positive_pairs=exact)
        loss = _reduce_over_users(losses, has_positive, "mean")
    if isinstance(calibration, (int, float)) and calibration == 0:
        return loss
    per_user, has_positive = _calibration_per_user(scores, labels, where, query)
    return loss + calibration * _reduce_over_users(per_user, has_positive, "mean")


def _pair_mode(detach, exact: bool) -> str:
    """Static name of the positive-pair treatment from :func:`_positive_pair_mode`'s output:
    ``"exact"``, ``"detach"``, ``"smooth"``, or ``"dynamic"`` (a traced ``detach`` flag)."""
    if exact:
        return "exact"
    if isinstance(detach, jax.core.Tracer):
        return "dynamic"
    return "detach" if bool(detach) else "smooth"


@partial(jax.jit, static_argnames=("metric", "pairs", "tail", "calibrate"))
def _block_item_loss(pos_scores, neg_scores, pos_where, neg_where, k, tau, tau_k, clamp, negative_weight, slope, margin,
                     detach, calibration, *, metric, pairs, tail, calibrate):
    """:func:`item_loss_blocks` after validation; ``pairs`` from :func:`_pair_mode`, ``tail``:
    ``slope`` may be non-zero, ``calibrate``: add the calibration term."""
    pos_valid = _valid_mask(pos_scores, pos_where)
    pos = jnp.where(pos_valid, pos_scores, 0.0)  # [..., P]
    neg = jnp.where(neg_where, neg_scores, 0.0) if neg_where is not None else neg_scores  # [..., N]

    temperature = jnp.asarray(tau, pos.dtype)[..., None, None]  # scalar or per user [..., 1, 1]

    def h(diffs):
        beats = jax.nn.sigmoid(jnp.clip(diffs / temperature, -clamp, clamp))
        return beats + slope * jnp.maximum(diffs - margin, 0.0) if tail else beats

    # positive q vs positive j: [..., P (q), P (j)], s_j - s_q; the diagonal (j = q) does not compete
    diffs_pp = pos[..., None, :] - pos[..., :, None]
    if pairs == "exact":
        beats_pp = jax.lax.stop_gradient((diffs_pp > 0).astype(pos.dtype))  # ties count 0
    elif pairs == "detach":
        beats_pp = h(jax.lax.stop_gradient(diffs_pp))  # no backward pass through this block
    else:
        beats_pp = h(diffs_pp)
        if pairs == "dynamic":
            beats_pp = jnp.where(detach, jax.lax.stop_gradient(beats_pp), beats_pp)
    n_pos = pos.shape[-1]
    competes = pos_valid[..., None, :] & ~jnp.eye(n_pos, dtype=bool)
    ahead_pos = jnp.sum(jnp.where(competes, beats_pp, 0.0), axis=-1)
    # positive q vs negative n: [..., P, N], s_n - s_q
    diffs_pn = neg[..., None, :] - pos[..., :, None]
    beats_pn = h(diffs_pn)
    if neg_where is not None:
        beats_pn = jnp.where(neg_where[..., None, :], beats_pn, 0.0)
    negative_weight = jnp.asarray(negative_weight, pos.dtype)[..., None]  # scalar or per user
    ranks = 1.0 + ahead_pos + negative_weight * jnp.sum(beats_pn, axis=-1)

    if metric == "ndcg":
        ndcg, has_positive = _ndcg_from_ranks(ranks, pos_valid)
        loss = _reduce_over_users(1.0 - ndcg, has_positive, "mean")
    elif metric == "recall":
        recall, has_positive = _recall_from_ranks(ranks, pos_valid, k, tau_k, clamp)
        loss = _reduce_over_users(1.0 - recall, has_positive, "mean")
    else:
        ndcg, has_positive = _ndcg_from_ranks(ranks, pos_valid)
        recall, _ = _recall_from_ranks(ranks, pos_valid, k, tau_k, clamp)
        loss = _reduce_over_users((1.0 - ndcg) + (1.0 - recall), has_positive, "mean")
    if not calibrate:
        return loss
    neg_valid = _valid_mask(neg, neg_where)
    pairs_valid = pos_valid[..., :, None] & neg_valid[..., None, :]
    total = jnp.sum(jnp.where(pairs_valid, jax.nn.softplus(diffs_pn), 0.0), axis=(-2, -1))
    n_pairs = jnp.sum(pairs_valid, axis=(-2, -1))
    has_pairs = n_pairs > 0
    per_user = jnp.where(has_pairs, total / jnp.where(has_pairs, n_pairs, 1).astype(pos.dtype), 0.0)
    return loss + calibration * _reduce_over_users(per_user, jnp.any(pos_valid, axis=-1), "mean")


def item_loss_blocks(pos_scores, neg_scores, *, pos_where=None, neg_where=None, metric="ndcg", tau=0.1, k=20,
                     tau_k=1.0, negative_weight=1.0, clamp=50.0, slope=0.0, detach_positive_pairs=False, margin=0.0,
                     positive_pairs=None, calibration=0.0) -> Array:
    """:func:`item_loss` of lists laid out as ``[positives | negatives]``, only the positives ranked.

    Equal (value and gradient, up to float rounding) to::

        item_loss(concatenate([pos_scores, neg_scores], -1), labels=[1] * P + [0] * N,
                  where=concatenate([pos_where, neg_where], -1), query=arange(P), ...)

    but cheaper: the ``P x P`` positive block and the ``P x N`` negative block are built apart,
    the former without gradient when positive pairs are detached or exact (module docstring).

    Args:
      pos_scores: ``[..., P]`` scores of the positives; ``pos_where`` optional bool mask (padding).
      neg_scores: ``[..., N]`` scores of the negatives; ``neg_where`` optional bool mask.
      tau: as :func:`item_loss`, or ``[...]`` one temperature per list (``--tau-by-positives``).
      everything else: as :func:`item_loss`.
    Returns:
      scalar; 0 when no user has a valid positive.
    """
    k, detach, exact = _item_options(k, tau, tau_k, slope, margin, calibration, metric, positive_pairs,
                                     detach_positive_pairs)
    pos_scores, neg_scores = _as_float(pos_scores), _as_float(neg_scores)
    neg_where = None if neg_where is None else _valid_mask(neg_scores, neg_where)
    tail = not (isinstance(slope, (int, float)) and slope == 0)
    calibrate = not (isinstance(calibration, (int, float)) and calibration == 0)
    return _block_item_loss(pos_scores, neg_scores, pos_where, neg_where, k, tau, tau_k, clamp, negative_weight, slope,
                            margin, detach, calibration, metric=metric, pairs=_pair_mode(detach, exact), tail=tail,
                            calibrate=calibrate)


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
    pos_scores = _as_float(pos_scores)
    neg_scores = _as_float(neg_scores)
    if pos_where is not None:
        pos_scores = jnp.where(jnp.asarray(pos_where, bool), pos_scores, 0.0)
    if neg_where is not None:
        neg_scores = jnp.where(jnp.asarray(neg_where, bool), neg_scores, 0.0)
    return masked_mean(jax.nn.softplus(-pos_scores), pos_where) + masked_mean(jax.nn.softplus(neg_scores), neg_where)
