"""Graph propagation ``y = A_hat @ x`` on device, with two interchangeable backends.

``A_hat = D^-1/2 A D^-1/2`` is the symmetric normalised adjacency of the user-item
graph built by :func:`itemjax.graph.bipartite.build_graph`; ``x`` is ``[n_nodes, d]`` (users
first, then items) and so is ``y``::

    y[r] = sum_{c in N(r)} x[c] / sqrt(deg_r * deg_c)

Backends (same values and gradients, checked by tests/test_propagation.py):

* ``"segment"``: gather ``x[senders] * weights[:, None]`` over the padded edge arrays
  and ``jax.ops.segment_sum`` into ``receivers`` (``num_segments = n_nodes``, so the
  dummy receiver ``n_nodes`` of the padding edges is dropped). Plain autodiff. The
  portable path for GPU / TPU.
* ``"csr"``: ``A_hat`` as a :class:`jax.experimental.sparse.BCSR` matrix, whose matmul
  lowers to a native CSR kernel on CPU, wrapped in :func:`jax.custom_vjp`. Since
  ``A_hat`` is symmetric the backward pass is the same matmul,
  ``x_bar = A_hat^T y_bar = A_hat y_bar``; JAX's own BCSR gradient transposes through
  BCOO and was 1.4-3x slower on Gowalla. No gradient flows to the matrix values.
  The fastest of the CPU candidates measured by benchmarks/propagation.py (BCOO,
  the older ``sparse.CSR`` class, scipy through ``pure_callback``, segment_sum).

:func:`propagate_weighted` propagates with arbitrary per-edge weights (attention,
edge dropout) over the padded edge arrays, differentiable in ``x`` and the weights.
:func:`csr_matmul` is the ``"csr"`` kernel for any CSR matrix (the PPR power iteration of
:mod:`itemjax.graph.ppr` multiplies by the two off-diagonal halves of the walk matrix with it).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
from jax.experimental import sparse

from itemjax.errors import ConfigError
from itemjax.graph.bipartite import Graph

BACKENDS = ("segment", "csr")


def default_backend() -> str:
    """``"csr"`` on CPU (native sparse kernel), ``"segment"`` on accelerators."""
    return "csr" if jax.default_backend() == "cpu" else "segment"


@flax.struct.dataclass
class DeviceGraph:
    """Device copy of a :class:`~itemjax.graph.bipartite.Graph`: a pytree that jit can take as input.

    Array fields (traced): ``senders``, ``receivers`` int32 ``[E_pad]``, ``weights``
    float32 ``[E_pad]`` (padding edges ``n_nodes -> n_nodes`` with weight 0);
    ``indptr`` int32 ``[n_nodes + 1]``, ``indices`` int32 ``[n_edges]``, ``data``
    float32 ``[n_edges]`` (``A_hat`` in CSR), ``edge_pairs`` int32 ``[n_edges]`` (the
    interaction of each entry, :attr:`itemjax.graph.bipartite.Graph.edge_pairs`); the nodes' side features
    ``user_feature_ids`` / ``user_feature_weights`` ``[n_users, F_u]`` and ``item_feature_ids`` /
    ``item_feature_weights`` ``[n_items, F_i]`` (:class:`itemjax.data.features.NodeFeatures`; ``F = 0``
    without features). Static fields (part of the jit cache key):
    ``n_users``, ``n_items`` and ``backend`` (one of :data:`BACKENDS`).
    """

    senders: jax.Array
    receivers: jax.Array
    weights: jax.Array
    indptr: jax.Array
    indices: jax.Array
    data: jax.Array
    edge_pairs: jax.Array
    user_feature_ids: jax.Array
    user_feature_weights: jax.Array
    item_feature_ids: jax.Array
    item_feature_weights: jax.Array
    n_users: int = flax.struct.field(pytree_node=False)
    n_items: int = flax.struct.field(pytree_node=False)
    backend: str = flax.struct.field(pytree_node=False)

    @property
    def n_nodes(self) -> int:
        """``n_users + n_items`` (the dummy padding node ``n_nodes`` is not counted)."""
        return self.n_users + self.n_items


def _check_backend(backend: str) -> str:
    if backend == "auto":
        return default_backend()
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown propagation backend {backend!r}; use one of 'auto', "
            + ", ".join(repr(name) for name in BACKENDS)
            + "."
        )
    return backend


def to_device(graph: Graph, backend: str = "auto", user_features=None, item_features=None) -> DeviceGraph:
    """Copies ``graph`` to the default device; ``backend="auto"`` picks :func:`default_backend`.

    Both the edge arrays and the CSR arrays are copied whatever the backend, so
    :func:`propagate_weighted` works with either. ``user_features`` / ``item_features``: optional
    :class:`itemjax.data.features.NodeFeatures` of the graph's users / items (padded to the graph's
    node counts when shorter). Raises ConfigError for an unknown backend name.
    """
    backend = _check_backend(backend)

    def features(f, n):
        if f is None:
            return jnp.zeros((n, 0), jnp.int32), jnp.zeros((n, 0), jnp.float32)
        f = f.pad_rows(n) if f.ids.shape[0] < n else f
        return jnp.asarray(f.ids, jnp.int32), jnp.asarray(f.weights, jnp.float32)

    user_ids, user_weights = features(user_features, int(graph.n_users))
    item_ids, item_weights = features(item_features, int(graph.n_items))
    return DeviceGraph(
        senders=jnp.asarray(graph.senders),
        receivers=jnp.asarray(graph.receivers),
        weights=jnp.asarray(graph.weights),
        indptr=jnp.asarray(graph.indptr),
        indices=jnp.asarray(graph.indices),
        data=jnp.asarray(graph.data),
        edge_pairs=jnp.asarray(graph.edge_pairs),
        user_feature_ids=user_ids,
        user_feature_weights=user_weights,
        item_feature_ids=item_ids,
        item_feature_weights=item_weights,
        n_users=int(graph.n_users),
        n_items=int(graph.n_items),
        backend=backend,
    )


def _check_features(graph: DeviceGraph, x: jax.Array) -> None:
    if x.ndim != 2 or x.shape[0] != graph.n_nodes:
        raise ValueError(
            f"propagation needs node features [n_nodes={graph.n_nodes}, d], got shape {x.shape}."
        )


def propagate_weighted(graph: DeviceGraph, x: jax.Array, edge_weights: jax.Array) -> jax.Array:
    """``y[r] = sum_{e: receivers_e = r} edge_weights_e * x[senders_e]`` over the padded edges.

    Args:
      graph: the device graph (its ``backend`` is ignored: this always uses the edges).
      x: node features ``[n_nodes, d]``.
      edge_weights: ``[E_pad]`` per-edge weights aligned with ``graph.senders``; the
        value on padding edges does not matter (they point at the dummy node, whose
        gathered features are 0 and whose output row is dropped).

    Returns:
      ``[n_nodes, d]``, differentiable in ``x`` and ``edge_weights``. With
      ``edge_weights = graph.weights`` this equals ``A_hat @ x``.
    """
    _check_features(graph, x)
    # The dummy sender n_nodes is out of range: mode="fill" gathers zeros for it.
    messages = x.at[graph.senders].get(mode="fill", fill_value=0)
    messages = messages * edge_weights[:, None].astype(x.dtype)
    # The dummy receiver n_nodes is out of range [0, n_nodes): segment_sum drops it.
    return jax.ops.segment_sum(messages, graph.receivers, num_segments=graph.n_nodes)


def csr_matmul(shape: tuple[int, int], indptr, indices, data, x):
    """``M @ x`` for a CSR matrix ``M`` of ``shape = (m, n)`` given by its arrays: ``[n, d] -> [m, d]``.

    ``indptr`` int32 ``[m + 1]``, ``indices`` int32 ``[nnz]``, ``data`` ``[nnz]`` (cast to
    ``x.dtype``). As a :class:`jax.experimental.sparse.BCSR` product it lowers to the native CSR
    kernel on CPU (same dtype for values and ``x``, int32 for both index arrays) and to cuSPARSE on
    GPU. No custom gradient: differentiate through :func:`propagate` instead.
    """
    matrix = sparse.BCSR((data.astype(x.dtype), indices, indptr), shape=tuple(shape))
    return matrix @ x


def _bcsr_matmul(n_nodes: int, indptr, indices, data, x):
    return csr_matmul((n_nodes, n_nodes), indptr, indices, data, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _symmetric_csr_matmul(n_nodes: int, indptr, indices, data, x):
    """``A @ x`` for a symmetric CSR matrix ``A``; the VJP is ``A @ y_bar`` (no grad to ``A``)."""
    return _bcsr_matmul(n_nodes, indptr, indices, data, x)


def _symmetric_csr_matmul_fwd(n_nodes, indptr, indices, data, x):
    return _bcsr_matmul(n_nodes, indptr, indices, data, x), (indptr, indices, data)


def _symmetric_csr_matmul_bwd(n_nodes, residuals, y_bar):
    indptr, indices, data = residuals
    # A is symmetric, so A^T y_bar = A y_bar: the backward pass is the forward kernel.
    return None, None, None, _bcsr_matmul(n_nodes, indptr, indices, data, y_bar)


_symmetric_csr_matmul.defvjp(_symmetric_csr_matmul_fwd, _symmetric_csr_matmul_bwd)


def propagate(graph: DeviceGraph, x: jax.Array) -> jax.Array:
    """One propagation ``A_hat @ x``: ``[n_nodes, d] -> [n_nodes, d]`` via ``graph.backend``.

    Differentiable in ``x`` (the gradient is ``A_hat @ y_bar`` on both backends).
    Rows of isolated nodes are 0.
    """
    _check_features(graph, x)
    if graph.backend == "segment":
        return propagate_weighted(graph, x, graph.weights)
    if graph.backend == "csr":
        return _symmetric_csr_matmul(graph.n_nodes, graph.indptr, graph.indices, graph.data, x)
    raise ConfigError(f"unknown propagation backend {graph.backend!r}; use one of {BACKENDS}.")


def inverse_sqrt_degree(degree: jax.Array) -> jax.Array:
    """``deg^-1/2`` where ``deg > 0``, else 0 (an isolated node): the factors of ``D^-1/2 A D^-1/2``."""
    return jnp.where(degree > 0, jax.lax.rsqrt(jnp.maximum(degree, 1.0)), 0.0)


def edge_dropout(graph: DeviceGraph, key: jax.Array, drop: float) -> DeviceGraph:
    """A view of ``graph`` with each training interaction dropped with probability ``drop``.

    Both directed edges of an interaction are kept or dropped together (``graph.edge_pairs``),
    and the kept graph is normalised again, ``A_hat' = D'^-1/2 A' D'^-1/2`` with ``D'`` the
    degrees of the kept edges (SGL-ED, Wu et al. SIGIR 2021). Static shapes: dropped edges keep
    their slots with value 0 in both the CSR ``data`` and the padded ``weights``, so
    :func:`propagate` (either backend) takes the view without recompiling. A node whose edges
    are all dropped gets an empty row (propagation gives it 0).

    Args:
      graph: the device graph.
      key: PRNG key of the view (one Bernoulli draw per interaction).
      drop: probability of dropping an interaction, in ``[0, 1)``.
    Returns:
      a :class:`DeviceGraph` with the same structure and new ``data`` / ``weights``.
    """
    n_edges = graph.indices.shape[0]
    keep = jax.random.bernoulli(key, 1.0 - drop, (n_edges // 2,))[graph.edge_pairs].astype(jnp.float32)
    rows, cols = graph.receivers[:n_edges], graph.senders[:n_edges]  # CSR order
    inv_sqrt = inverse_sqrt_degree(jax.ops.segment_sum(keep, rows, num_segments=graph.n_nodes))
    data = keep * inv_sqrt[rows] * inv_sqrt[cols]
    weights = jnp.concatenate([data, jnp.zeros(graph.weights.shape[0] - n_edges, data.dtype)])
    return graph.replace(data=data, weights=weights)
