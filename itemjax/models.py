"""Recommender models as Flax linen modules.

Every model maps a :class:`~itemjax.propagation.DeviceGraph` to final embeddings::

    user_emb, item_emb = model.apply({"params": params}, graph, train=False)
    # user_emb [n_users, dim_out], item_emb [n_items, dim_out]; score s(u, i) = <e_u, e_i>

Parameters always include the ID ("ego") embedding tables ``user_embedding``
[n_users, dim] and ``item_embedding`` [n_items, dim], which the BPR L2 term regularises.
Sizes come from static fields, never from traced values.

Compute dtype (flax convention): a model's ``dtype`` field (default float32) is the dtype of
propagation and of the returned embeddings (so of the objectives' score products);
parameters stay float32 (``param_dtype``) and the objectives compute the loss in float32.
``dtype=jnp.bfloat16`` halves memory traffic on GPU / TPU; on CPU the csr backend has no
bfloat16 kernel (JAX falls back to a slow generic one), so bfloat16 is for the segment backend.
New models cast with :func:`compute_cast`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from itemjax.propagation import DeviceGraph, propagate

#: Standard deviation of the normal initialiser of the ID embeddings (LightGCN uses 0.1).
EMBEDDING_INIT_STD = 0.1


class IdEmbeddings(nn.Module):
    """The two ID embedding tables, ``user_embedding`` and ``item_embedding``."""

    n_users: int
    n_items: int
    dim: int

    @nn.compact
    def __call__(self):
        init = nn.initializers.normal(stddev=EMBEDDING_INIT_STD)
        users = self.param("user_embedding", init, (self.n_users, self.dim))
        items = self.param("item_embedding", init, (self.n_items, self.dim))
        return users, items


def compute_cast(dtype, *arrays):
    """``arrays`` cast to the compute ``dtype`` (float32 parameters -> e.g. bfloat16 activations)."""
    cast = tuple(jnp.asarray(a, dtype) for a in arrays)
    return cast[0] if len(cast) == 1 else cast


class MF(nn.Module):
    """Matrix factorisation: ``s(u, i) = <p_u, q_i>``; the graph is ignored."""

    n_users: int
    n_items: int
    dim: int = 64
    dtype: Any = jnp.float32  # compute dtype of the returned embeddings

    @nn.compact
    def __call__(self, graph: DeviceGraph | None = None, *, train: bool = False):
        users, items = IdEmbeddings(self.n_users, self.n_items, self.dim, name="ids")()
        return compute_cast(self.dtype, users, items)


class LightGCN(nn.Module):
    """LightGCN (He et al., SIGIR 2020): mean of K parameter-free propagations.

    With ``x^0 = [P; Q]`` ([n_nodes, dim], users then items) and the symmetric normalised
    adjacency ``A_hat = D^-1/2 A D^-1/2``::

        x^{k+1} = A_hat x^k,        e = (1 / (K + 1)) * sum_{k=0..K} x^k
    """

    n_users: int
    n_items: int
    dim: int = 64
    n_layers: int = 3
    dtype: Any = jnp.float32  # compute dtype of propagation and of the returned embeddings

    @nn.compact
    def __call__(self, graph: DeviceGraph, *, train: bool = False):
        users, items = IdEmbeddings(self.n_users, self.n_items, self.dim, name="ids")()
        x = compute_cast(self.dtype, jnp.concatenate([users, items], axis=0))
        total = x
        for _ in range(self.n_layers):
            x = propagate(graph, x)
            total = total + x
        out = total / (self.n_layers + 1)
        return out[: self.n_users], out[self.n_users :]


MODELS = {"mf": MF, "lightgcn": LightGCN}


def id_embeddings(params) -> tuple:
    """The ego tables ``(user_embedding [n_users, d], item_embedding [n_items, d])`` of any model."""
    ids = params["ids"]
    return ids["user_embedding"], ids["item_embedding"]
