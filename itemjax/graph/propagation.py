"""Graph propagation ``y = A_hat @ x`` on device, with three interchangeable backends.

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
* ``"native"``: the same CSR arrays and the same symmetric :func:`jax.custom_vjp`, with the
  product computed by itemjax's own C++ kernel (:mod:`itemjax.native`, called through
  ``jax.ffi``; rows split over threads, float32 / bfloat16 / float64). CPU only, built at
  install; when it is not built, :func:`to_device` logs one line and uses ``"csr"`` instead.

:func:`propagate_weighted` propagates with arbitrary per-edge weights (attention,
edge dropout) over the padded edge arrays, differentiable in ``x`` and the weights.

:func:`propagate_attention` is GAT's attention-weighted propagation (edge softmax of additive
attention logits per receiving node, then the weighted neighbour sum), on the same two backends:
``"segment"`` composes :func:`edge_softmax` and :func:`propagate_weighted` over the padded edges
with plain autodiff (the reference); ``"csr"`` is a fused :func:`jax.custom_vjp` whose forward
and backward are CSR matmuls with per-edge scalar data, so no ``[n_edges, d]`` array is built.
:func:`gat_layer` is one head of a whole GAT layer (scores, attention, row normalisation), fused
into the native kernel's passes on ``"native"``.

:func:`csr_matmul` is the ``"csr"`` kernel for any CSR matrix (the PPR power iteration of
:mod:`itemjax.graph.ppr` multiplies by the two off-diagonal halves of the walk matrix with it);
``native=True`` runs it on the native kernel, with a general gradient (``M^T y_bar`` by the
kernel's transpose product, and the matrix values' gradient when they are differentiated).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
from jax.experimental import sparse

from itemjax import native as native_kernel
from itemjax.errors import ConfigError
from itemjax.graph.bipartite import Graph
from itemjax.reductions import NORMALIZE_EPS, l2_normalize

BACKENDS = ("segment", "csr", "native")


def default_backend() -> str:
    """``"native"`` on CPU where itemjax's C++ kernel is built (faster than XLA's CSR product on every
    LightGCN step measured, benchmarks/RESULTS.md), else ``"csr"`` there (XLA's sparse kernel; one line on
    stderr, once, says why and how to build the kernel); ``"segment"`` on accelerators."""
    if jax.default_backend() != "cpu":
        return "segment"
    if native_kernel.available():
        return "native"
    native_kernel.notice_fallback("the default CPU backend", "the csr backend (XLA's CSR product, slower)",
                                  values="same values, up to float rounding")
    return "csr"


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
    ``n_users``, ``n_items`` and ``backend`` (one of :data:`BACKENDS`; ``"native"`` reads the CSR
    arrays, as ``"csr"`` does).
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
    if backend == "native" and not _native_usable():
        native_kernel.notice_fallback("--backend native", "the csr backend")
        return "csr"
    return backend


def _native_usable() -> bool:
    """Whether products run on the native kernel: it is built and loaded, and JAX computes on the CPU
    (the kernel is registered for the CPU platform only)."""
    return jax.default_backend() == "cpu" and native_kernel.available()


def native_available() -> bool:
    """Whether ``backend="native"`` runs the native kernel here (else it falls back to ``"csr"``);
    :func:`itemjax.native.unavailable_reason` says why not."""
    return _native_usable()


def to_device(graph: Graph, backend: str = "auto", user_features=None, item_features=None) -> DeviceGraph:
    """Copies ``graph`` to the default device; ``backend="auto"`` picks :func:`default_backend`;
    ``backend="native"`` falls back to ``"csr"`` (one line on stderr, once) where
    :func:`native_available` is False.

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


