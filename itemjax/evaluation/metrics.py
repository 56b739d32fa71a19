"""Top-K ranking metrics from the hit pattern of each user's ranked list.

Pure ``jax.numpy``; every function is jit-friendly (``ks`` is a static tuple of ints).
The input is the *hit pattern* of a top-``Kmax`` list, not the scores: the full-ranking
evaluator (:mod:`itemjax.evaluation.evaluate`) computes it with ``lax.top_k`` over the whole catalogue.

Conventions (those of LightGCN / NGCF evaluation code), for a user with ``n_rel`` relevant
(held-out) items and ``hit_r = 1`` when the item ranked ``r`` (0-based) is relevant::

    hits@k      = sum_{r < k} hit_r
    recall@k    = hits@k / n_rel            (denominator n_rel, NOT min(n_rel, k))
    precision@k = hits@k / k
    hitrate@k   = 1[hits@k > 0]
    ndcg@k      = DCG@k / IDCG@k,   DCG@k  = sum_{r < k} hit_r / log2(r + 2),
                                    IDCG@k = sum_{r < min(n_rel, k)} 1 / log2(r + 2)

A user with ``n_rel == 0`` or masked by ``where=False`` gets 0 for every metric (never NaN)
and is left out of :func:`mean_over_users`.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from itemjax.errors import ConfigError

#: Names of the metrics returned for every k, in this order: ``f"{name}@{k}"``.
METRIC_NAMES = ("recall", "ndcg", "precision", "hitrate")


def check_ks(ks: Sequence[int], k_max: int | None = None) -> tuple[int, ...]:
    """Returns ``ks`` as a tuple of positive Python ints, each at most ``k_max`` if given.

    Raises:
      ConfigError: ``ks`` is empty, has a non-integer or non-positive entry, or an entry
        larger than ``k_max``.
    """
    if isinstance(ks, int):
        ks = (ks,)
    ks = tuple(ks)
    if not ks:
        raise ConfigError("ks is empty; pass at least one cutoff, e.g. ks=(20,)")
    checked = []
    for k in ks:
        try:
            if isinstance(k, bool):
                raise TypeError
            k = operator.index(k)
        except TypeError:
            raise ConfigError(f"cutoff {k!r} in ks={ks} is not an integer; use e.g. ks=(10, 20)") from None
        if k < 1:
            raise ConfigError(f"cutoff {k} in ks={ks} must be >= 1")
        if k_max is not None and k > k_max:
            raise ConfigError(f"cutoff {k} in ks={ks} exceeds the {k_max} ranked items available; lower it")
        checked.append(k)
    return tuple(checked)


def rank_discounts(k_max: int, dtype=jnp.float32) -> jax.Array:
    """``[k_max]`` DCG position discounts ``1 / log2(r + 2)`` for 0-based ranks ``r``."""
    return 1.0 / jnp.log2(jnp.arange(k_max, dtype=dtype) + 2.0)


def topk_metrics(
    topk_hits: jax.Array,
    n_relevant: jax.Array,
    ks: Sequence[int],
    *,
    where: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Per-user Recall / NDCG / Precision / HitRate at every cutoff in ``ks``.

    Args:
      topk_hits: ``[B, Kmax]`` bool or float; entry ``[b, r]`` is 1 when the item user ``b``
        ranked at 0-based position ``r`` is one of its relevant items. At most one hit per
        relevant item is assumed (then ``recall <= 1``).
      n_relevant: ``[B]`` int, number of relevant items of each user (all of them, also those
        that could not be ranked, e.g. because they were excluded).
      ks: static tuple of cutoffs, each ``1 <= k <= Kmax``.
      where: optional ``[B]`` bool, ``True`` for users to score. Users with ``where=False``
        or ``n_relevant == 0`` get 0.

    Returns:
      ``{"recall@k", "ndcg@k", "precision@k", "hitrate@k"}`` for each ``k``, each ``[B]``
      (float32, or the float dtype of ``topk_hits``). Formulas in the module docstring:
      recall's denominator is ``n_rel``; NDCG's ideal DCG truncates at ``min(n_rel, k)``.
    """
    if topk_hits.ndim != 2:
        raise ConfigError(f"topk_hits must be [users, Kmax], got shape {topk_hits.shape}")
    k_max = topk_hits.shape[-1]
    ks = check_ks(ks, k_max)
    dtype = topk_hits.dtype if jnp.issubdtype(topk_hits.dtype, jnp.floating) else jnp.float32
    hits = topk_hits.astype(dtype)
    n_relevant = jnp.asarray(n_relevant)
    valid = n_relevant > 0
    if where is not None:
        valid = valid & jnp.asarray(where, dtype=bool)
    n_rel = jnp.maximum(n_relevant, 1).astype(dtype)  # safe denominator; invalid users masked

    discounts = rank_discounts(k_max, dtype)
    cumulative_hits = jnp.cumsum(hits, axis=-1)  # [B, Kmax]: hits@(r+1)
    cumulative_dcg = jnp.cumsum(hits * discounts, axis=-1)  # [B, Kmax]: DCG@(r+1)
    cumulative_ideal = jnp.cumsum(discounts)  # [Kmax]: IDCG for n_rel = r+1

    out: dict[str, jax.Array] = {}
    zero = jnp.zeros((), dtype)
    for k in ks:
        hits_at_k = cumulative_hits[:, k - 1]
        ideal_len = jnp.clip(n_relevant, 1, k).astype(jnp.int32)  # min(n_rel, k), >= 1
        ideal_dcg = cumulative_ideal[ideal_len - 1]
        out[f"recall@{k}"] = jnp.where(valid, hits_at_k / n_rel, zero)
        out[f"ndcg@{k}"] = jnp.where(valid, cumulative_dcg[:, k - 1] / ideal_dcg, zero)
        out[f"precision@{k}"] = jnp.where(valid, hits_at_k / k, zero)
        out[f"hitrate@{k}"] = jnp.where(valid & (hits_at_k > 0), jnp.ones((), dtype), zero)
    return out


def mean_over_users(per_user: Mapping[str, jax.Array], valid_mask: jax.Array) -> dict[str, jax.Array]:
    """Averages each per-user ``[B]`` metric over the users with ``valid_mask == True``.

    ``mean = sum_b valid_b * v_b / max(sum_b valid_b, 1)``: 0 (not NaN) when no user is valid.
    Values are 0-d arrays (jit-friendly); ``float(v)`` converts them.
    """
    valid = jnp.asarray(valid_mask, dtype=bool)
    n_valid = jnp.maximum(jnp.sum(valid), 1)
    return {
        name: jnp.sum(jnp.where(valid, values, jnp.zeros((), values.dtype))) / n_valid.astype(values.dtype)
        for name, values in per_user.items()
    }
