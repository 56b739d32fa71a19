"""Pairwise losses over (user, positive, negative) triples.

The list-wise smooth-rank losses (ITEM) live in :mod:`itemjax.ranking_losses`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
    losses = jax.nn.softplus(neg_scores - pos_scores)
    if where is None:
        return jnp.mean(losses)
    where = jnp.broadcast_to(where, losses.shape)
    n = jnp.sum(where)
    return jnp.sum(jnp.where(where, losses, 0.0)) / jnp.maximum(n, 1)


def l2_penalty(*embeddings: jax.Array, batch_size: int | jax.Array) -> jax.Array:
    """LightGCN's L2 term on the ego embeddings used in a batch.

    ``R = (1/2) * sum_t ||E_t||_F^2 / batch_size`` over the gathered tables ``E_t``
    (users, positives, negatives), multiplied by the coefficient ``l2`` by the caller.
    """
    total = sum(jnp.sum(jnp.square(e)) for e in embeddings)
    return 0.5 * total / batch_size