def csr_matmul(shape: tuple[int, int], indptr, indices, data, x, *, native: bool = False):
    """``M @ x`` for a CSR matrix ``M`` of ``shape = (m, n)`` given by its arrays: ``[n, d] -> [m, d]``.

    ``indptr`` int32 ``[m + 1]``, ``indices`` int32 ``[nnz]``, ``data`` ``[nnz]`` (cast to
    ``x.dtype``). As a :class:`jax.experimental.sparse.BCSR` product it lowers to XLA's CSR
    kernel on CPU (same dtype for values and ``x``, int32 for both index arrays) and to cuSPARSE on
    GPU; JAX's own gradient (no custom rule: for ``A_hat`` differentiate through :func:`propagate`).

    ``native=True``: the product on the native kernel (:mod:`itemjax.native`; ``data`` in float32,
    or float64 for float64 ``x``), with a :func:`jax.custom_vjp`: ``x_bar = M^T y_bar`` by the
    kernel's transpose product (any ``M``, not only symmetric ones) and, only when ``data`` is
    differentiated, ``data_bar_j = y_bar[row_j] . x[indices_j]``. Where the kernel is unavailable
    (not built, or not on CPU) this logs one line once and computes the BCSR product.
    """
    shape = (int(shape[0]), int(shape[1]))
    if native and _native_usable():
        if x.ndim == 1:
            return _native_csr_matmul(shape, indptr, indices, data, x[:, None])[:, 0]
        return _native_csr_matmul(shape, indptr, indices, data, x)
    if native:
        native_kernel.notice_fallback("csr_matmul(native=True)", "the BCSR product")
    matrix = sparse.BCSR((data.astype(x.dtype), indices, indptr), shape=shape)
    return matrix @ x


def _native_product(indptr, indices, data, x, *, transpose: bool = False, n_cols=None):
    """The native kernel's product, ``x`` of any float dtype (those it lacks, e.g. float16, go
    through float32); no gradient rule."""
    if native_kernel.supported_dtype(x.dtype):
        return native_kernel.spmm(indptr, indices, data, x, transpose=transpose, n_cols=n_cols)
    y = native_kernel.spmm(indptr, indices, data, x.astype(jnp.float32), transpose=transpose, n_cols=n_cols)
    return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _native_csr_matmul(shape, indptr, indices, data, x):
    """``M @ x`` on the native kernel; gradients to ``x`` (``M^T y_bar``) and ``data``."""
    return _native_product(indptr, indices, data, x)


def _native_csr_matmul_fwd(shape, indptr, indices, data, x):
    # symbolic_zeros: each argument comes as a CustomVJPPrimal (value, perturbed); which cotangents
    # to compute is kept in the residuals' structure (x saved only for data_bar, () marks x_bar)
    indptr, indices = indptr.value, indices.value
    y = _native_product(indptr, indices, data.value, x.value)
    return y, (indptr, indices, data.value, x.value if data.perturbed else None, () if x.perturbed else None)


def _native_csr_matmul_bwd(shape, residuals, y_bar):
    indptr, indices, data, x, x_perturbed = residuals
    if isinstance(y_bar, jax.custom_derivatives.SymbolicZero):
        return None, None, None, None
    x_bar = None
    if x_perturbed is not None:
        x_bar = _native_product(indptr, indices, data, y_bar, transpose=True, n_cols=shape[1])
    data_bar = None
    if x is not None:  # data differentiated: data_bar_j = y_bar[row_j] . x[indices_j]
        rows = jnp.searchsorted(indptr, jnp.arange(indices.shape[0], dtype=indptr.dtype), side="right") - 1
        products = y_bar.astype(jnp.float32)[rows] * x.astype(jnp.float32)[indices]
        data_bar = jnp.sum(products, axis=1).astype(data.dtype)
    return None, None, data_bar, x_bar


_native_csr_matmul.defvjp(_native_csr_matmul_fwd, _native_csr_matmul_bwd, symbolic_zeros=True)


