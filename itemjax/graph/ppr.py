"""Personalized PageRank (PPR) hard-negative tables, on the device (JAX), the host (scipy.sparse), or approximately
by forward push (native C++).

Graph: the training bipartite graph with ``n_nodes = n_users + n_items`` nodes (users first),
adjacency ``A = [[0, R], [R^T, 0]]`` where ``R`` is the binarised ``[n_users, n_items]`` training
matrix, and random-walk matrix ``W = D^-1 A`` (rows of isolated nodes are zero, so a walker
that reaches one is absorbed and its mass leaves). The PPR vector of user ``u`` solves::

    pi_u = alpha * e_u + (1 - alpha) * W^T pi_u  =  alpha * (I - (1 - alpha) W^T)^-1 e_u.

Power iteration from ``pi^(0) = alpha * e_u``: ``pi^(t) = alpha e_u + (1 - alpha) W^T pi^(t-1)``.
Its increments are ``delta^(t) = pi^(t) - pi^(t-1) = (1 - alpha) W^T delta^(t-1)`` and, the
graph being bipartite, ``delta^(t)`` lives on the items for odd ``t`` and on the users for even
``t``. So each iteration is one sparse matmul with one half of ``A`` (``R^T`` or ``R``, scaled)
on a dense ``[n_side, n_columns]`` float32 iterate (one column per user), and only the item part of ``pi`` is accumulated. A user
stops at ``n_iter`` iterations or once ``max |delta^(t)| < tol`` (the max-abs change of its
``pi``). The stopping rule is per user (a converged column leaves the iterate, or on the device
takes the next user), so a user's scores do not depend on which block it is computed in.

Hard negatives of user ``u``: the items ranked ``lo .. hi-1`` (0-based) by ``pi_u`` among its
*candidates*, the items with ``pi_u > 0`` (reachable from ``u``) that are not in ``u``'s
training row. Ranked by decreasing score, ties by increasing item id; ties across the window's
edges are cut arbitrarily.

Three backends compute the same iteration (``backend=`` of :func:`ppr_scores` and
:func:`hard_negative_table`, ``--ppr-backend`` of a run), a fourth (``"push"``) approximates ``pi_u``
by another algorithm:

* ``"scipy"``: on the host, one core; a user's column leaves the iterate when it stops.
* ``"device"``: jitted JAX on the default device (:func:`_device_ranking`, one compilation per
  block shape: the last block is padded with user ``-1``, which is never computed). A block's
  users stream through ``slots`` columns of one static-shape iterate (:func:`device_slots`: 32 on
  CPU, a cache-sized iterate; up to 1024 on an accelerator), all columns in
  lockstep inside one ``lax.while_loop``: each round is one ``items <- users`` and one
  ``users <- items`` product with the CSR kernel of :func:`itemjax.graph.propagation.csr_matmul`.
  A column whose user stopped (same per-user rule: its ``max |delta|`` checked before each
  product, plus the ``n_iter`` cap) hands its ``pi`` to the block's output and takes the next
  user of the block, whose restart vector ``alpha e_u`` enters at the next ``items <- users``
  product; so no column waits for the slowest user of a batch (at most one idle half-step per
  user, plus the block's drain). Then the training items (one scatter over the training
  entries) are set to ``-1`` and ``lax.top_k`` ranks the block's ``hi`` best by decreasing
  score, ties by lower item id first; slots whose score is ``<= 0`` become ``PAD``, and the host
  keeps ranks ``lo..hi-1``.

  Agreement with ``"scipy"`` (tests/test_ppr.py): both run the same float32 operations on the
  same CSR entry order, so scores agree to float32 rounding, ``|device - scipy| <= 1e-5 * pi +
  1e-9`` (on CPU they are bitwise equal on the test graphs); a user whose ``max |delta|`` lands
  within that rounding of ``tol`` could stop one iteration apart, which moves its scores by about
  ``tol``. Tables are equal except that candidates whose scores tie within that tolerance may
  swap, or be exchanged across the window's edges.

  Cost: the same ``2 * nnz(R)`` multiply-adds per user and iteration as scipy (Gowalla's users
  stop after 30-42 iterations, median 32; the streaming adds about 4%). On CPU, XLA runs the CSR
  kernel on one core, as scipy does; it is faster per column (Gowalla, same users, one process:
  about 10 ms vs 19 ms CPU per user), no parallelism was observed. Device memory per block of
  ``b`` users and ``s`` slots is about ``4 bytes * (2 b n_items + s (4 n_items + 3 n_users))``:
  the block's scores (and the masked copy ``top_k`` reads) plus the iterate; 0.4 GB for
  ``b = 1024``, ``s = 32`` on Gowalla (29,858 users, 40,981 items), two blocks in flight (the
  whole Gowalla table with 64 slots peaked at 0.95 GiB RSS, data included).
* ``"native"``: ``"device"``'s iteration with its two products per round on itemjax's native CSR
  kernel (:mod:`itemjax.native`, rows split over threads; ``csr_matmul(..., native=True)``), on
  the same CSR entry order, so the scores agree with the other two to float32 rounding. Where
  the kernel is not built (or JAX does not compute on the CPU) it logs one line and runs
  ``"device"``.
* ``"push"``: approximate PPR by forward push (Andersen, Chung & Lang 2006, the non-lazy variant of
  PPRGo), per user, in itemjax's native C++ library (:mod:`itemjax.native.ppr_push`; users spread
  over threads, float64). On the bipartite graph above (``deg`` = node degree)::

      p = 0, r = e_u;  while some node v has r(v) > eps * deg(v):
          p(v) += alpha r(v);  r(w) += (1 - alpha) r(v) / deg(v) for each neighbour w;  r(v) = 0

  (an isolated node absorbs its ``(1 - alpha) r(v)``, as ``W``'s zero rows do). Since ``pi_u = p +
  sum_v r(v) pi_v`` and ``deg(v) pi_v(w) = deg(w) pi_w(v)`` (``A`` symmetric), at the end
  ``0 <= pi_u(w) - p(w) <= eps * deg(w)`` for every node ``w``: ``p`` underestimates, and popular
  items by more. Each push removes at least ``alpha * eps * deg(v)`` of the residual mass 1, so a
  user costs at most ``1 / (alpha * eps)`` edge visits whatever the graph's size (power iteration:
  ``2 nnz(R)`` per iteration). Candidates are the items the push touched (``p > 0`` or ``r > 0``)
  outside the training row, ranked by decreasing estimate (ties by item id, window as above)::

      q(w) = p(w) + alpha r(w) + f (R_users + (1 - alpha) R_items) deg(w) / nnz(R),   f = (1 - alpha) / (2 - alpha)

  the residual's own stop plus the rest of the residual mass left on each side (``R_users``,
  ``R_items``) spread by the walk's stationary distribution on the items (``f``: the share of a walk
  from a user that ends on an item, the graph being bipartite); ``q -> pi_u`` as ``eps -> 0``.
  ``p`` alone would rank popular items too low. ``n_iter`` and ``tol`` do not apply, ``eps``
  (``--ppr-eps``) does. The table differs from the exact one where the estimate's error reorders
  candidates (overlap with the exact windows measured in docs/design.md). Where the library is not
  built it logs one line and runs ``"device"`` (exact scores).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from itemjax.config import PPR_BACKENDS, PPR_PUSH_EPS
from itemjax.errors import ConfigError
from itemjax.graph.propagation import csr_matmul, native_available
from itemjax.native import notice_fallback, ppr_push
from itemjax.runio import atomic_file

#: Padding value in hard-negative tables: "no candidate in this slot".
PAD = -1
#: Users per dense power-iteration chunk (cache-sized iterate; see :func:`_item_ppr_block`).
ITERATE_COLUMNS = 64
#: Columns of the device iterate on CPU (:func:`device_slots`). Gowalla, 512 users, same process,
#: CPU ms per user: 16 columns 12.6-14.0, 32 columns 9.9-10.7, 64 columns 12.6-15.0 (scipy path
#: 19.3-19.5), at load 8.
DEVICE_SLOTS_CPU = 32


@dataclasses.dataclass(frozen=True)
class _WalkOperators:
    """The two halves of ``(1 - alpha) W^T`` on the bipartite graph.

    ``items_from_users = (1 - alpha) R^T diag(1/deg_users)``  (csr ``[n_items, n_users]``)
    ``users_from_items = (1 - alpha) R diag(1/deg_items)``    (csr ``[n_users, n_items]``)
    """

    train: sp.csr_matrix  # binarised R, float32
    items_from_users: sp.csr_matrix
    users_from_items: sp.csr_matrix
    user_scale: np.ndarray  # [n_users] (1 - alpha) / deg_users, 0 for isolated users


def _binary_csr(train) -> sp.csr_matrix:
    """Canonical binarised float32 CSR copy of ``train`` (sorted indices, no explicit zeros)."""
    if not (sp.issparse(train) or isinstance(train, np.ndarray)) or np.ndim(train) != 2:
        raise ConfigError("train must be a 2-D scipy.sparse matrix [n_users, n_items]; build it with scipy.sparse.csr_matrix")
    matrix = sp.csr_matrix(train, copy=True)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.data = np.ones_like(matrix.data, dtype=np.float32)
    matrix = matrix.astype(np.float32)
    matrix.sort_indices()
    return matrix


def _inverse(degrees: np.ndarray) -> np.ndarray:
    return np.divide(1.0, degrees, out=np.zeros(degrees.shape, np.float64), where=degrees > 0)


def _walk_operators(train: sp.csr_matrix, alpha: float) -> _WalkOperators:
    user_scale = (1.0 - alpha) * _inverse(np.asarray(train.sum(axis=1)).ravel())
    item_scale = (1.0 - alpha) * _inverse(np.asarray(train.sum(axis=0)).ravel())
    items_from_users = sp.csr_matrix(train.T.multiply(user_scale[None, :]), dtype=np.float32)
    users_from_items = sp.csr_matrix(train.multiply(item_scale[None, :]), dtype=np.float32)
    return _WalkOperators(train, items_from_users, users_from_items, user_scale.astype(np.float32))


def _check_ppr_params(alpha, n_iter, tol, eps=PPR_PUSH_EPS) -> None:
    if not 0.0 < alpha <= 1.0:
        raise ConfigError(f"PPR alpha={alpha} is outside (0, 1]; use a restart probability such as 0.15")
    if int(n_iter) != n_iter or n_iter < 1:
        raise ConfigError(f"PPR n_iter={n_iter} must be an integer >= 1")
    if not tol >= 0.0:
        raise ConfigError(f"PPR tol={tol} must be >= 0")
    _check_eps(eps)


def _check_eps(eps) -> None:
    try:
        positive = float(eps) > 0.0
    except (TypeError, ValueError):
        positive = False
    if not positive:
        raise ConfigError(f"PPR eps={eps!r} must be a number > 0 (the forward push's residual threshold); pass e.g. "
                          f"eps={PPR_PUSH_EPS:g} (--ppr-eps {PPR_PUSH_EPS:g}), smaller for a table closer to the exact one")


def _item_ppr_block(ops: _WalkOperators, users: np.ndarray, alpha: float, n_iter: int, tol: float) -> np.ndarray:
    """Item part of ``pi_u`` for a block of users: float32 ``[n_items, len(users)]``.

    The iteration runs on column chunks of :data:`ITERATE_COLUMNS` users (a dense iterate of
    ``n_side x 64`` floats stays in cache: about 1.8x faster per user than 1024 columns on
    Gowalla); each column is independent, so chunking does not change the result.
    """
    n_items = ops.train.shape[1]
    pi_items = np.empty((n_items, len(users)), np.float32)
    for start in range(0, len(users), ITERATE_COLUMNS):
        chunk = slice(start, min(start + ITERATE_COLUMNS, len(users)))
        pi_items[:, chunk] = _item_ppr_columns(ops, users[chunk], alpha, n_iter, tol)
    return pi_items


def _item_ppr_columns(ops: _WalkOperators, users: np.ndarray, alpha: float, n_iter: int, tol: float) -> np.ndarray:
    """:func:`_item_ppr_block` for one chunk of columns."""
    # iteration 1: delta^(1) = (1 - alpha) W^T (alpha e_u), on the items
    first = ops.train[users].multiply((alpha * ops.user_scale[users])[:, None])
    delta = np.ascontiguousarray(sp.csr_matrix(first, dtype=np.float32).T.toarray())  # [n_items, b]
    pi_items = delta.copy()
    active = np.arange(len(users))  # columns still iterating
    on_items = True
    for _ in range(1, n_iter):
        keep = delta.max(axis=0, initial=0.0) >= tol  # increments are >= 0: max = max-abs
        if not keep.all():
            active, delta = active[keep], np.ascontiguousarray(delta[:, keep])
            if active.size == 0:
                break
        if on_items:
            delta = ops.users_from_items @ delta
        else:
            delta = ops.items_from_users @ delta
            if active.size == len(users):
                pi_items += delta
            else:
                pi_items[:, active] += delta
        on_items = not on_items
    return pi_items


# ----------------------------------------------------------------------------------------------
# device backend
# ----------------------------------------------------------------------------------------------

#: Blocks dispatched to the device before the host waits for the oldest one (JAX dispatches
#: asynchronously): the host's table writes overlap the device's work.
BLOCKS_IN_FLIGHT = 2


def _check_backend(backend: str) -> str:
    if backend not in PPR_BACKENDS:
        raise ConfigError(f"unknown PPR backend {backend!r}; use one of {', '.join(map(repr, PPR_BACKENDS))}")
    return backend


def _use_native(backend: str) -> bool:
    """Whether ``backend`` (checked) runs on the native kernel: ``"native"`` where it is available; a
    ``"native"`` that is not (one line on stderr, once) runs ``"device"``."""
    if backend != "native":
        return False
    if native_available():
        return True
    notice_fallback("--ppr-backend native", "the device backend")
    return False


def _use_push(backend: str) -> bool:
    """Whether ``backend`` (checked) runs the forward push: ``"push"`` where the library is available; a
    ``"push"`` that is not (one line on stderr, once) runs ``"device"``."""
    if backend != "push":
        return False
    if ppr_push.available():
        return True
    ppr_push.notice_fallback("--ppr-backend push", "the device backend")
    return False


def effective_backend(backend: str) -> str:
    """The backend that computes a ``backend`` table here: ``"device"`` for a ``"push"`` whose library is not
    built (after the one-line notice, :func:`_use_push`), else ``backend`` (``"native"`` stays: its fallback
    computes the same values). The on-disk cache keys a table by this, so that a fallback's exact table is
    not later read back as a push table."""
    _check_backend(backend)
    return "device" if backend == "push" and not _use_push(backend) else backend


def _bipartite_csr(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """CSR of ``A = [[0, R], [R^T, 0]]`` for the forward push: ``(indptr int64 [n_users + n_items + 1],
    indices int32 [2 nnz])``, users first (item ``i`` is node ``n_users + i``), each row's neighbours sorted
    (``matrix`` is canonical, :func:`_binary_csr`)."""
    n_users = matrix.shape[0]
    items = sp.csr_matrix(matrix.T)
    items.sort_indices()
    indptr = np.concatenate([matrix.indptr.astype(np.int64), matrix.nnz + items.indptr[1:].astype(np.int64)])
    indices = np.concatenate([matrix.indices.astype(np.int32) + np.int32(n_users), items.indices.astype(np.int32)])
    return indptr, indices


def _push_table(matrix: sp.csr_matrix, users: np.ndarray, lo: int, hi: int, alpha: float, eps: float,
                block_size: int, progress: bool) -> np.ndarray:
    """int32 ``[len(users), hi - lo]``: the push windows of ``users`` (module docstring), ``block_size`` users
    per call into the library (each call spreads its users over the threads; the bar advances per call)."""
    n_users, n_items = matrix.shape
    indptr, indices = _bipartite_csr(matrix)
    table = np.full((len(users), hi - lo), PAD, np.int32)
    with tqdm(total=len(users), desc="PPR hard negatives (push)", unit="user", disable=not progress) as bar:
        for start in range(0, len(users), block_size):
            chunk = users[start:start + block_size]
            table[start:start + len(chunk)] = ppr_push.table(indptr, indices, n_users, n_items, chunk, alpha=alpha,
                                                             eps=eps, lo=lo, hi=hi)
            bar.update(len(chunk))
    return table


def device_slots(block: int) -> int:
    """Columns of the device iterate (users iterated at once): :data:`DEVICE_SLOTS_CPU` on CPU (the
    iterate stays in cache), up to 1024 on an accelerator (not measured: no accelerator here)."""
    return min(DEVICE_SLOTS_CPU if jax.default_backend() == "cpu" else 1024, block)


def _device_operators(ops: _WalkOperators) -> tuple:
    """The two halves of :class:`_WalkOperators` as device CSR arrays and the training entries'
    rows: ``(users_from_items, items_from_users, train_rows)``, each half ``(indptr int32 [rows + 1],
    indices int32 [nnz], data float32 [nnz])`` in scipy's own entry order (so the device products
    sum in the same order); ``train_rows`` int32 ``[nnz]`` the user of each entry of
    ``users_from_items`` (whose ``indices`` are the items: together, the training matrix in COO)."""

    def arrays(matrix: sp.csr_matrix):
        return (jnp.asarray(matrix.indptr, jnp.int32), jnp.asarray(matrix.indices, jnp.int32),
                jnp.asarray(matrix.data, jnp.float32))

    users_from_items = ops.users_from_items
    rows = np.repeat(np.arange(users_from_items.shape[0], dtype=np.int32), np.diff(users_from_items.indptr))
    return arrays(users_from_items), arrays(ops.items_from_users), jnp.asarray(rows)


def _half_step(operator: tuple, x: jax.Array, native: bool = False) -> jax.Array:
    """``M @ x`` for one half ``M`` (CSR arrays) of the walk: ``[n_cols, c] -> [n_rows, c]``; ``native``:
    on the native kernel."""
    indptr, indices, data = operator
    return csr_matmul((indptr.shape[0] - 1, x.shape[0]), indptr, indices, data, x, native=native)


def _device_block_scores(operators: tuple, users: jax.Array, alpha, tol, n_iter: int, slots: int,
                         native: bool = False) -> jax.Array:
    """float32 ``[b, n_items]``: the item part of ``pi_u`` of a block's users, traced.

    ``users`` int32 ``[b]``, valid ids first, then ``-1`` (padding, never computed). The block's
    users stream through ``slots`` columns of one iterate, so that no column waits for the slowest
    user of a batch. One ``lax.while_loop`` round, all columns in lockstep (``t`` = the index of a
    column's latest item-side increment)::

        done   = ~active | (t + 2 > n_iter)               # stopped, or no item step left
        out[user of each done column] = pi
        x      = alpha onehot(next user) on done columns (delta^(0); 0 once the queue is empty),
                 delta_users * active on the others
        delta_items = items_from_users @ x                 # t = 1 for a new user, else t + 2
        pi     = delta_items on new columns, pi + delta_items on the others
        active &= max_i delta_items >= tol
        delta_users = users_from_items @ (delta_items * active)
        active &= max_u delta_users >= tol

    which is the scipy path's iteration and per-user stopping rule (a stopped user is checked
    out at the next round; at most one half-step of a column is idle per user). The loop ends once
    every valid user is checked out. ``native``: both products on the native kernel.
    """
    users_from_items, items_from_users, _ = operators
    n_users = users_from_items[0].shape[0] - 1
    n_items = items_from_users[0].shape[0] - 1
    b = users.shape[0]
    n_valid = jnp.sum(users >= 0, dtype=jnp.int32)
    queue = jnp.concatenate([users, jnp.full((slots,), -1, users.dtype)])

    def more(carry):
        position, _, _, _, _, taken, _ = carry
        return jnp.any(position >= 0) | (taken < n_valid)

    def round_trip(carry):
        position, t, active, delta_users, pi, taken, out = carry
        done = ~active | (t + 2 > n_iter)
        finished = jnp.where(done & (position >= 0), position, b)  # b: out of range, dropped
        out = out.at[finished].set(pi.T, mode="drop")
        # refill: the k-th done column takes the k-th next user of the queue
        candidate = jnp.minimum(taken + jnp.cumsum(done, dtype=jnp.int32) - 1, b + slots - 1)
        new_user = jnp.where(done, queue[candidate], -1)
        position = jnp.where(done, jnp.where(new_user >= 0, candidate, -1), position)
        taken = taken + jnp.sum(done, dtype=jnp.int32)
        restart = alpha * jax.nn.one_hot(new_user, n_users, dtype=jnp.float32, axis=0)  # [n_users, slots]
        delta = _half_step(items_from_users, jnp.where(done, restart, jnp.where(active, delta_users, 0.0)), native)
        pi = jnp.where(done, delta, pi + delta)
        t = jnp.where(done, 1, t + 2)
        active = jnp.where(done, position >= 0, active) & (jnp.max(delta, axis=0) >= tol)
        delta_users = _half_step(users_from_items, jnp.where(active, delta, 0.0), native)
        active = active & (jnp.max(delta_users, axis=0) >= tol)
        return position, t, active, delta_users, pi, taken, out

    start = (jnp.full((slots,), -1, jnp.int32), jnp.zeros((slots,), jnp.int32), jnp.zeros((slots,), bool),
             jnp.zeros((n_users, slots), jnp.float32), jnp.zeros((n_items, slots), jnp.float32), jnp.int32(0),
             jnp.zeros((b, n_items), jnp.float32))
    return jax.lax.while_loop(more, round_trip, start)[-1]


@functools.partial(jax.jit, static_argnames=("n_iter", "slots", "native"))
def _device_scores(operators, users, alpha, tol, *, n_iter: int, slots: int, native: bool = False) -> jax.Array:
    """float32 ``[b, n_items]``: :func:`_device_block_scores`."""
    return _device_block_scores(operators, users, alpha, tol, n_iter, slots, native)


@functools.partial(jax.jit, static_argnames=("n_iter", "slots", "top", "native"))
def _device_ranking(operators, users, alpha, tol, *, n_iter: int, slots: int, top: int,
                    native: bool = False) -> jax.Array:
    """int32 ``[b, top]``: each user's ``top`` best candidates, ``PAD`` past its last one; ``users``
    are a block's distinct users (then ``-1`` padding).

    Scores with training items set to ``-1`` (below every candidate; one scatter over the
    training entries ``(train_rows, indices)`` of ``users_from_items``, each sent to its user's row
    of the block or dropped), ``lax.top_k`` (decreasing score, ties by lower item id first),
    ``PAD`` where the score is ``<= 0`` (a training item or an unreachable one). The caller cuts
    the window ``lo..hi`` out on the host: slicing ``top_k``'s outputs from ``lo > 0`` inside the
    jit makes XLA's CPU compiler fall back from its top-k kernel to a full sort of every row
    (about 40x slower on Gowalla).
    """
    (_, item_ids, _), _, train_rows = operators
    scores = _device_block_scores(operators, users, alpha, tol, n_iter, slots, native)
    b = scores.shape[0]
    n_users = operators[0][0].shape[0] - 1
    row_of_user = jnp.full((n_users + 1,), b, jnp.int32).at[jnp.where(users >= 0, users, n_users)].set(
        jnp.arange(b, dtype=jnp.int32))[:n_users]  # b: not in the block
    scores = scores.at[row_of_user[train_rows], item_ids].set(-1.0, mode="drop")
    values, items = jax.lax.top_k(scores, top)
    return jnp.where(values > 0, items, PAD).astype(jnp.int32)


def _device_args(ops: _WalkOperators, alpha: float, tol: float) -> tuple:
    return _device_operators(ops), jnp.float32(alpha), jnp.float32(tol)


def _padded_users(users: np.ndarray, size: int) -> jax.Array:
    """int32 ``[size]``: ``users`` followed by ``-1`` (padding, never computed)."""
    padded = np.full(size, -1, np.int32)
    padded[: len(users)] = users
    return jnp.asarray(padded)


def _device_table(ops: _WalkOperators, lo: int, hi: int, alpha: float, n_iter: int, tol: float,
                  block_size: int, progress: bool, native: bool = False) -> np.ndarray:
    """:func:`hard_negative_table` on the device: blocks of ``block_size`` users through
    :func:`device_slots` columns (the last block padded with ``-1``, so one compilation serves
    every block), :data:`BLOCKS_IN_FLIGHT` dispatched ahead of the host; ``native``: the products on
    the native kernel."""
    n_users, n_items = ops.train.shape
    table = np.full((n_users, hi - lo), PAD, np.int32)
    top = min(hi, n_items)  # ranks past the catalogue stay PAD
    if lo >= top or n_users == 0:
        return table
    block = max(1, min(int(block_size), n_users))
    slots = device_slots(block)
    operators, alpha32, tol32 = _device_args(ops, alpha, tol)
    in_flight = []

    def collect(bar):
        start, ranking = in_flight.pop(0)
        stop = min(start + block, n_users)
        table[start:stop, : top - lo] = np.asarray(ranking)[: stop - start, lo:]
        bar.update(stop - start)

    try:
        with tqdm(total=n_users, desc=f"PPR hard negatives ({'native' if native else 'device'})", unit="user",
                  disable=not progress) as bar:
            for start in range(0, n_users, block):
                users = _padded_users(np.arange(start, min(start + block, n_users)), block)
                in_flight.append((start, _device_ranking(operators, users, alpha32, tol32, n_iter=int(n_iter),
                                                         slots=slots, top=top, native=native)))
                if len(in_flight) >= BLOCKS_IN_FLIGHT:
                    collect(bar)
            while in_flight:
                collect(bar)
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        need = 4 * (2 * block * n_items + slots * (4 * n_items + 3 * n_users)) / 2**30
        raise ConfigError(
            f"the device ran out of memory computing the PPR table in blocks of {block} users (about "
            f"{need:.2f} GiB each, {BLOCKS_IN_FLIGHT} in flight); pass a smaller block_size to "
            "hard_negative_table, or compute it on the host with --ppr-backend scipy") from err
    return table


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def ppr_scores(train: sp.csr_matrix, users: np.ndarray, *, alpha: float = 0.15, n_iter: int = 50,
               tol: float = 1e-6, backend: str = "device", eps: float = PPR_PUSH_EPS) -> np.ndarray:
    """Item part of the PPR vectors of a block of users.

    ``pi_u = alpha e_u + (1 - alpha) W^T pi_u`` on the bipartite graph (module docstring), by
    power iteration from ``alpha e_u`` with one sparse matmul per iteration on a dense
    ``[n_side, len(users)]`` float32 iterate, stopping each user at ``n_iter`` iterations or
    when the max-abs change of its ``pi_u`` drops below ``tol``.

    Args:
      train: ``[n_users, n_items]`` sparse training interactions (nonzero = edge).
      users: ``[b]`` int user ids; memory is ``O(b * n_nodes)`` (one block: the device
        backend compiles once per ``b``).
      alpha: restart probability in ``(0, 1]``.
      backend: ``"device"`` (JAX), ``"native"`` (JAX with the native kernel) or ``"scipy"`` (host);
        equal to float32 rounding (module docstring). ``"push"``: the forward push's estimate ``p``
        with ``0 <= pi_u - p <= eps * deg`` (computed in float64, returned rounded to float32; the
        device backend's where the library is not built).
      eps: the push's residual threshold, ``> 0`` (``"push"`` only).
    Returns:
      float32 ``[b, n_items]``: ``pi_u[n_users + i]`` for every item ``i`` (0 for items not
      reachable from ``u`` within the iterations run, or not reached by the push; all 0 for a user
      without edges).
    """
    _check_ppr_params(alpha, n_iter, tol, eps)
    backend = effective_backend(backend)
    matrix = _binary_csr(train)
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    if users.size and (users.min() < 0 or users.max() >= matrix.shape[0]):
        raise ConfigError(f"user ids must lie in [0, {matrix.shape[0]}); got {users.min()}..{users.max()}")
    if backend == "push":
        indptr, indices = _bipartite_csr(matrix)
        scores = ppr_push.scores(indptr, indices, users, alpha=alpha, eps=eps)
        return np.ascontiguousarray(scores[:, matrix.shape[0]:], dtype=np.float32)
    ops = _walk_operators(matrix, alpha)
    if backend in ("device", "native"):
        operators, alpha32, tol32 = _device_args(ops, alpha, tol)
        scores = _device_scores(operators, jnp.asarray(users, jnp.int32), alpha32, tol32, n_iter=int(n_iter),
                                slots=device_slots(max(1, len(users))), native=_use_native(backend))
        return np.array(scores, dtype=np.float32)
    return np.ascontiguousarray(_item_ppr_block(ops, users, alpha, int(n_iter), tol).T)


def _check_window(window) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in window)
    except (TypeError, ValueError):
        raise ConfigError(f"window={window!r} must be a pair (lo, hi) of ints with 0 <= lo < hi") from None
    if not 0 <= lo < hi:
        raise ConfigError(f"window=({lo}, {hi}) must satisfy 0 <= lo < hi, e.g. (10, 100)")
    return lo, hi


def _candidate_window(scores: np.ndarray, train_rows: sp.csr_matrix, lo: int, hi: int) -> np.ndarray:
    """int32 ``[b, hi - lo]``: items ranked ``lo..hi-1`` among candidates, ``PAD`` where none.

    ``scores`` is ``[b, n_items]`` (modified in place: training items are set to -1).
    """
    n_rows, n_items = scores.shape
    rows = np.repeat(np.arange(n_rows), np.diff(train_rows.indptr))
    scores[rows, train_rows.indices] = -1.0  # not candidates
    table = np.full((n_rows, hi - lo), PAD, np.int32)
    top = min(hi, n_items)
    if lo >= top or n_rows == 0:
        return table
    best = np.argpartition(-scores, top - 1, axis=1)[:, :top] if top < n_items else np.tile(np.arange(n_items), (n_rows, 1))
    best_scores = np.take_along_axis(scores, best, axis=1)
    order = np.lexsort((best, -best_scores), axis=-1)  # by score desc, then item id asc
    ranked = np.take_along_axis(best, order, axis=1)[:, lo:top]
    ranked_scores = np.take_along_axis(best_scores, order, axis=1)[:, lo:top]
    table[:, : top - lo] = np.where(ranked_scores > 0, ranked, PAD)
    return table


def hard_negative_table(train: sp.csr_matrix, *, window=(10, 100), alpha: float = 0.15, n_iter: int = 50,
                        tol: float = 1e-6, backend: str = "device", eps: float = PPR_PUSH_EPS, block_size: int = 1024,
                        progress: bool = True) -> np.ndarray:
    """PPR hard-negative candidates of every user.

    Per user ``u``: rank its candidates (items with ``pi_u > 0`` outside its training row) by
    decreasing ``pi_u`` (:func:`ppr_scores`; ties by item id) and keep ranks ``lo .. hi-1``.

    Args:
      train: ``[n_users, n_items]`` sparse training interactions.
      window: ``(lo, hi)`` with ``0 <= lo < hi``: skip the ``lo`` closest candidates (often the
        user's held-out positives), keep the next ``hi - lo``.
      alpha, n_iter, tol: PPR parameters (:func:`ppr_scores`; ``n_iter`` and ``tol`` do not apply to ``"push"``).
      backend: ``"device"`` (JAX, jitted once per block shape), ``"native"`` (the same with the native
        kernel's products, several threads) or ``"scipy"`` (host, one core).
        The tables agree up to swaps of candidates whose scores tie within float32 rounding
        (module docstring). ``"push"``: approximate, ranked by the forward push's estimate ``q`` (module
        docstring; native C++, users over threads; ``"device"`` where the library is not built).
      eps: the push's residual threshold, ``> 0``: ``0 <= pi_u(i) - p(i) <= eps * deg(i)``, and a user
        costs at most ``1 / (alpha * eps)`` edge visits (``"push"`` only; default
        :data:`itemjax.config.PPR_PUSH_EPS`, chosen in docs/design.md).
      block_size: users per block. ``"scipy"``: peak memory is about ``16 bytes * block_size *
        n_items`` (scores and their ranking) plus the power iteration's ``3 * 4 bytes * 64 *
        n_nodes``. ``"device"``: about ``4 bytes * (2 block_size n_items + s (4 n_items + 3
        n_users))`` per block with ``s`` = :func:`device_slots` columns, two blocks in flight
        (0.4 GB per block of 1024 on Gowalla); a larger block spends less of its time draining
        (its last users leave columns idle). ``"push"``: users per call into the library (memory: the
        graph's CSR and, per thread, ``22 bytes * n_nodes``). Results do not depend on it.
      progress: show a tqdm bar over users.
    Returns:
      int32 ``[n_users, hi - lo]``. A user with ``c < hi`` candidates has ``max(0, c - lo)``
      items followed by ``-1`` padding (:data:`PAD`); a user without edges is all ``-1``.
    """
    lo, hi = _check_window(window)
    _check_ppr_params(alpha, n_iter, tol, eps)
    if int(block_size) != block_size or block_size < 1:
        raise ConfigError(f"block_size={block_size} must be an integer >= 1")
    backend = effective_backend(backend)
    matrix = _binary_csr(train)
    n_users = matrix.shape[0]
    if backend == "push":
        return _push_table(matrix, np.arange(n_users), lo, hi, alpha, float(eps), int(block_size), progress)
    ops = _walk_operators(matrix, alpha)
    if backend in ("device", "native"):
        return _device_table(ops, lo, hi, alpha, int(n_iter), tol, int(block_size), progress, _use_native(backend))
    table = np.full((n_users, hi - lo), PAD, np.int32)
    with tqdm(total=n_users, desc="PPR hard negatives", unit="user", disable=not progress) as bar:
        for start in range(0, n_users, int(block_size)):
            users = np.arange(start, min(start + int(block_size), n_users))
            scores = np.ascontiguousarray(_item_ppr_block(ops, users, alpha, int(n_iter), tol).T)
            table[users] = _candidate_window(scores, matrix[users], lo, hi)
            bar.update(len(users))
    return table


def hard_negative_rows(train: sp.csr_matrix, users, *, window=(10, 100), alpha: float = 0.15, n_iter: int = 50,
                       tol: float = 1e-6, backend: str = "device", eps: float = PPR_PUSH_EPS,
                       block_size: int = 1024) -> np.ndarray:
    """Rows of :func:`hard_negative_table` for some users only: int32 ``[len(users), hi - lo]``, row ``k``
    = the table's row ``users[k]`` (``"push"``: equal; the power-iteration backends: up to the table's swaps
    of tied candidates, computed with :func:`ppr_scores` and ranked on the host).

    For comparisons on a sample of a large dataset's users (benchmarks/ppr_time.py ``--users``); same
    parameters as :func:`hard_negative_table`, ``block_size`` users at a time (memory ``O(block_size *
    n_nodes)`` for the power-iteration backends).
    """
    lo, hi = _check_window(window)
    _check_ppr_params(alpha, n_iter, tol, eps)
    backend = effective_backend(backend)
    matrix = _binary_csr(train)
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    if users.size and (users.min() < 0 or users.max() >= matrix.shape[0]):
        raise ConfigError(f"user ids must lie in [0, {matrix.shape[0]}); got {users.min()}..{users.max()}")
    if backend == "push":
        return _push_table(matrix, users, lo, hi, alpha, float(eps), int(block_size), False)
    rows = np.full((users.size, hi - lo), PAD, np.int32)
    for start in range(0, users.size, int(block_size)):
        chunk = users[start:start + int(block_size)]
        scores = ppr_scores(matrix, chunk, alpha=alpha, n_iter=n_iter, tol=tol, backend=backend)
        rows[start:start + chunk.size] = _candidate_window(scores, matrix[chunk], lo, hi)
    return rows


# ----------------------------------------------------------------------------------------------
# on-disk cache
# ----------------------------------------------------------------------------------------------

#: Parameters of :func:`hard_negative_table` that change its result (and so the cache key; ``eps`` only for
#: ``backend="push"``).
_RESULT_PARAMS = {"window": (10, 100), "alpha": 0.15, "n_iter": 50, "tol": 1e-6, "backend": "device",
                  "eps": PPR_PUSH_EPS}
#: Parameters that do not change the result.
_RUN_PARAMS = {"block_size": 1024, "progress": True}


def _matrix_digest(matrix: sp.csr_matrix) -> str:
    """sha256 of the binarised training matrix's shape and sparsity pattern."""
    digest = hashlib.sha256()
    digest.update(np.asarray(matrix.shape, np.int64).tobytes())
    digest.update(np.asarray(matrix.indptr, np.int64).tobytes())
    digest.update(np.asarray(matrix.indices, np.int64).tobytes())
    return digest.hexdigest()


def table_cache_path(train, *, cache_dir, key: str, **params) -> Path:
    """Path of the cached table for ``(key, train content, result parameters)``."""
    unknown = set(params) - set(_RESULT_PARAMS) - set(_RUN_PARAMS)
    if unknown:
        raise ConfigError(f"unknown hard-negative parameter(s) {sorted(unknown)}; use {sorted(_RESULT_PARAMS)}")
    resolved = {**_RESULT_PARAMS, **{k: v for k, v in params.items() if k in _RESULT_PARAMS}}
    lo, hi = _check_window(resolved["window"])
    canonical = {
        "key": str(key),
        "train": _matrix_digest(_binary_csr(train)),
        "window": [lo, hi],
        "alpha": float(resolved["alpha"]),
        "n_iter": int(resolved["n_iter"]),
        "tol": float(resolved["tol"]),
    }
    # the backend can swap tied candidates; "scipy" leaves it out, so that tables cached before the
    # device backend existed (all scipy) keep their names
    if _check_backend(resolved["backend"]) != "scipy":
        canonical["backend"] = resolved["backend"]
    # eps changes the push's table only: the other backends' names stay as they were before it existed
    _check_eps(resolved["eps"])
    if resolved["backend"] == "push":
        canonical["eps"] = float(resolved["eps"])
        # the push's ranking changed on 2026-12-07 (by q, was p): tables cached before then are not reused
        canonical["ranking"] = "q"
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:24]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(key))[:48]
    return Path(cache_dir) / f"hard_negatives-{readable}-{digest}.npy"


