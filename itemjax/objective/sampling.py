"""On-device samplers for training batches.

Everything here runs inside the jitted training step: the training interactions are kept on
the device as a per-user CSR (``indptr``, sorted ``indices``), so no host work happens per
step.

* :func:`sample_edges` — B training interactions ``(u, p)`` uniformly (one epoch of BPR draws
  ``n_train`` of them, like LightGCN's sampler in expectation).
* :func:`uniform_negatives` — items drawn exactly uniformly among those the user has NOT
  interacted with in training (a binary search in the user's row, no rejection).
* :func:`sample_users` / :func:`sample_positives` — user-centric lists for ITEM.
* :func:`sample_pairs` — B ``(u, p)`` pairs for the pairwise losses, either interaction-uniform
  (:func:`sample_edges`) or user-uniform (a user uniformly, then one of its positives, as
  LightGCN's reference sampler).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

@flax.struct.dataclass
class TrainData:
    """Training interactions on the device.

    Attributes:
      indptr: int32 [n_users + 1] row pointers of the training matrix.
      indices: int32 [n_train] item ids, sorted within each user's row.
      edge_users: int32 [n_train] user of each training interaction (row of ``indices``).
      active_users: int32 [n_active] users with at least one training item.
      hard_negatives: int32 [n_users, W] PPR candidate table (-1 = none), or [n_users, 0].
    """

    indptr: jax.Array
    indices: jax.Array
    edge_users: jax.Array
    active_users: jax.Array
    hard_negatives: jax.Array
    n_users: int = flax.struct.field(pytree_node=False)
    n_items: int = flax.struct.field(pytree_node=False)
    max_degree: int = flax.struct.field(pytree_node=False)

    @property
    def n_train(self) -> int:
        return self.indices.shape[0]


def make_train_data(train: sp.csr_matrix, hard_negatives: np.ndarray | None = None) -> TrainData:
    """Host → device: build :class:`TrainData` from a canonical CSR ``[n_users, n_items]``."""
    train = sp.csr_matrix(train)
    train.sort_indices()
    n_users, n_items = train.shape
    degrees = np.diff(train.indptr)
    if hard_negatives is None:
        hard_negatives = np.zeros((n_users, 0), np.int32)
    return TrainData(
        indptr=jnp.asarray(train.indptr, jnp.int32),
        indices=jnp.asarray(train.indices, jnp.int32),
        edge_users=jnp.asarray(np.repeat(np.arange(n_users), degrees), jnp.int32),
        active_users=jnp.asarray(np.flatnonzero(degrees > 0), jnp.int32),
        hard_negatives=jnp.asarray(hard_negatives, jnp.int32),
        n_users=int(n_users),
        n_items=int(n_items),
        max_degree=int(degrees.max(initial=0)),
    )


def is_training_item(data: TrainData, users: jax.Array, items: jax.Array) -> jax.Array:
    """``[...]`` bool: whether ``items`` is in ``users``' training row (binary search per entry).

    ``users`` and ``items`` broadcast together. Each search runs ``ceil(log2(max_degree+1))+1``
    halving steps over the sorted row ``indices[indptr[u]:indptr[u+1]]``.
    """
    users, items = jnp.broadcast_arrays(users, items)
    lo = data.indptr[users]
    hi = data.indptr[users + 1]
    end = hi
    n_steps = max(1, math.ceil(math.log2(data.max_degree + 1)) + 1)

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        go_right = data.indices[jnp.clip(mid, 0, data.n_train - 1)] < items
        active = lo < hi
        lo = jnp.where(active & go_right, mid + 1, lo)
        hi = jnp.where(active & ~go_right, mid, hi)
        return lo, hi

    lo, _ = jax.lax.fori_loop(0, n_steps, halve, (lo, hi))
    found = data.indices[jnp.clip(lo, 0, data.n_train - 1)] == items
    return (lo < end) & found


def uniform_negatives(key: jax.Array, data: TrainData, users: jax.Array, n: int) -> jax.Array:
    """``[..., n]`` int32 items drawn exactly uniformly among items the user has not trained on.

    No rejection: draw ``r ~ U{0, ..., n_items - deg_u - 1}`` and return the r-th item NOT in
    the user's sorted training row ``s_0 < s_1 < ...``. Since ``s_j - j`` (the number of
    non-training items below ``s_j``) is non-decreasing, that item is ``r + c`` with
    ``c = #{j : s_j - j <= r}``, found by a binary search over the row. A user who has every
    item has no negative; it gets item ``n_items - 1`` (never happens in real data).
    """
    users_b = jnp.broadcast_to(users[..., None], users.shape + (n,))
    lo = data.indptr[users_b]
    hi = data.indptr[users_b + 1]
    start = lo
    n_free = jnp.maximum(data.n_items - (hi - lo), 1)
    r = jnp.floor(jax.random.uniform(key, users_b.shape) * n_free).astype(jnp.int32)
    r = jnp.minimum(r, n_free - 1)
    n_steps = max(1, math.ceil(math.log2(data.max_degree + 1)) + 1)

    def halve(_, bounds):  # first j in [lo, hi) with s_j - (j - start) > r
        lo, hi = bounds
        mid = (lo + hi) // 2
        key_mid = data.indices[jnp.clip(mid, 0, data.n_train - 1)] - (mid - start)
        go_right = key_mid <= r
        active = lo < hi
        return jnp.where(active & go_right, mid + 1, lo), jnp.where(active & ~go_right, mid, hi)

    first, _ = jax.lax.fori_loop(0, n_steps, halve, (lo, hi))
    return jnp.minimum(r + (first - start), data.n_items - 1).astype(jnp.int32)


def sample_edges(key: jax.Array, data: TrainData, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """``(users [B], positives [B])``: B training interactions drawn uniformly with replacement."""
    idx = jax.random.randint(key, (batch_size,), 0, data.n_train, jnp.int32)
    return data.edge_users[idx], data.indices[idx]


def sample_pairs(key: jax.Array, data: TrainData, batch_size: int, user_sampling: str = "degree"
                 ) -> tuple[jax.Array, jax.Array]:
    """``(users [B], positives [B])`` training pairs for BPR / BCE.

    ``user_sampling="degree"``: interactions uniformly (:func:`sample_edges`), so user ``u``
    appears with probability ``deg_u / n_train``. ``"uniform"``: a user uniformly among users
    with training items, then one of its training items uniformly, so
    ``P(u, p) = 1 / (n_active * deg_u)`` (LightGCN's reference sampler).
    """
    if user_sampling == "degree":
        return sample_edges(key, data, batch_size)
    k_user, k_item = jax.random.split(key)
    users = sample_users(k_user, data, batch_size)
    start = data.indptr[users]
    degree = data.indptr[users + 1] - start
    offset = jnp.floor(jax.random.uniform(k_item, (batch_size,)) * degree).astype(jnp.int32)
    offset = jnp.minimum(offset, degree - 1)
    return users, data.indices[start + offset]


def sample_users(key: jax.Array, data: TrainData, batch_size: int, by_degree: bool = False) -> jax.Array:
    """``[B]`` users drawn with replacement among users with training items.

    Uniformly by default; with ``by_degree`` a user is drawn with probability
    ``deg_u / n_train`` (the user of a uniformly drawn training interaction), so every
    interaction weighs the same in expectation, as in BPR's sampler.
    """
    if by_degree:
        return sample_edges(key, data, batch_size)[0]
    idx = jax.random.randint(key, (batch_size,), 0, data.active_users.shape[0], jnp.int32)
    return data.active_users[idx]


def sample_positives(key: jax.Array, data: TrainData, users: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Up to ``n`` distinct training items per user.

    Returns ``(items [B, n] int32, where [B, n] bool)``: a user with more than ``n`` items gets
    a uniformly random subset of size ``n`` (top-n of random keys over its row); a user with
    fewer gets all of them followed by masked padding (item 0, ``where=False``).
    """
    width = max(data.max_degree, 1)
    start = data.indptr[users]
    degree = data.indptr[users + 1] - start
    offsets = jnp.arange(width, dtype=jnp.int32)
    keys = jax.random.uniform(key, users.shape + (width,))
    keys = jnp.where(offsets < degree[..., None], keys, -1.0)
    k = min(n, width)
    _, picked = jax.lax.top_k(keys, k)
    where = picked < degree[..., None]
    items = jnp.where(where, data.indices[jnp.clip(start[..., None] + picked, 0, data.n_train - 1)], 0)
    if k < n:
        pad = users.shape + (n - k,)
        items = jnp.concatenate([items, jnp.zeros(pad, jnp.int32)], axis=-1)
        where = jnp.concatenate([where, jnp.zeros(pad, bool)], axis=-1)
    return items.astype(jnp.int32), where


def negatives(key: jax.Array, data: TrainData, users: jax.Array, n: int, hard_share) -> jax.Array:
    """``[..., n]`` negatives mixing PPR hard candidates and uniform items.

    Each slot independently is a hard slot with probability ``hard_share`` (a Python float or
    a traced scalar, e.g. a curriculum) and a uniform non-training item otherwise. The hard
    slots of a user take its PPR candidates (``data.hard_negatives[u]``, ``-1`` = padding)
    WITHOUT replacement: the user's valid candidates in a uniformly random order, the j-th hard
    slot taking the ``(j mod n_valid)``-th of them, so the first ``n_valid`` hard slots are
    distinct items (with replacement, 128 draws from a 90-wide window give only ~68 distinct
    items). A user with no valid candidate gets uniform items in its hard slots.
    """
    k_uni, k_order, k_mix = jax.random.split(key, 3)
    uniform = uniform_negatives(k_uni, data, users, n)
    width = data.hard_negatives.shape[1]
    if width == 0 or (isinstance(hard_share, (int, float)) and hard_share == 0):
        return uniform
    shape = users.shape + (n,)
    row = data.hard_negatives[users]  # [..., W]
    valid = row >= 0
    order_keys = jnp.where(valid, jax.random.uniform(k_order, row.shape), -1.0)
    _, order = jax.lax.top_k(order_keys, width)  # valid candidates first, in random order
    shuffled = jnp.take_along_axis(row, order, axis=-1)  # [..., W]
    n_valid = jnp.sum(valid, axis=-1, keepdims=True)  # [..., 1]
    use_hard = jax.random.uniform(k_mix, shape) < hard_share
    position = jnp.cumsum(use_hard, axis=-1) - 1  # j-th hard slot of the user -> j
    col = jnp.where(use_hard, position, 0) % jnp.maximum(n_valid, 1)
    hard = jnp.take_along_axis(shuffled, col.astype(jnp.int32), axis=-1)
    return jnp.where(use_hard & (n_valid > 0), hard, uniform)