def _square_product(native: bool, n_nodes: int, indptr, indices, data, x):
    """``M @ x`` for a square ``[n_nodes, n_nodes]`` CSR matrix, no custom gradient: XLA's BCSR
    product, or the native kernel's (``native``; BCSR where it is unavailable)."""
    if native and _native_usable():
        return _native_product(indptr, indices, data, x)
    matrix = sparse.BCSR((data.astype(x.dtype), indices, indptr), shape=(n_nodes, n_nodes))
    return matrix @ x


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _symmetric_csr_matmul(native: bool, n_nodes: int, indptr, indices, data, x):
    """``A @ x`` for a symmetric CSR matrix ``A``; the VJP is ``A @ y_bar`` (no grad to ``A``).
    ``native``: both products on the native kernel (:func:`_square_product`)."""
    return _square_product(native, n_nodes, indptr, indices, data, x)


def _symmetric_csr_matmul_fwd(native, n_nodes, indptr, indices, data, x):
    return _square_product(native, n_nodes, indptr, indices, data, x), (indptr, indices, data)


def _symmetric_csr_matmul_bwd(native, n_nodes, residuals, y_bar):
    indptr, indices, data = residuals
    # A is symmetric, so A^T y_bar = A y_bar: the backward pass is the forward kernel.
    return None, None, None, _square_product(native, n_nodes, indptr, indices, data, y_bar)


_symmetric_csr_matmul.defvjp(_symmetric_csr_matmul_fwd, _symmetric_csr_matmul_bwd)


def propagate(graph: DeviceGraph, x: jax.Array) -> jax.Array:
    """One propagation ``A_hat @ x``: ``[n_nodes, d] -> [n_nodes, d]`` via ``graph.backend``.

    Differentiable in ``x`` (the gradient is ``A_hat @ y_bar`` on every backend).
    Rows of isolated nodes are 0.
    """
    _check_features(graph, x)
    if graph.backend == "segment":
        return propagate_weighted(graph, x, graph.weights)
    if graph.backend in ("csr", "native"):
        return _symmetric_csr_matmul(graph.backend == "native", graph.n_nodes, graph.indptr, graph.indices,
                                     graph.data, x)
    raise ConfigError(f"unknown propagation backend {graph.backend!r}; use one of {BACKENDS}.")


# ----------------------------------------------------------------------------- attention


def leaky_relu(x: jax.Array, negative_slope: float) -> jax.Array:
    """``x`` where ``x >= 0``, else ``negative_slope * x`` (as :func:`jax.nn.leaky_relu`, slope 1 at 0)."""
    return jnp.where(x >= 0, x, negative_slope * x)


def edge_softmax(graph: DeviceGraph, logits: jax.Array) -> jax.Array:
    """Softmax of per-edge ``logits`` [E_pad, H] over the edges entering each receiver.

    ``alpha_e = exp(l_e - m_r) / sum_{e': receivers_e' = r} exp(l_e' - m_r)`` with
    ``r = receivers_e`` and ``m_r`` the segment max (``jax.ops.segment_max``, not
    differentiated: the softmax does not depend on it). Padding edges (receiver =
    dummy node ``n_nodes``) get ``alpha = 0``; nodes without incoming edges have no
    coefficients at all, and every value stays finite (no ``-inf`` enters an ``exp``).
    Returns ``[E_pad, H]``; ``sum_{e -> r} alpha_e = 1`` for each node ``r`` with edges.
    """
    n_nodes = graph.n_nodes
    valid = (graph.receivers < n_nodes)[:, None]
    masked = jnp.where(valid, logits, -jnp.inf)
    node_max = jax.ops.segment_max(masked, graph.receivers, num_segments=n_nodes)
    node_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(node_max), node_max, 0.0))
    # The dummy receiver is out of range: mode="fill" reads 0 (max) and 1 (denominator) for it.
    shifted = logits - node_max.at[graph.receivers].get(mode="fill", fill_value=0.0)
    exp = jnp.where(valid, jnp.exp(jnp.where(valid, shifted, 0.0)), 0.0)
    denominator = jax.ops.segment_sum(exp, graph.receivers, num_segments=n_nodes)  # >= 1 where edges
    return exp / denominator.at[graph.receivers].get(mode="fill", fill_value=1.0)


