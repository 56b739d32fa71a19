"""The user-item bipartite graph and its symmetric normalised adjacency (host side).

Nodes are users then items: user ``u`` is node ``u`` and item ``i`` is node
``n_users + i``, so ``n_nodes = n_users + n_items``. Each training interaction
``(u, i)`` gives two directed edges, ``u -> n_users + i`` and ``n_users + i -> u``.
The adjacency ``A`` ([n_nodes, n_nodes], 0/1, symmetric) is normalised as in LightGCN::

    A_hat = D^-1/2 A D^-1/2,    A_hat[r, c] = 1 / sqrt(deg_r * deg_c)  for each edge,

with ``deg`` the row sums of ``A``. A node without edges (an isolated user, an item
nobody interacted with) has degree 0 and an empty row and column, so propagation
gives it a zero row, never NaN.

:class:`Graph` holds ``A_hat`` twice, for the two propagation backends of
:mod:`itemjax.graph.propagation`:

* padded edge arrays ``senders``, ``receivers``, ``weights`` of static length
  ``E_pad = bucket_size(n_edges)`` (or ``pad_to``). The real edges come first, in
  CSR row order (``receivers`` sorted ascending); padding edges connect the dummy
  node ``n_nodes`` to itself with weight 0, so ``receivers`` stays sorted;
* CSR arrays ``indptr``, ``indices``, ``data`` of ``A_hat`` (sorted column indices).

Everything here is numpy / scipy; device code lives in :mod:`itemjax.graph.propagation`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse

from itemjax.errors import ConfigError, DataError

# Mantissas of the bucket ladder m * 2**k: consecutive sizes differ by at most 1/8.
_BUCKET_MANTISSAS = tuple(range(8, 16))


def bucket_size(n: int) -> int:
    """Padded size for ``n`` items: the smallest ``m * 2**k >= n`` with ``m`` in 8..15.

    The ladder 8, 9, ..., 15, 16, 18, ..., 30, 32, 36, ... is geometric with ratio
    at most 9/8, so for ``n >= 8`` the result wastes less than 12.5 % and graphs of
    similar size share one padded shape (one compilation). ``n <= 8`` gives 8.
    The function is non-decreasing in ``n``.
    """
    n = int(n)
    if n < 0:
        raise ConfigError(f"bucket_size got a negative size {n}; pass a count >= 0.")
    if n <= _BUCKET_MANTISSAS[0]:
        return _BUCKET_MANTISSAS[0]
    # Largest k with 8 * 2**k <= n: then n <= 16 * 2**k and some m * 2**k, m in 8..16, covers n.
    k = (n // _BUCKET_MANTISSAS[0]).bit_length() - 1
    step = 1 << k
    return -(-n // step) * step  # ceil(n / step) * step, a multiple in 9..16 of step


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
    """Bipartite user-item graph with its normalised adjacency ``A_hat`` (numpy arrays).

    Attributes:
      n_users, n_items: node counts; ``n_nodes = n_users + n_items``; item ``i`` is
        node ``n_users + i``. The dummy node ``n_nodes`` exists only as padding target.
      senders, receivers: int32 ``[E_pad]``. Entries ``[:n_edges]`` are the real
        directed edges (both directions of every interaction) in CSR row order, so
        ``receivers`` is sorted; entries ``[n_edges:]`` are padding ``n_nodes -> n_nodes``.
      weights: float32 ``[E_pad]``, ``A_hat[receiver, sender]`` for real edges, 0 for padding.
      n_edges: number of real directed edges, ``2 * nnz(train)``.
      indptr: int32 ``[n_nodes + 1]``, indices: int32 ``[n_edges]``,
        data: float32 ``[n_edges]``: ``A_hat`` in CSR (row ``r`` holds the edges
        received by node ``r``; column indices sorted within rows).
      edge_pairs: int32 ``[n_edges]``: the interaction each CSR entry (= real edge) belongs
        to, in ``[0, n_edges / 2)``: the CSR position of its user-row entry (user rows come
        first), so both directions of an interaction share one id (edge dropout keeps or
        drops them together, :func:`itemjax.graph.propagation.edge_dropout`).

    Propagation ``A_hat @ x`` reads either ``out[r] = sum_e [receivers_e == r]
    weights_e x[senders_e]`` or the CSR arrays; both give the same result.
    """

    n_users: int
    n_items: int
    n_nodes: int
    senders: np.ndarray
    receivers: np.ndarray
    weights: np.ndarray
    n_edges: int
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    edge_pairs: np.ndarray

    @property
    def n_padded_edges(self) -> int:
        """``E_pad``: length of the padded edge arrays (static shape)."""
        return int(self.senders.shape[0])

    def degrees(self) -> np.ndarray:
        """Node degrees ``deg = A 1``, int64 ``[n_nodes]`` (users first, then items)."""
        return np.diff(self.indptr).astype(np.int64)

    def to_csr(self) -> scipy.sparse.csr_matrix:
        """``A_hat`` as a scipy CSR matrix ``[n_nodes, n_nodes]`` (float32, shares arrays)."""
        return scipy.sparse.csr_matrix(
            (self.data, self.indices, self.indptr), shape=(self.n_nodes, self.n_nodes)
        )

    def to_jraph(self):
        """The padded edge list as a :class:`jraph.GraphsTuple` (numpy arrays).

        ``nodes`` is None, ``edges = weights[:, None]`` (``[E_pad, 1]``), ``senders`` and
        ``receivers`` are the padded arrays. Following jraph's padding convention
        (``jraph.pad_with_graphs``), the dummy node and the padding edges form a
        second, padding graph: ``n_node = [n_nodes, 1]`` (``n_nodes + 1`` nodes in all,
        the dummy included) and ``n_edge = [n_edges, E_pad - n_edges]``, so
        ``jraph.get_edge_padding_mask`` marks exactly the padding edges.
        """
        import jraph  # local import: jraph pulls in jax, the rest of this module is numpy only

        return jraph.GraphsTuple(
            nodes=None,
            edges=self.weights[:, None],
            senders=self.senders,
            receivers=self.receivers,
            globals=None,
            n_node=np.array([self.n_nodes, 1], dtype=np.int32),
            n_edge=np.array([self.n_edges, self.n_padded_edges - self.n_edges], dtype=np.int32),
        )


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


def build_graph(train, *, pad_to: int | None = None) -> Graph:
    """Builds the bipartite graph of ``train`` and its normalised adjacency.

    Args:
      train: scipy sparse matrix (or array) ``[n_users, n_items]`` of training
        interactions. Every stored entry is one interaction whatever its value
        (duplicates count once), so ratings or counts can be passed unchanged.
      pad_to: length ``E_pad`` of the padded edge arrays; default
        ``bucket_size(n_edges)``. Must be ``>= n_edges = 2 * nnz(train)``.

    Returns:
      A :class:`Graph` with ``A_hat = D^-1/2 A D^-1/2``, ``A = [[0, R], [R^T, 0]]``,
      ``R`` the 0/1 pattern of ``train``; computed in float64, stored as float32.
    """
    if not scipy.sparse.issparse(train) or train.ndim != 2:
        raise DataError(
            f"build_graph needs a 2-D scipy.sparse matrix [n_users, n_items], got "
            f"{type(train).__name__}; wrap the interactions in scipy.sparse.csr_matrix."
        )
    n_users, n_items = (int(s) for s in train.shape)
    interactions = scipy.sparse.csr_matrix(train, dtype=np.float64, copy=True)
    interactions.sum_duplicates()
    n_nodes = n_users + n_items

    pattern = interactions.tocoo()
    user_nodes = pattern.row.astype(np.int64)
    item_nodes = n_users + pattern.col.astype(np.int64)
    adjacency = scipy.sparse.csr_matrix(
        (
            np.ones(2 * pattern.nnz),
            (np.concatenate([user_nodes, item_nodes]), np.concatenate([item_nodes, user_nodes])),
        ),
        shape=(n_nodes, n_nodes),
    )
    adjacency.sum_duplicates()  # also sorts column indices within each row
    degree = np.diff(adjacency.indptr).astype(np.float64)
    inv_sqrt_degree = np.zeros(n_nodes, dtype=np.float64)
    connected = degree > 0
    inv_sqrt_degree[connected] = 1.0 / np.sqrt(degree[connected])
    rows = np.repeat(np.arange(n_nodes, dtype=np.int64), np.diff(adjacency.indptr))
    cols = adjacency.indices.astype(np.int64)
    normalised = inv_sqrt_degree[rows] * inv_sqrt_degree[cols]

    n_edges = int(adjacency.nnz)
    # Interaction id of each entry: the position of (user, item) among the user-row entries,
    # which come first in CSR order and are sorted by (row, column), so by the key below.
    pair_key = np.minimum(rows, cols) * n_nodes + np.maximum(rows, cols)
    edge_pairs = np.searchsorted(pair_key[: n_edges // 2], pair_key)
    if n_edges >= np.iinfo(np.int32).max:
        raise DataError(f"graph has {n_edges} directed edges, more than int32 indices hold; use a smaller data set.")
    padded = bucket_size(n_edges) if pad_to is None else int(pad_to)
    if padded < n_edges:
        raise ConfigError(
            f"pad_to={pad_to} is smaller than the {n_edges} directed edges of the graph; "
            f"pass pad_to >= {n_edges} or leave it unset."
        )
    n_padding = padded - n_edges
    dummy = np.full(n_padding, n_nodes, dtype=np.int32)
    senders = np.concatenate([cols.astype(np.int32), dummy])
    receivers = np.concatenate([rows.astype(np.int32), dummy])
    weights = np.concatenate([normalised.astype(np.float32), np.zeros(n_padding, np.float32)])

    return Graph(
        n_users=n_users,
        n_items=n_items,
        n_nodes=n_nodes,
        senders=_readonly(senders),
        receivers=_readonly(receivers),
        weights=_readonly(weights),
        n_edges=n_edges,
        indptr=_readonly(adjacency.indptr.astype(np.int32)),
        indices=_readonly(adjacency.indices.astype(np.int32)),
        data=_readonly(normalised.astype(np.float32)),
        edge_pairs=_readonly(edge_pairs.astype(np.int32)),
    )
