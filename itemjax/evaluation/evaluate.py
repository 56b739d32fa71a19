"""Full-ranking top-K evaluation: every item is scored for every evaluated user.

For user ``u`` the score of item ``i`` is ``s(u, i) = <user_emb[u], item_emb[i]>``. Items in
the user's ``exclude`` rows (its training items, and e.g. validation items at test time) are
set to ``-inf`` and never ranked; the top ``Kmax = max(ks)`` remaining items are compared with
the user's ``targets`` (held-out items), and :func:`itemjax.evaluation.metrics.topk_metrics` turns the hit
pattern into Recall / NDCG / Precision / HitRate at every ``k`` in ``ks``. Means are taken over
the users with at least one target.

Split of the work:

* host (numpy / scipy, outside jit): slice the CSR rows of a chunk of ``chunk_size`` users and
  lay their excluded and target items out as flat ``(row, col)`` int32 index pairs, padded to a
  power-of-two length that is fixed for the whole call (the largest chunk's count, rounded up);
  padding pairs point at the dummy column ``n_items``, which the device scatter drops. The last
  chunk of users is padded with masked rows. No dense ``[chunk, n_items]`` array is built or
  transferred on the host.
* device (one jitted function, compiled once per call signature): gather the chunk's user
  embeddings, ``scores = u @ item_emb.T`` (float32, ``Precision.HIGHEST``), scatter ``-inf``
  at the excluded pairs, ``lax.top_k(scores, Kmax)``, scatter the target pairs into a boolean
  mask and gather it at the top-k item ids to get the hits, then the per-user metrics.

Ties are broken by ``lax.top_k``: among equal scores the lower item id ranks first. A ranked
slot whose score is ``-inf`` (fewer than ``Kmax`` unexcluded items) is never a hit. Targets
that are also excluded still count in the user's number of relevant items (so they lower its
recall); a clean split has none.

Popularity baseline through the same evaluator: with ``user_emb = ones [n_users, 1]`` and
``item_emb = popularity[:, None]`` every user's scores are the item degrees, so::

    evaluate(*popularity_embeddings(train), train, test)

ranks items by training popularity (see :func:`popularity_embeddings`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from itemjax.parallel.distributed import replicate_value, shard_rows
from itemjax.errors import ConfigError, DataError
from itemjax.evaluation.metrics import METRIC_NAMES, check_ks, topk_metrics

__all__ = ["evaluate", "popularity_scores", "popularity_embeddings"]


# ----------------------------------------------------------------------------- host side


def _as_bool_csr(matrix, shape: tuple[int, int], what: str) -> sp.csr_array:
    """``matrix`` as a canonical boolean CSR array (stored zeros dropped), checked for ``shape``."""
    if not sp.issparse(matrix):
        raise DataError(
            f"{what} must be a scipy.sparse matrix [n_users, n_items], got {type(matrix).__name__}; "
            "build it with scipy.sparse.csr_array((ones, (users, items)), shape=(n_users, n_items))"
        )
    if matrix.shape != shape:
        raise DataError(
            f"{what} has shape {matrix.shape} but the embeddings give (n_users, n_items) = {shape}; "
            "build both from the same split"
        )
    csr = sp.csr_array(matrix, dtype=bool, copy=True)  # copy: never edit the caller's matrix
    csr.eliminate_zeros()
    csr.sum_duplicates()
    return csr


def _union_of_excluded(exclude, shape: tuple[int, int]) -> sp.csr_array:
    """Union (logical or) of one matrix, a list of matrices, or ``None`` (nothing excluded)."""
    if exclude is None:
        return sp.csr_array(shape, dtype=bool)
    if sp.issparse(exclude):
        return _as_bool_csr(exclude, shape, "exclude")
    if not isinstance(exclude, (list, tuple)):
        raise DataError(
            f"exclude must be a scipy.sparse matrix or a list of them, got {type(exclude).__name__}"
        )
    union = sp.csr_array(shape, dtype=bool)
    for position, matrix in enumerate(exclude):
        union = union + _as_bool_csr(matrix, shape, f"exclude[{position}]")
    return _as_bool_csr(union, shape, "exclude")


def _next_power_of_two(n: int) -> int:
    """Smallest power of two ``>= max(n, 1)``."""
    return 1 << max(int(n) - 1, 0).bit_length()


def _padded_width(matrix: sp.csr_array, users: np.ndarray, n_chunks: int, chunk_size: int) -> int:
    """Power-of-two length that holds the stored entries of any chunk of ``users``."""
    row_counts = np.zeros(n_chunks * chunk_size, dtype=np.int64)
    row_counts[: len(users)] = np.diff(matrix.indptr)[users]
    chunk_totals = row_counts.reshape(n_chunks, chunk_size).sum(axis=1)
    return _next_power_of_two(int(chunk_totals.max()))


def _chunk_pairs(
    matrix: sp.csr_array, chunk_users: np.ndarray, width: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(row, col)`` int32 pairs of the entries of ``matrix[chunk_users]``.

    ``chunk_users`` are the real (unpadded) users of a chunk, which come first in it.
    Returns two ``[width]`` arrays: row = position of the user in the chunk, col = item id;
    the tail is padding ``(0, n_items)``, a column the device scatter drops.
    """
    block = matrix[chunk_users]
    counts = np.diff(block.indptr)
    n_pairs = int(counts.sum())
    rows = np.zeros(width, dtype=np.int32)
    cols = np.full(width, n_items, dtype=np.int32)
    rows[:n_pairs] = np.repeat(np.arange(len(chunk_users), dtype=np.int32), counts)
    cols[:n_pairs] = block.indices
    return rows, cols