def _check_scores(graph: DeviceGraph, x: jax.Array, src_score: jax.Array, dst_score: jax.Array) -> None:
    _check_features(graph, x)
    for name, score in (("src_score", src_score), ("dst_score", dst_score)):
        if score.shape != (graph.n_nodes,):
            raise ValueError(
                f"propagate_attention needs {name} of shape [n_nodes={graph.n_nodes}], got {score.shape}; "
                "pass one head at a time."
            )


def _segment_attention(graph: DeviceGraph, x, src_score, dst_score, negative_slope: float):
    """The reference: per-edge logits over the padded edges, :func:`edge_softmax`, :func:`propagate_weighted`."""
    # Padding edges touch the dummy node n_nodes: "fill" gathers 0, edge_softmax masks them.
    logits = leaky_relu(
        dst_score.at[graph.receivers].get(mode="fill", fill_value=0.0)
        + src_score.at[graph.senders].get(mode="fill", fill_value=0.0),
        negative_slope,
    )
    alpha = edge_softmax(graph, logits[:, None])[:, 0]
    return propagate_weighted(graph, x, alpha)


def _row_sums(n_nodes: int, rows: jax.Array, values: jax.Array) -> jax.Array:
    """``sum_{e in row r} values_e`` ``[n_nodes]`` for edge scalars in CSR order (``rows`` sorted).

    A sorted segment sum of scalars: on CPU ~10x cheaper than one more column in a CSR matmul
    (a width of ``d + 1`` instead of ``d = 64`` made the native kernel ~3x slower).
    """
    return jax.ops.segment_sum(values, rows, num_segments=n_nodes, indices_are_sorted=True)


def _attention_weights(n_nodes, negative_slope, receiver, sender, src_score, dst_score, row_max=None):
    """Unnormalised attention ``w_e = exp(l_e - m_{receiver_e})`` of the edges ``sender_e -> receiver_e``.

    ``l_e = LeakyReLU(pre_e)``, ``pre_e = dst_score[receiver_e] + src_score[sender_e]`` ``[n_edges]``;
    ``m_r`` is the max of ``l`` over the edges into ``r``: passed as ``row_max`` ``[n_nodes]``, or
    computed when None, by a sorted segment max (so ``receiver`` must then be the sorted CSR rows).
    Returns ``(w, dLeakyReLU/dpre, row_max)``; ``w`` is in ``(0, 1]``, 1 at each row's max.
    """
    pre = dst_score[receiver] + src_score[sender]
    logits = leaky_relu(pre, negative_slope)
    if row_max is None:
        row_max = jax.ops.segment_max(logits, receiver, num_segments=n_nodes, indices_are_sorted=True)
        row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # -inf on rows without edges, never read
    slope = jnp.where(pre >= 0, 1.0, jnp.asarray(negative_slope, pre.dtype))  # 1 at 0, as jax.nn.leaky_relu
    return jnp.exp(logits - row_max[receiver]), slope, row_max


def _attention_fwd(native, n_nodes, negative_slope, indptr, indices, rows, x, src_score, dst_score):
    # Edge e = CSR entry (r, c) = (rows_e, indices_e): the weight of c's message to r.
    weights, slope, row_max = _attention_weights(n_nodes, negative_slope, rows, indices, src_score, dst_score)
    denominator = _row_sums(n_nodes, rows, weights)  # >= 1 on rows with edges, 0 without
    denominator = jnp.where(denominator > 0, denominator, 1.0)  # rows without edges: numerator 0 -> y 0
    y = _square_product(native, n_nodes, indptr, indices, weights, x) / denominator[:, None]
    return y, (indptr, indices, rows, x, src_score, dst_score, y, weights * slope, row_max, denominator)