def cached_hard_negative_table(train, *, cache_dir, key: str, **params) -> np.ndarray:
    """:func:`hard_negative_table` with an on-disk cache.

    The file name is a hash of ``key`` (e.g. the dataset and split name), the content of
    ``train`` (binarised sparsity pattern) and the result parameters (``window``, ``alpha``,
    ``n_iter``, ``tol``, ``backend``, and ``eps`` for ``"push"``, defaults filled in); ``block_size`` and
    ``progress`` are passed through but do not enter the hash. The backend is the one that computes here
    (:func:`effective_backend`: a ``"push"`` without its library is cached as the ``"device"`` table it
    falls back to). A present, readable file of the expected shape is reused;
    otherwise the table is computed and written atomically (temporary file + ``os.replace``).
    """
    if "backend" in params:
        params = {**params, "backend": effective_backend(params["backend"])}
    path = table_cache_path(train, cache_dir=cache_dir, key=key, **params)
    window = params.get("window", _RESULT_PARAMS["window"])
    expected_shape = (np.shape(train)[0], int(window[1]) - int(window[0]))
    if path.exists():
        try:
            table = np.load(path, allow_pickle=False)
            if table.shape == expected_shape and table.dtype == np.int32:
                return table
        except (OSError, ValueError, EOFError):
            pass  # unreadable or truncated: recompute and overwrite
    table = hard_negative_table(train, **params)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as handle:
        np.save(handle, table, allow_pickle=False)
    return table