def _as_float_embeddings(emb, what: str) -> jax.Array:
    emb = jnp.asarray(emb)
    if emb.ndim != 2:
        raise DataError(f"{what} must be a 2-D array [rows, dim], got shape {emb.shape}")
    if not jnp.issubdtype(emb.dtype, jnp.floating) or jnp.finfo(emb.dtype).bits < 32:
        emb = emb.astype(jnp.float32)
    return emb


# --------------------------------------------------------------------------- device side


@functools.partial(jax.jit, static_argnames=("k",))
def _chunk_top_k(user_emb, item_emb, user_ids, exclude_rows, exclude_cols, k: int):
    """``(scores [C, k], items [C, k])``: each chunk user's ``k`` best items, excluded pairs
    (``-inf``) last; ties go to the lower item id (``lax.top_k``)."""
    # Under a mesh (itemjax.parallel.distributed) the chunk's user rows, so its scores and top-k, are split across devices.
    scores = jnp.matmul(user_emb[shard_rows(user_ids)], item_emb.T, precision=jax.lax.Precision.HIGHEST)
    scores = scores.at[exclude_rows, exclude_cols].set(-jnp.inf, mode="drop")
    return jax.lax.top_k(scores, k)


@functools.partial(jax.jit, static_argnames=("ks",))
def _chunk_metrics(
    user_emb: jax.Array,
    item_emb: jax.Array,
    user_ids: jax.Array,
    user_valid: jax.Array,
    n_relevant: jax.Array,
    exclude_rows: jax.Array,
    exclude_cols: jax.Array,
    target_rows: jax.Array,
    target_cols: jax.Array,
    ks: tuple[int, ...],
) -> dict[str, jax.Array]:
    """Per-user metrics of one chunk of ``C`` users.

    Args:
      user_emb: ``[n_users, d]``; item_emb: ``[n_items, d]``.
      user_ids: ``[C]`` int32 rows of ``user_emb``; user_valid: ``[C]`` bool (False = padding).
      n_relevant: ``[C]`` int32 number of targets per user.
      exclude_rows, exclude_cols: ``[We]`` int32 pairs (chunk row, item) set to ``-inf``;
        pairs with item ``n_items`` are padding and dropped.
      target_rows, target_cols: ``[Wt]`` int32 pairs (chunk row, item) of held-out items.
      ks: static cutoffs.
    Returns:
      ``{"recall@k", ...}`` each ``[C]`` (0 for padded users).
    """
    top_scores, top_items = _chunk_top_k(user_emb, item_emb, user_ids, exclude_rows, exclude_cols, max(ks))
    is_target = jnp.zeros((user_ids.shape[0], item_emb.shape[0]), bool).at[target_rows, target_cols].set(True, mode="drop")
    hits = jnp.take_along_axis(is_target, top_items, axis=1) & (top_scores > -jnp.inf)
    return jax.tree.map(replicate_value, topk_metrics(hits, n_relevant, ks, where=user_valid))


# ------------------------------------------------------------------------------ public API