def _attention_bwd(native, n_nodes, negative_slope, residuals, y_bar):
    indptr, indices, rows, x, src_score, dst_score, y, weights_slope, row_max, denominator = residuals
    inv = 1.0 / denominator  # [n_nodes]
    y_bar_scaled = y_bar * inv[:, None]  # alpha_e = w_e / den_r, so A_alpha^T y_bar = A_w^T (y_bar / den)
    q = jnp.sum(y_bar * y, axis=1)  # q_r = y_bar_r . y_r = sum_e alpha_e (y_bar_r . x_c)
    # A_w^T in CSR: the pattern is symmetric, so its entry at CSR position (c, r) = (rows_e, indices_e)
    # is w at (r, c): the same logit with the ends swapped, recomputed from node arrays (no
    # permutation, no scatter), bitwise equal to the forward's (dst[r] + src[c] in that order).
    weights_t, slope_t, _ = _attention_weights(n_nodes, negative_slope, indices, rows, src_score, dst_score,
                                               row_max)
    # x_bar = A_alpha^T y_bar.
    x_bar = _square_product(native, n_nodes, indptr, indices, weights_t, y_bar_scaled)
    # Softmax backward l_bar_e = alpha_e (y_bar_r . x_c - q_r), pre_bar_e = lambda_e l_bar_e, summed
    # over each row: dst_bar_r = (y_bar_r . (A_wl x)_r - q_r (A_wl 1)_r) / den_r, A_wl = A_{w lambda}.
    u = _square_product(native, n_nodes, indptr, indices, weights_slope, x)
    dst_bar = (jnp.sum(y_bar * u, axis=1) - q * _row_sums(n_nodes, rows, weights_slope)) * inv
    # ... and over each column: src_bar_c = x_c . (A_wl^T y_bar')_c - (A_wl^T q')_c with ' = / den.
    weights_slope_t = weights_t * slope_t
    v = _square_product(native, n_nodes, indptr, indices, weights_slope_t, y_bar_scaled)
    src_bar = jnp.sum(x * v, axis=1) - _row_sums(n_nodes, rows, weights_slope_t * (q * inv)[indices])
    return None, None, None, x_bar, src_bar, dst_bar


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _csr_attention(native: bool, n_nodes: int, negative_slope: float, indptr, indices, rows, x, src_score,
                   dst_score):
    """Fused CSR attention propagation (see :func:`propagate_attention`); gradients to ``x`` and the scores.
    ``native``: its products on the native kernel (:func:`_square_product`)."""
    return _attention_fwd(native, n_nodes, negative_slope, indptr, indices, rows, x, src_score, dst_score)[0]


_csr_attention.defvjp(_attention_fwd, _attention_bwd)


def _native_attention_fwd(negative_slope, indptr, indices, x, src_score, dst_score):
    y, row_max, den = native_kernel.gat_forward(indptr, indices, x, src_score, dst_score, negative_slope=negative_slope)
    return y, (indptr, indices, x, src_score, dst_score, y, row_max, den)


def _native_attention_bwd(negative_slope, residuals, y_bar):
    indptr, indices, x, src_score, dst_score, y, row_max, den = residuals
    x_bar, src_bar, dst_bar = native_kernel.gat_backward(indptr, indices, x, src_score, dst_score, y, row_max, den,
                                                         y_bar, negative_slope=negative_slope)
    return None, None, x_bar, src_bar, dst_bar


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _native_attention(negative_slope: float, indptr, indices, x, src_score, dst_score):
    """:func:`propagate_attention` in one native pass per row forward and two backward
    (:func:`itemjax.native.gat_forward`, :func:`itemjax.native.gat_backward`: the softmax, its
    normalisation and the weighted sum fused, no per-edge array in memory)."""
    return _native_attention_fwd(negative_slope, indptr, indices, x, src_score, dst_score)[0]


_native_attention.defvjp(_native_attention_fwd, _native_attention_bwd)


