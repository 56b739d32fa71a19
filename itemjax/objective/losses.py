"""Pairwise losses over (user, positive, negative) triples, and InfoNCE between two views.

The list-wise smooth-rank losses (ITEM) live in :mod:`itemjax.objective.ranking_losses`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from itemjax.reductions import l2_normalize, masked_mean


def bpr_loss(pos_scores: jax.Array, neg_scores: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """Bayesian personalised ranking loss (Rendle et al., 2009).

    ``L = mean_{(u,p,n)} softplus(s_un - s_up)  ( = -log sigmoid(s_up - s_un) )``

    Args:
      pos_scores: ``[...]`` scores of the positives.
      neg_scores: ``[...]`` scores of the negatives (same shape, or broadcastable).
      where: optional boolean mask of valid triples; masked ones do not count.
    Returns:
      scalar mean over valid triples (0 when none is valid).
    """
    return masked_mean(jax.nn.softplus(neg_scores - pos_scores), where)


def l2_penalty(*embeddings: jax.Array, batch_size: int | jax.Array) -> jax.Array:
    """LightGCN's L2 term on the ego embeddings used in a batch.

    ``R = (1/2) * sum_t ||E_t||_F^2 / batch_size`` over the gathered tables ``E_t``
    (users, positives, negatives), multiplied by the coefficient ``l2`` by the caller.
    """
    total = sum(jnp.sum(jnp.square(e)) for e in embeddings)
    return 0.5 * total / batch_size


def info_nce(a: jax.Array, b: jax.Array, where: jax.Array | None = None, *, temperature: float) -> jax.Array:
    """InfoNCE between two views of the same ``n`` nodes (SGL's contrastive loss).

    With ``z = a / ||a||`` and ``z' = b / ||b||`` row-wise (``[n, d]``), each valid row ``i`` is
    pulled towards its own other view and pushed from the other valid rows' views::

        L = mean_{i valid} [ -z_i.z'_i / T + log sum_{j valid} exp(z_i.z'_j / T) ]

    Args:
      a, b: ``[n, d]`` the two views' embeddings of the same nodes (row ``i`` = node ``i``).
      where: optional ``[n]`` bool, the valid rows (padding and repeated nodes masked, both as
        anchors and as negatives).
      temperature: ``T > 0``.
    Returns:
      scalar, 0 when no row is valid.
    """
    za = l2_normalize(a.astype(jnp.float32))
    zb = l2_normalize(b.astype(jnp.float32))
    logits = za @ zb.T / temperature  # [n, n]
    if where is None:
        where = jnp.ones(a.shape[0], bool)
    masked = jnp.where(where[None, :], logits, -1e30)  # finite: no NaN gradient when nothing is valid
    return masked_mean(jax.nn.logsumexp(masked, axis=-1) - jnp.diagonal(logits), where)
