"""Reductions shared by the layers above: the masked mean of the losses, the row L2 normalisation of the
models, the propagation and the losses (one place for each)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(values: jax.Array, where=None, axis=None) -> jax.Array:
    """Mean of ``values`` over the entries where ``where`` is True, 0 where none is.

    ``sum(where * values, axis) / max(sum(where, axis), 1)``; masked entries never enter the
    sum (``jnp.where``, so a NaN or inf there does not leak into the value or the gradient).
    ``where=None`` is the plain mean. ``where`` broadcasts against ``values``.
    """
    if where is None:
        return jnp.mean(values, axis=axis)
    where = jnp.broadcast_to(jnp.asarray(where, bool), values.shape)
    total = jnp.sum(jnp.where(where, values, 0.0), axis=axis)
    return total / jnp.maximum(jnp.sum(where, axis=axis), 1).astype(values.dtype)


#: Smallest norm :func:`l2_normalize` divides by (torch's ``F.normalize`` eps).
NORMALIZE_EPS = 1e-12


def l2_normalize(x: jax.Array, eps: float = NORMALIZE_EPS) -> jax.Array:
    """Rows of ``x`` [n, d] divided by ``max(||x_r||_2, eps)``: zero rows stay 0, gradients finite."""
    squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(squared, eps * eps))