def _native_gat_layer_fwd(negative_slope, eps, indptr, indices, z, a_src, a_dst):
    y, out, src, dst, row_max, den, scale = native_kernel.gat_layer_forward(
        indptr, indices, z, a_src, a_dst, negative_slope=negative_slope, eps=eps)
    return (y, out), (indptr, indices, z, a_src, a_dst, src, dst, y, row_max, den, scale)


def _native_gat_layer_bwd(negative_slope, eps, residuals, cotangents):
    indptr, indices, z, a_src, a_dst, src, dst, y, row_max, den, scale = residuals
    y_bar, out_bar = cotangents
    z_bar, src_bar, dst_bar = native_kernel.gat_layer_backward(
        indptr, indices, z, a_src, a_dst, src, dst, y, row_max, den, scale, y_bar, out_bar,
        negative_slope=negative_slope, eps=eps)
    a_bar = z.T @ jnp.stack([src_bar, dst_bar], axis=1)  # [d, 2]: one product, not two reductions over the nodes
    return None, None, z_bar, a_bar[:, 0], a_bar[:, 1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _native_gat_layer(negative_slope: float, eps: float, indptr, indices, z, a_src, a_dst):
    """:func:`gat_layer` in two native passes forward (scores; attention with the normalisation) and two
    backward (:func:`itemjax.native.gat_layer_forward`, :func:`~itemjax.native.gat_layer_backward`)."""
    return _native_gat_layer_fwd(negative_slope, eps, indptr, indices, z, a_src, a_dst)[0]


_native_gat_layer.defvjp(_native_gat_layer_fwd, _native_gat_layer_bwd)


def gat_layer(graph: DeviceGraph, z: jax.Array, a_src: jax.Array, a_dst: jax.Array, negative_slope: float = 0.2,
              eps: float = NORMALIZE_EPS) -> tuple[jax.Array, jax.Array]:
    """One head of a GAT layer (:class:`itemjax.model.models.GAT`): ``(y, out)``, each ``[n_nodes, d]``::

        src_r = a_src . z_r,  dst_r = a_dst . z_r
        y     = propagate_attention(graph, z, src, dst, negative_slope)     (the next layer's input)
        out   = l2_normalize(y, eps)                                        (the layer's output)

    On the ``"native"`` backend, for float32 ``z`` of a width the native passes take, the scores, the
    attention and the normalisation are fused (:func:`itemjax.native.gat_layer_forward`): no XLA pass
    over ``[n_nodes, d]`` for the scores, the norms or their gradients (a GAT BPR step on gowalla 5-7%
    faster, benchmarks/gat_layer.py). Elsewhere, the composition above. Same values and gradients
    (tests/test_native.py, tests/test_propagation_attention.py).

    Args:
      graph: the device graph; z: ``[n_nodes, d]`` (one head's ``h W``); a_src, a_dst: ``[d]``.
      negative_slope: LeakyReLU slope of the logits; eps: the smallest norm ``out`` divides by.
    """
    if graph.backend == "native" and _native_usable() and native_kernel.gat_supported(z):
        return _native_gat_layer(float(negative_slope), float(eps), graph.indptr, graph.indices, z,
                                 jnp.asarray(a_src, z.dtype), jnp.asarray(a_dst, z.dtype))
    y = propagate_attention(graph, z, jnp.sum(z * a_src, axis=-1), jnp.sum(z * a_dst, axis=-1), negative_slope)
    return y, l2_normalize(y, eps)


def propagate_attention(
    graph: DeviceGraph, x: jax.Array, src_score: jax.Array, dst_score: jax.Array, negative_slope: float = 0.2
) -> jax.Array:
    """One head of additive (GAT) attention propagation: ``[n_nodes, d] -> [n_nodes, d]``.

    For each edge ``c -> r`` (``c`` in ``N(r)``)::

        l_rc     = LeakyReLU_slope(dst_score[r] + src_score[c])
        alpha_rc = exp(l_rc - m_r) / sum_{c' in N(r)} exp(l_rc' - m_r)     (m_r = max_c l_rc)
        y[r]     = sum_{c in N(r)} alpha_rc x[c]                          (0 if N(r) is empty)

    Backends (``graph.backend``), same values and gradients (tests/test_propagation_attention.py):

    * ``"segment"``: logits gathered over the padded edges, :func:`edge_softmax`,
      :func:`propagate_weighted`; plain autodiff. The reference, and the GPU / TPU path.
    * ``"csr"``: fused. With ``w_rc = exp(l_rc - m_r)`` as CSR data (``m_r`` by a sorted segment
      max), ``y = (A_w x) / den`` with ``den_r = sum_c w_rc`` (a sorted segment sum, 0 -> 1 on
      rows without edges). The :func:`jax.custom_vjp`, with ``lambda_rc = dLeakyReLU/dpre``
      and ``q_r = y_bar_r . y_r``::

          x_bar     = A_w^T (y_bar / den)
          dst_bar_r = (y_bar_r . (A_{w lambda} x)_r - q_r sum_c (w lambda)_rc) / den_r
          src_bar_c = x_c . (A_{w lambda}^T (y_bar / den))_c - sum_r (w lambda)_rc q_r / den_r

      i.e. the softmax backward ``l_bar_rc = alpha_rc (y_bar_r . x_c - q_r)`` summed per row
      and per column without ever forming it per edge: four CSR matmuls of width ``d`` in all
      (LightGCN's propagation: two), plus gathers, exps and sorted segment sums of edge
      scalars; no ``[n_edges, d]`` array. ``A^T`` has ``A``'s pattern (the graph is symmetric)
      and its data are the same logits with the two ends swapped, recomputed from the node
      scores. ``m_r`` gets no gradient (the softmax does not depend on it). The CSR arrays
      hold no padding, so padded edges never enter.
    * ``"native"``: for float32 ``x`` of width 16, 32, 64 or 128, fused native passes over the CSR
      rows (:func:`itemjax.native.gat_forward` / :func:`~itemjax.native.gat_backward`): the forward
      computes ``m_r``, ``w``, ``den_r`` and ``y_r`` in one pass per row; the backward makes one pass
      over rows ``r`` (``dst_bar``, gathering ``x_c``) and one over rows ``c`` (``x_bar`` and
      ``src_bar``, gathering ``y_bar_r``: by the pattern's symmetry the column sums are row sums).
      Other widths and dtypes: ``"csr"``'s computation with its four products on the native kernel.

    Args:
      graph: the device graph; only its structure is read (not ``data`` / ``weights``).
      x: node features ``[n_nodes, d]`` (one head's ``z``).
      src_score, dst_score: ``[n_nodes]`` per-node attention terms of a message's sender
        and receiver (``a_src . z[c]`` and ``a_dst . z[r]`` in GAT), cast to ``x.dtype``.
      negative_slope: LeakyReLU slope of the logits (static).

    Returns:
      ``[n_nodes, d]`` in ``x.dtype``, differentiable in ``x``, ``src_score`` and ``dst_score``.
      Rows of nodes without edges are 0 and every value stays finite whatever the logits' scale.
    """
    _check_scores(graph, x, src_score, dst_score)
    src_score, dst_score = (jnp.asarray(s, x.dtype) for s in (src_score, dst_score))
    if graph.backend == "segment":
        return _segment_attention(graph, x, src_score, dst_score, negative_slope)
    if graph.backend == "native" and _native_usable() and native_kernel.gat_supported(x):
        return _native_attention(float(negative_slope), graph.indptr, graph.indices, x, src_score, dst_score)
    if graph.backend in ("csr", "native"):
        rows = graph.receivers[: graph.indices.shape[0]]  # CSR row of each entry (real edges come first)
        return _csr_attention(graph.backend == "native", graph.n_nodes, float(negative_slope), graph.indptr,
                              graph.indices, rows, x, src_score, dst_score)
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
    :func:`propagate` (any backend) takes the view without recompiling. A node whose edges
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
