"""Masked reductions shared by the losses (one place for the masked mean)."""

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
