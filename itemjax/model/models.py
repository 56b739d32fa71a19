"""Recommender models as Flax linen modules.

Every model maps a :class:`~itemjax.graph.propagation.DeviceGraph` to final embeddings::

    user_emb, item_emb = model.apply({"params": params}, graph, train=False)
    # user_emb [n_users, dim_out], item_emb [n_items, dim_out]; score s(u, i) = <e_u, e_i>

Parameters always include the ID ("ego") embedding tables ``user_embedding``
[n_users, dim] and ``item_embedding`` [n_items, dim], which the BPR L2 term regularises.
Sizes come from static fields, never from traced values. ``dim_out`` is ``dim`` for MF
and LightGCN and ``dim * (n_layers + 1)`` for NGCF, GAT and SAGE (layer concatenation).

Layers: every model also returns its per-layer embeddings with ``layers=True``::

    user_layers, item_layers = model.apply({"params": params}, graph, layers=True)
    # [n_users, K + 1, dim], [n_items, K + 1, dim]; pool_layers(x, model.LAYER_POOL) is the
    # final embedding (LightGCN: mean of the layers; NGCF, GAT, SAGE: their concatenation)

which is what MixGCF's hop mixing reads (:func:`itemjax.objective.objectives.mixgcf_objective`).

Compute dtype (flax convention): a model's ``dtype`` field (default float32) is the dtype of
propagation and of the returned embeddings (so of the objectives' score products);
parameters stay float32 (``param_dtype``) and the objectives compute the loss in float32.
``dtype=jnp.bfloat16`` halves memory traffic on GPU / TPU; on CPU the csr backend has no
bfloat16 kernel (JAX falls back to a slow generic one), so bfloat16 is for the segment backend
(the native backend has one, summing in float32; not timed against float32 yet).
New models cast with :func:`compute_cast`.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from itemjax.graph.propagation import DeviceGraph, gat_layer, inverse_sqrt_degree, propagate, propagate_attention
from itemjax.reductions import l2_normalize

#: Standard deviation of the normal initialiser of the ID embeddings (LightGCN uses 0.1).
EMBEDDING_INIT_STD = 0.1


class IdEmbeddings(nn.Module):
    """The two ID embedding tables, ``user_embedding`` and ``item_embedding``, and the nodes' ego
    embeddings: with side features (``n_user_features`` / ``n_item_features`` > 0, read from the
    graph's padded feature arrays, :mod:`itemjax.data.features`) a node's ego embedding is

        x_v = e_v + sum_f w_vf t_f        (w_v: the node's feature weights, summing to 1 or 0)

    with ``t`` the ``user_feature_embedding`` / ``item_feature_embedding`` table ``[n_features, dim]``
    (same initialiser). Without features it is the ID row, and nothing else changes."""

    n_users: int
    n_items: int
    dim: int
    n_user_features: int = 0
    n_item_features: int = 0

    @nn.compact
    def __call__(self, graph: DeviceGraph | None = None):
        init = nn.initializers.normal(stddev=EMBEDDING_INIT_STD)
        users = self.param("user_embedding", init, (self.n_users, self.dim))
        items = self.param("item_embedding", init, (self.n_items, self.dim))
        if self.n_user_features:
            table = self.param("user_feature_embedding", init, (self.n_user_features, self.dim))
            users = users + _feature_mean(table, graph.user_feature_ids, graph.user_feature_weights)
        if self.n_item_features:
            table = self.param("item_feature_embedding", init, (self.n_item_features, self.dim))
            items = items + _feature_mean(table, graph.item_feature_ids, graph.item_feature_weights)
        return users, items


def ego_tables(model: nn.Module, graph) -> tuple[jax.Array, jax.Array]:
    """``(users [n_users, dim], items [n_items, dim])``: the ego embeddings of ``model`` (its
    :class:`IdEmbeddings` submodule ``ids``), from inside the model's compact ``__call__``."""
    return IdEmbeddings(model.n_users, model.n_items, model.dim, model.n_user_features, model.n_item_features,
                        name="ids")(graph)


def _feature_mean(table: jax.Array, ids: jax.Array, weights: jax.Array) -> jax.Array:
    """``[n, dim]``: ``sum_j weights[:, j] * table[ids[:, j]]`` (padding has weight 0)."""
    return jnp.einsum("nf,nfd->nd", weights.astype(table.dtype), table[ids])


#: How the layers of a model combine into its final embedding (:func:`pool_layers`).
LAYER_POOLS = ("mean", "concat")


def pool_layers(layers: jax.Array, pool: str) -> jax.Array:
    """``[n, K + 1, d]`` per-layer embeddings -> ``[n, d]`` (``"mean"``) or ``[n, (K + 1) d]`` (``"concat"``)."""
    if pool == "mean":
        return jnp.mean(layers, axis=-2)
    if pool == "concat":
        return layers.reshape(layers.shape[:-2] + (-1,))
    raise ValueError(f"unknown layer pool {pool!r}; use one of {LAYER_POOLS}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def split_rows(x: jax.Array, n_first: int) -> tuple[jax.Array, jax.Array]:
    """``(x[:n_first], x[n_first:])`` whose gradient is one concatenation of the two cotangents.

    (Autodiff's is each cotangent zero-padded to ``x``'s full shape and the two added: two extra
    full-size arrays written and read per call, which on Gowalla cost a GAT step ~15 ms.)
    """
    return x[:n_first], x[n_first:]


def _split_rows_fwd(x, n_first):
    return split_rows(x, n_first), None


def _split_rows_bwd(n_first, _, cotangents):
    return (jnp.concatenate(cotangents, axis=0),)


split_rows.defvjp(_split_rows_fwd, _split_rows_bwd)


def _outputs(n_users: int, layers: list, pool: str, return_layers: bool):
    """``(users, items)`` of the stacked ``layers`` (each ``[n_nodes, d]``), pooled unless ``return_layers``:
    each layer split into its user and item rows first (:func:`split_rows`), then stacked per side."""
    parts = [split_rows(layer, n_users) for layer in layers]

    def combine(side):
        stack = jnp.stack(side, axis=1)  # [n, K + 1, d]
        return stack if return_layers else pool_layers(stack, pool)

    return combine([p[0] for p in parts]), combine([p[1] for p in parts])


def compute_cast(dtype, *arrays):
    """``arrays`` cast to the compute ``dtype`` (float32 parameters -> e.g. bfloat16 activations)."""
    cast = tuple(jnp.asarray(a, dtype) for a in arrays)
    return cast[0] if len(cast) == 1 else cast


class MF(nn.Module):
    """Matrix factorisation: ``s(u, i) = <p_u, q_i>``; the graph is ignored."""

    n_users: int
    n_items: int
    dim: int = 64
    n_user_features: int = 0  # side features (itemjax.data.features): 0 = none
    n_item_features: int = 0
    dtype: Any = jnp.float32  # compute dtype of the returned embeddings
    LAYER_POOL: ClassVar[str] = "mean"  # one layer, the ego one

    @nn.compact
    def __call__(self, graph: DeviceGraph | None = None, *, train: bool = False, layers: bool = False):
        users, items = compute_cast(self.dtype, *ego_tables(self, graph))
        return (users[:, None], items[:, None]) if layers else (users, items)


class LightGCN(nn.Module):
    """LightGCN (He et al., SIGIR 2020): mean of K parameter-free propagations.

    With ``x^0 = [P; Q]`` ([n_nodes, dim], users then items) and the symmetric normalised
    adjacency ``A_hat = D^-1/2 A D^-1/2``::

        x^{k+1} = A_hat x^k,        e = (1 / (K + 1)) * sum_{k=0..K} x^k
    """

    n_users: int
    n_items: int
    dim: int = 64
    n_user_features: int = 0  # side features (itemjax.data.features): 0 = none
    n_item_features: int = 0
    n_layers: int = 3
    dtype: Any = jnp.float32  # compute dtype of propagation and of the returned embeddings
    LAYER_POOL: ClassVar[str] = "mean"

    @nn.compact
    def __call__(self, graph: DeviceGraph, *, train: bool = False, layers: bool = False):
        users, items = ego_tables(self, graph)
        x = compute_cast(self.dtype, jnp.concatenate([users, items], axis=0))
        if layers:
            outputs = [x]
            for _ in range(self.n_layers):
                outputs.append(propagate(graph, outputs[-1]))
            return _outputs(self.n_users, outputs, self.LAYER_POOL, True)
        total = x
        for _ in range(self.n_layers):
            x = propagate(graph, x)
            total = total + x
        return split_rows(total / (self.n_layers + 1), self.n_users)




def node_degrees(graph: DeviceGraph) -> jax.Array:
    """Degrees ``deg = A 1`` as float32 ``[n_nodes]``, read from the CSR row pointers."""
    return jnp.diff(graph.indptr).astype(jnp.float32)


def neighbour_mean(graph: DeviceGraph, x: jax.Array) -> jax.Array:
    """``mean_{c in N(r)} x_c = (D^-1 A x)[r]`` ([n_nodes, d]); 0 for a node without edges.

    Written as ``D^-1/2 A_hat D^1/2 x`` with ``A_hat = D^-1/2 A D^-1/2``, so it is one
    :func:`~itemjax.graph.propagation.propagate` call and uses the graph's backend.
    """
    degree = node_degrees(graph)[:, None]
    inv_sqrt = inverse_sqrt_degree(degree)
    return inv_sqrt * propagate(graph, x * jnp.sqrt(degree))


class NGCF(nn.Module):
    """NGCF (Wang et al., SIGIR 2019): feature transforms plus bi-interaction messages.

    With ``e^0 = [P; Q]`` ([n_nodes, dim]) and ``A_hat = D^-1/2 A D^-1/2``, layer ``k``::

        s^k     = A_hat e^k                                   (one propagate call)
        e^{k+1} = Dropout(LeakyReLU((e^k + s^k) W1_k + b_k + (s^k * e^k) W2_k))

    (``(A_hat e) * e = sum_n norm * (e_n * e)``, the bi-interaction term). LeakyReLU has
    slope 0.2 and ``W1_k, W2_k`` are ``[dim, dim]`` (Glorot uniform) as in the official
    code; one bias per layer (the official code's two biases add up before a single
    LeakyReLU here, so a second one would be redundant). Message dropout (``dropout``
    rate, rng stream ``"dropout"``) acts only with ``train=True``, on the layer output
    that the next layer reads. The output concatenates the ego layer and the row-L2
    normalised layer outputs, as in the official code::

        e = [e^0 || norm(e^1) || ... || norm(e^K)]       [n_nodes, dim * (K + 1)]

    Parameters: the ego tables plus ``K * (2 dim^2 + dim)``. Node dropout is not implemented.
    """

    n_users: int
    n_items: int
    dim: int = 64
    n_user_features: int = 0  # side features (itemjax.data.features): 0 = none
    n_item_features: int = 0
    n_layers: int = 3
    dropout: float = 0.1
    negative_slope: float = 0.2
    LAYER_POOL: ClassVar[str] = "concat"

    @nn.compact
    def __call__(self, graph: DeviceGraph, *, train: bool = False, layers: bool = False):
        users, items = ego_tables(self, graph)
        x = jnp.concatenate([users, items], axis=0)
        outputs = [x]
        init = nn.initializers.glorot_uniform()
        for k in range(self.n_layers):
            side = propagate(graph, x)
            summed = nn.Dense(self.dim, kernel_init=init, name=f"W1_{k}")(x + side)
            bi = nn.Dense(self.dim, use_bias=False, kernel_init=init, name=f"W2_{k}")(side * x)
            x = nn.leaky_relu(summed + bi, negative_slope=self.negative_slope)
            x = nn.Dropout(rate=self.dropout, deterministic=not train)(x)
            outputs.append(l2_normalize(x))
        return _outputs(self.n_users, outputs, self.LAYER_POOL, layers)


class GAT(nn.Module):
    """Bipartite graph attention (GAT-style, Velickovic et al. 2018), layers concatenated.

    Layer ``k``, head ``h`` (``z = h^k W_k``, ``W_k`` [dim, heads * dim] Glorot uniform,
    viewed per head as ``z_h`` [n_nodes, dim]; attention vectors ``a_src, a_dst`` [heads, dim])::

        l_ij      = LeakyReLU_0.2(a_dst_h . z_h[i] + a_src_h . z_h[j])     for each edge j -> i
        alpha_ij  = softmax over the neighbours j of i of l_ij
        h^{k+1}_i = (1 / heads) * sum_h sum_{j in N(i)} alpha_ij z_h[j]   (propagate_attention)

    i.e. ``a^T [W h_i || W h_j]`` with ``a = [a_dst; a_src]``; heads are averaged; no
    self-loops and no non-linearity between layers beyond the attention itself. The
    output concatenates the ego layer and the row-L2 normalised layers (as :class:`NGCF`)::

        e = [h^0 || norm(h^1) || ... || norm(h^K)]       [n_nodes, dim * (K + 1)]

    (On ml-100k a LightGCN-style layer mean of the un-normalised layers trained far worse
    with the ITEM loss, NDCG@20 ~0.20 against ~0.38 after 20 epochs.) Each head is one
    :func:`~itemjax.graph.propagation.propagate_attention` call on ``graph.backend``: over the
    padded edges (``segment``) or fused CSR matmuls with a custom VJP (``csr``, XLA's kernel:
    four matmuls per layer and head against LightGCN's two, plus per-edge scalar work; about 3x
    LightGCN's propagation time per layer on CPU) or the native kernel's fused passes (``native``,
    the CPU default: one pass per row forward, two backward). With one head (the default) a layer
    is one :func:`~itemjax.graph.propagation.gat_layer` call, which on ``native`` also fuses the
    scores and the normalisation into those passes. A node without edges gets ``h^{k+1} = 0``.

    Parameters: the ego tables plus ``K * (heads * dim^2 + 2 * heads * dim)``.
    """

    n_users: int
    n_items: int
    dim: int = 64
    n_user_features: int = 0  # side features (itemjax.data.features): 0 = none
    n_item_features: int = 0
    n_layers: int = 3
    heads: int = 1
    negative_slope: float = 0.2
    LAYER_POOL: ClassVar[str] = "concat"

    @nn.compact
    def __call__(self, graph: DeviceGraph, *, train: bool = False, layers: bool = False):
        users, items = ego_tables(self, graph)
        h = jnp.concatenate([users, items], axis=0)
        outputs = [h]
        kernel_init = nn.initializers.glorot_uniform()
        attention_init = nn.initializers.glorot_uniform(in_axis=-1, out_axis=-2)
        for k in range(self.n_layers):
            z = nn.Dense(self.heads * self.dim, use_bias=False, kernel_init=kernel_init, name=f"W_{k}")(h)
            z = z.reshape(z.shape[0], self.heads, self.dim)  # [n_nodes, H, dim]
            a_src = self.param(f"attn_src_{k}", attention_init, (self.heads, self.dim))
            a_dst = self.param(f"attn_dst_{k}", attention_init, (self.heads, self.dim))
            if self.heads == 1:  # scores, attention and normalisation in one call (fused on the native backend)
                h, out = gat_layer(graph, z[:, 0], a_src[0], a_dst[0], self.negative_slope)
                outputs.append(out)
                continue
            src_score = jnp.sum(z * a_src, axis=-1)  # [n_nodes, H]
            dst_score = jnp.sum(z * a_dst, axis=-1)
            h = sum(
                propagate_attention(graph, z[:, head], src_score[:, head], dst_score[:, head], self.negative_slope)
                for head in range(self.heads)
            )
            h = h / self.heads
            outputs.append(l2_normalize(h))
        return _outputs(self.n_users, outputs, self.LAYER_POOL, layers)


class SAGE(nn.Module):
    """GraphSAGE / PinSAGE-style model with per-node-type weights and mean aggregation.

    Layer ``k`` for a node of type ``t`` (user or item; separate weights per type)::

        m^k     = mean_{n in N(v)} h^k_n          (D^-1 A h^k, 0 without neighbours)
        h^{k+1} = norm(ReLU(h^k Ws_{t,k} + b_{t,k} + m^k Wn_{t,k}))

    ``h Ws + m Wn`` is ``[h || m] W`` of GraphSAGE / PinSAGE's concatenating COMBINE
    (Glorot uniform kernels); ``norm`` divides each row by its L2 norm (zero rows stay 0).
    The neighbour mean is :func:`neighbour_mean` (one propagate call, either backend). The
    output concatenates the ego layer and the (unit-row) layer outputs, as :class:`NGCF`::

        e = [h^0 || h^1 || ... || h^K]       [n_nodes, dim * (K + 1)]

    (On ml-100k the last layer alone, whose scores are cosines in [-1, 1], trained much
    worse: NDCG@20 0.15 (BPR) / 0.28 (ITEM) against 0.26 / 0.33 after 20 epochs.)

    Parameters: the ego tables plus ``K * 2 * (2 dim^2 + dim)``.
    """

    n_users: int
    n_items: int
    dim: int = 64
    n_user_features: int = 0  # side features (itemjax.data.features): 0 = none
    n_item_features: int = 0
    n_layers: int = 3
    LAYER_POOL: ClassVar[str] = "concat"

    @nn.compact
    def __call__(self, graph: DeviceGraph, *, train: bool = False, layers: bool = False):
        users, items = ego_tables(self, graph)
        h = jnp.concatenate([users, items], axis=0)
        outputs = [h]
        init = nn.initializers.glorot_uniform()
        for k in range(self.n_layers):
            mean = neighbour_mean(graph, h)
            parts = []
            for kind, rows in (("user", slice(0, self.n_users)), ("item", slice(self.n_users, None))):
                own = nn.Dense(self.dim, kernel_init=init, name=f"{kind}_self_{k}")(h[rows])
                neigh = nn.Dense(self.dim, use_bias=False, kernel_init=init, name=f"{kind}_neigh_{k}")(mean[rows])
                parts.append(own + neigh)
            h = l2_normalize(nn.relu(jnp.concatenate(parts, axis=0)))
            outputs.append(h)
        return _outputs(self.n_users, outputs, self.LAYER_POOL, layers)


MODELS = {"mf": MF, "lightgcn": LightGCN, "ngcf": NGCF, "gat": GAT, "sage": SAGE}


def id_embeddings(params) -> tuple:
    """The ego tables ``(user_embedding [n_users, d], item_embedding [n_items, d])`` of any model."""
    ids = params["ids"]
    return ids["user_embedding"], ids["item_embedding"]


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def embed(apply_fn, params, graph):
    """A model's final ``(user_emb, item_emb)`` in inference mode (``train=False``: no dropout); jitted once per model."""
    return apply_fn({"params": params}, graph, train=False)