def evaluate(
    user_emb,
    item_emb,
    exclude,
    targets,
    *,
    ks: Sequence[int] = (20,),
    users=None,
    chunk_size: int = 1024,
    progress: bool = False,
    reduce: str | None = "mean",
) -> dict:
    """Full-ranking Recall / NDCG / Precision / HitRate at every ``k`` in ``ks``.

    Args:
      user_emb: ``[n_users, d]`` user embeddings (jax or numpy).
      item_emb: ``[n_items, d]`` item embeddings; ``s(u, i) = <user_emb[u], item_emb[i]>``.
      exclude: scipy.sparse ``[n_users, n_items]`` of items never ranked for a user (its
        training items), a list of such matrices whose union is excluded (e.g.
        ``[train, valid]``), or ``None``.
      targets: scipy.sparse ``[n_users, n_items]`` of held-out items (nonzero = relevant).
      ks: cutoffs, each ``<= n_items``; all are computed from one ``top_k(max(ks))``.
      users: optional 1-D int array of user rows to evaluate (default: every user with at least
        one target). Listed users without targets get 0 and are left out of the means.
      chunk_size: users scored at once; the device holds a ``[chunk_size, n_items]`` float32
        score matrix (about 168 MB for 1024 x 41k items).
      progress: show a tqdm bar over chunks.
      reduce: ``"mean"`` to average over users with >= 1 target, ``None`` for per-user values.

    Returns:
      ``reduce="mean"``: ``{"recall@k": float, "ndcg@k": ..., "precision@k": ...,
      "hitrate@k": ..., "n_users": int}`` (``n_users`` = users averaged over).
      ``reduce=None``: the same metric keys with ``[len(users)]`` float numpy arrays, plus
      ``"users"`` (the evaluated rows) and ``"n_relevant"`` (their number of targets).

    Raises:
      DataError: shapes disagree, or no evaluated user has a target.
      ConfigError: bad ``ks``, ``chunk_size``, ``users`` or ``reduce``.
    """
    if reduce not in ("mean", None):
        raise ConfigError(f"reduce={reduce!r} is not supported; use 'mean' or None")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size!r} must be a positive integer")
    user_emb = _as_float_embeddings(user_emb, "user_emb")
    item_emb = _as_float_embeddings(item_emb, "item_emb")
    if user_emb.shape[1] != item_emb.shape[1]:
        raise DataError(
            f"user_emb has dim {user_emb.shape[1]} but item_emb has dim {item_emb.shape[1]}; "
            "pass the two outputs of the same model"
        )
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    ks = check_ks(ks, n_items)
    targets = _as_bool_csr(targets, (n_users, n_items), "targets")
    excluded = _union_of_excluded(exclude, (n_users, n_items))
    n_targets_per_user = np.diff(targets.indptr).astype(np.int32)

    if users is None:
        users = np.flatnonzero(n_targets_per_user > 0)
    else:
        users = np.asarray(users)
        if users.ndim != 1 or not np.issubdtype(users.dtype, np.integer):
            raise ConfigError(f"users must be a 1-D integer array of user rows, got {users.dtype} {users.shape}")
        if users.size and (users.min() < 0 or users.max() >= n_users):
            raise ConfigError(f"users must lie in [0, {n_users}); got values in [{users.min()}, {users.max()}]")
    users = users.astype(np.int64)
    n_eval = len(users)
    if n_eval == 0 or not np.any(n_targets_per_user[users] > 0):
        raise DataError("no evaluated user has a target item; check that targets holds the held-out split")

    # Static shapes: every chunk has `chunk` users and the same pair-array widths.
    chunk = int(min(chunk_size, n_eval))
    n_chunks = -(-n_eval // chunk)
    padded_users = np.zeros(n_chunks * chunk, dtype=np.int64)
    padded_users[:n_eval] = users
    padded_valid = np.zeros(n_chunks * chunk, dtype=bool)
    padded_valid[:n_eval] = True
    exclude_width = _padded_width(excluded, users, n_chunks, chunk)
    target_width = _padded_width(targets, users, n_chunks, chunk)

    pending = None  # results of the previous chunk, fetched after dispatching the next one
    collected: list[dict[str, np.ndarray]] = []
    for index in tqdm(range(n_chunks), desc="evaluate", unit="chunk", disable=not progress):
        part = slice(index * chunk, (index + 1) * chunk)
        chunk_users = padded_users[part]
        chunk_valid = padded_valid[part]
        real_users = users[part]  # the padded tail (last chunk only) has no pairs
        exclude_rows, exclude_cols = _chunk_pairs(excluded, real_users, exclude_width, n_items)
        target_rows, target_cols = _chunk_pairs(targets, real_users, target_width, n_items)
        result = _chunk_metrics(
            user_emb,
            item_emb,
            chunk_users.astype(np.int32),
            chunk_valid,
            np.where(chunk_valid, n_targets_per_user[chunk_users], 0).astype(np.int32),
            exclude_rows,
            exclude_cols,
            target_rows,
            target_cols,
            ks=ks,
        )
        if pending is not None:
            collected.append(jax.tree.map(np.asarray, pending))
        pending = result
    collected.append(jax.tree.map(np.asarray, pending))

    per_user = {
        name: np.concatenate([part[name] for part in collected])[:n_eval].astype(np.float64)
        for name in collected[0]
    }
    ordered = [f"{metric}@{k}" for k in ks for metric in METRIC_NAMES]
    per_user = {**{name: per_user[name] for name in ordered}, "users": users,
                "n_relevant": n_targets_per_user[users]}
    return per_user if reduce is None else mean_metrics(per_user)


def top_k(user_emb, item_emb, exclude, k: int, *, users=None, chunk_size: int = 1024,
          progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every user's ``k`` best items by ``<user_emb[u], item_emb[i]>``, ``exclude`` left out: the
    same jitted chunked scoring and ``lax.top_k`` as :func:`evaluate`.

    Args:
      user_emb, item_emb, exclude, chunk_size, progress: as in :func:`evaluate`.
      k: items per user, ``<= n_items``.
      users: rows to answer (default: every user).
    Returns:
      ``(items [n, k] int64, scores [n, k] float32)`` for the ``n`` users, best first; a user with
      fewer than ``k`` allowed items gets ``-1`` items with score ``-inf`` at the tail.
    """
    user_emb = _as_float_embeddings(user_emb, "user_emb")
    item_emb = _as_float_embeddings(item_emb, "item_emb")
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    (k,) = check_ks((k,), n_items)
    excluded = _union_of_excluded(exclude, (n_users, n_items))
    users = np.arange(n_users) if users is None else np.asarray(users, np.int64)
    chunk = int(min(chunk_size, max(len(users), 1)))
    n_chunks = -(-len(users) // chunk)
    padded = np.zeros(n_chunks * chunk, np.int64)
    padded[: len(users)] = users
    width = _padded_width(excluded, users, n_chunks, chunk)
    items, scores = [], []
    for index in tqdm(range(n_chunks), desc="top-k", unit="chunk", disable=not progress):
        part = slice(index * chunk, (index + 1) * chunk)
        rows, cols = _chunk_pairs(excluded, users[part], width, n_items)
        s, i = _chunk_top_k(user_emb, item_emb, padded[part].astype(np.int32), rows, cols, k)
        items.append(np.asarray(i))
        scores.append(np.asarray(s))
    items = np.concatenate(items)[: len(users)].astype(np.int64)
    scores = np.concatenate(scores)[: len(users)]
    return np.where(np.isfinite(scores), items, -1), scores


def mean_metrics(per_user: dict) -> dict:
    """``evaluate(..., reduce="mean")`` from ``evaluate(..., reduce=None)``: each metric's mean
    over the users with at least one target, and ``n_users``, their number."""
    valid = np.asarray(per_user["n_relevant"]) > 0
    means = {name: float(values[valid].mean()) for name, values in per_user.items()
             if name not in ("users", "n_relevant")}
    return {**means, "n_users": int(valid.sum())}


def popularity_scores(train) -> np.ndarray:
    """``[n_items]`` int64 item degree: number of distinct users with the item in ``train``.

    Args:
      train: scipy.sparse ``[n_users, n_items]`` training interactions (nonzero = observed).
    """
    if not sp.issparse(train):
        raise DataError(f"train must be a scipy.sparse matrix [n_users, n_items], got {type(train).__name__}")
    interactions = _as_bool_csr(train, train.shape, "train")
    return np.bincount(interactions.indices, minlength=interactions.shape[1]).astype(np.int64)


def popularity_embeddings(train) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings that make :func:`evaluate` rank items by training popularity.

    Returns ``user_emb = ones [n_users, 1]`` and ``item_emb = popularity_scores(train)[:, None]``
    (float32, exact for degrees below 2**24), so ``s(u, i) = degree(i)`` for every user; ties
    between equally popular items go to the lower item id. Use as
    ``evaluate(*popularity_embeddings(train), train, test)``.
    """
    degrees = popularity_scores(train)
    user_emb = np.ones((train.shape[0], 1), dtype=np.float32)
    return user_emb, degrees.astype(np.float32)[:, None]
