"""List-wise baselines over the same per-user candidate lists as ITEM: NeuralNDCG and sampled softmax.

Same conventions as :mod:`itemjax.objective.ranking_losses` (and rax): ``scores`` ``[..., L]`` with users
on the leading axes, ``labels`` binary relevance (``> 0`` = positive), ``where`` (bool,
``True`` = valid) marks padding, and a masked entry behaves as if it had been dropped from the
list. Users without a valid positive contribute exactly 0 with zero, finite gradients: masked
scores are replaced before any arithmetic and every division or logarithm that could see 0 goes
through the double-``where`` pattern.

**NeuralNDCG** (Pobrotyn & Białobrzeski, 2021, arXiv:2102.07831) relaxes the sort inside NDCG
with NeuralSort (Grover et al., ICLR 2019). For one list with ``n`` valid entries, row ``i``
(the ``i``-th position, ``i = 1..n``) of the relaxed permutation matrix is::

    P^_i = softmax_j( ((n + 1 - 2 i) s_j - (A_s 1)_j) / T ),   (A_s 1)_j = sum_{k valid} |s_j - s_k|

over the valid entries ``j`` (``T`` = temperature). As ``T -> 0`` with distinct scores, row ``i``
tends to the one-hot of the ``i``-th highest score. Sinkhorn scaling (``sinkhorn_iters``
iterations, each a column then a row normalisation, as the reference implementation allRank)
makes ``P^`` approximately doubly stochastic, so that every entry is spread over the positions
with total mass 1. With gains ``g_j = 2^rel_j - 1`` (1 for a positive, 0 for a negative)::

    NeuralNDCG_u@k = [ sum_{i=1..min(k, n)} (P^ g)_i / log2(1 + i) ] / IDCG_u@k,
    IDCG_u@k       = sum_{i=1..min(k, |P_u|)} 1 / log2(1 + i)

``k = None`` is the whole list. Padding takes no position: the rows ``i > n`` and the columns of
masked entries are excluded from the softmax, from Sinkhorn and from the sum (the ``n`` in the
row coefficient counts valid entries only), so the valid block equals the matrix of the list
with its padding dropped. Loss: ``mean_{u : |P_u| > 0} (1 - NeuralNDCG_u)``.

Cost: one ``L x L`` matrix ``K`` per user. Sinkhorn iterates two scaling vectors instead of
the matrix (``diag(r) K diag(c)``: each iteration is ``c = 1 / (K^T r)``, ``r = 1 / (K c)``,
exactly the column-then-row normalisation), so forward and reverse mode (a custom VJP) read
``K`` ``4 sinkhorn_iters`` times and store only vectors besides it.

**Sampled softmax** (InfoNCE over the list; Bengio & Senécal 2008, Jean et al. 2015, Yi et al.
2019 for the logQ correction). For each valid positive ``p`` of user ``u``, with ``N_u`` its
valid negatives (valid entries labelled 0)::

    l_up = -log( e^{s_p/T} / (e^{s_p/T} + sum_{n in N_u} e^{s_n/T - log_q_n}) )
         = softplus( logsumexp_{n in N_u}(s_n/T - log_q_n) - s_p/T )

averaged over the user's valid positives, then over users with at least one (a user without
valid negatives has ``l_up = 0``). The other positives of ``u`` are not in the denominator, and
the positive gets no correction. ``log_q`` (default 0) is the logQ correction; with
``log_q_n = log(N_u Q(n))``, ``Q(n)`` the probability that one draw of the sampler returns
``n``, ``sum_n e^{s_n/T} / (N_u Q(n))`` is an unbiased estimate of the full-catalogue sum
``sum_{i not trained} e^{s_i/T}`` (:func:`itemjax.objective.objectives.negative_log_counts`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from itemjax.errors import ConfigError
from itemjax.reductions import masked_mean
from itemjax.objective.ranking_losses import _REDUCTIONS, _as_float, _check_positive, _reduce_over_users, _valid_mask

Array = jax.Array

def _position_cells(valid: Array) -> Array:
    """``[..., L, L]`` bool: cell ``(i, j)`` is in play iff position ``i`` < the number of valid
    entries and entry ``j`` is valid."""
    n_valid = jnp.sum(valid, axis=-1)
    positions = jnp.arange(valid.shape[-1])
    return (positions < n_valid[..., None])[..., :, None] & valid[..., None, :]


def _neural_sort(scores: Array, valid: Array, temperature) -> Array:
    """NeuralSort matrix ``[..., L, L]`` (module docstring) of lists whose masked scores are finite."""
    n_slots = scores.shape[-1]
    n_valid = jnp.sum(valid, axis=-1).astype(scores.dtype)
    gaps = jnp.abs(scores[..., :, None] - scores[..., None, :])  # [..., j, k]: |s_j - s_k|
    spread = jnp.sum(jnp.where(valid[..., None, :], gaps, 0.0), axis=-1)  # (A_s 1)_j over valid k
    positions = jnp.arange(1, n_slots + 1, dtype=scores.dtype)
    coefficient = n_valid[..., None] + 1.0 - 2.0 * positions  # [..., i]: n + 1 - 2i
    logits = (coefficient[..., :, None] * scores[..., None, :] - spread[..., None, :]) / temperature
    bound = jnp.finfo(scores.dtype).max / 4  # a logit overflowing to inf must not give inf - inf
    logits = jnp.clip(logits, -bound, bound)
    cells = _position_cells(valid)
    row_max = jnp.max(jnp.where(cells, logits, -jnp.inf), axis=-1, keepdims=True)
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    weights = jnp.where(cells, jnp.exp(jnp.where(cells, logits - row_max, 0.0)), 0.0)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    return weights / jnp.where(total > 0, total, 1.0)


def _reciprocal(x: Array) -> Array:
    """``1 / x`` where ``x > 0``, else 0 (double ``where``: no inf, no NaN cotangent)."""
    positive = x > 0
    return jnp.where(positive, 1.0 / jnp.where(positive, x, 1.0), 0.0)


def _scaling_vectors(kernel: Array, iters: int):
    """Sinkhorn as scaling vectors: ``c_t = 1 / (K^T r_{t-1})``, ``r_t = 1 / (K c_t)``, ``r_0 = 1``.

    Returns ``(rows [T+1, ..., M] = r_0..r_T, cols [T, ..., M] = c_1..c_T)``.
    """

    def step(r, _):
        c = _reciprocal(jnp.einsum("...ij,...i->...j", kernel, r))
        r_next = _reciprocal(jnp.einsum("...ij,...j->...i", kernel, c))
        return r_next, (r_next, c)

    first = jnp.ones(kernel.shape[:-1], kernel.dtype)
    _, (rows, cols) = jax.lax.scan(step, first, None, length=iters)
    return jnp.concatenate([first[None], rows], axis=0), cols


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _sinkhorn_kernel(kernel: Array, iters: int) -> Array:
    rows, cols = _scaling_vectors(kernel, iters)
    return rows[-1][..., :, None] * kernel * cols[-1][..., None, :]


def _sinkhorn_kernel_fwd(kernel, iters):
    rows, cols = _scaling_vectors(kernel, iters)
    return rows[-1][..., :, None] * kernel * cols[-1][..., None, :], (kernel, rows, cols)


def _sinkhorn_kernel_bwd(iters, residuals, cotangent):
    """Reverse pass through the ``2 T`` matrix-vector products. Each ``u = K c`` adds
    ``outer(u_bar, c)`` to ``K_bar`` and each ``v = K^T r`` adds ``outer(r, v_bar)``; the
    ``2 T`` outer products are summed as two ``[M, T] x [T, M]`` products at the end."""
    kernel, rows, cols = residuals
    r_last, c_last = rows[-1], cols[-1]
    kernel_bar = r_last[..., :, None] * cotangent * c_last[..., None, :]
    r_bar = jnp.sum(cotangent * kernel * c_last[..., None, :], axis=-1)
    c_bar_out = jnp.sum(cotangent * kernel * r_last[..., :, None], axis=-2)

    def step(carry, vectors):
        r_bar, c_bar_extra = carry
        r, c = vectors  # r_t = 1/(K c_t), c_t = 1/(K^T r_{t-1})
        u_bar = -r_bar * r * r  # d(1/u) = -1/u^2 = -r^2 (0 where r = 0)
        c_bar = jnp.einsum("...ij,...i->...j", kernel, u_bar) + c_bar_extra
        v_bar = -c_bar * c * c
        r_bar_previous = jnp.einsum("...ij,...j->...i", kernel, v_bar)
        return (r_bar_previous, jnp.zeros_like(c_bar_extra)), (u_bar, v_bar)

    _, (u_bars, v_bars) = jax.lax.scan(step, (r_bar, c_bar_out), (rows[1:], cols), reverse=True)
    kernel_bar = kernel_bar + jnp.einsum("t...i,t...j->...ij", u_bars, cols)
    kernel_bar = kernel_bar + jnp.einsum("t...i,t...j->...ij", rows[:-1], v_bars)
    return (kernel_bar,)


_sinkhorn_kernel.defvjp(_sinkhorn_kernel_fwd, _sinkhorn_kernel_bwd)


def _sinkhorn(matrix: Array, cells: Array, iters: int) -> Array:
    """``iters`` Sinkhorn iterations on the cells in play (others 0).

    Column-then-row normalisation ``iters`` times equals ``diag(r_T) K diag(c_T)`` with the
    scaling vectors of :func:`_scaling_vectors` (a row or column summing to 0 stays 0). Only
    vectors are iterated and stored; reverse mode (custom VJP) re-reads ``K`` in ``2 T``
    matrix-vector products instead of keeping ``T`` intermediate matrices.
    """
    matrix = jnp.where(cells, matrix, 0.0)
    if iters == 0:
        return matrix
    return _sinkhorn_kernel(matrix, iters)


def _check_iters(iters) -> None:
    if not isinstance(iters, int) or iters < 0:
        raise ConfigError(f"sinkhorn_iters must be an int >= 0, got {iters!r}; pass e.g. 50 (0: plain NeuralSort)")


def _check_k(k) -> None:
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ConfigError(f"k must be None (the whole list) or an int >= 1, got {k!r}")


def neural_sort(scores, where=None, *, temperature=1.0) -> Array:
    """NeuralSort relaxation of the descending sort (Grover et al., ICLR 2019), with padding.

    ``P^[..., i, j] = softmax_j(((n + 1 - 2(i + 1)) s_j - sum_{k valid} |s_j - s_k|) / T)`` over
    valid ``j``, for the positions ``i < n`` (0-based), ``n`` = valid entries of the list.

    Args:
      scores: ``[..., L]`` float scores (higher = first).
      where: optional ``[..., L]`` bool validity mask.
      temperature: ``T > 0``; as ``T -> 0`` row ``i`` becomes the one-hot of the ``(i+1)``-th
        highest valid score (distinct scores).
    Returns:
      ``[..., L, L]``: rows = positions, columns = entries; rows ``i < n`` sum to 1 over the
      valid columns, every other cell is 0.
    """
    _check_positive("temperature", temperature)
    scores = _as_float(scores)
    valid = _valid_mask(scores, where)
    return _neural_sort(jnp.where(valid, scores, 0.0), valid, temperature)


def sinkhorn(matrix, where=None, *, iters=50) -> Array:
    """Sinkhorn scaling: ``iters`` times, divide every column, then every row, by its sum.

    Args:
      matrix: ``[..., M, M]`` non-negative.
      where: optional ``[..., M, M]`` bool cells in play; the others are 0 on output and do not
        enter the sums. A row or column without positive entries stays 0.
      iters: ``>= 0`` iterations (0 returns the masked input).
    Returns:
      ``[..., M, M]``: rows summing to 1 exactly, columns approximately (after enough iterations).
    """
    _check_iters(iters)
    matrix = _as_float(matrix)
    cells = jnp.ones(matrix.shape, bool) if where is None else jnp.broadcast_to(jnp.asarray(where, bool), matrix.shape)
    return _sinkhorn(jnp.where(cells, matrix, 0.0), cells, iters)


#: Users whose ``L x L`` matrices are built and Sinkhorn-scaled together. The ``2 T`` matrix-vector
#: products of Sinkhorn re-read each matrix; in chunks of 32 users of a 288-long list (10 MB) they
#: are read from cache, not memory: value and gradient at 256 users x 288 entries 1.29 s -> 0.64 s
#: on the 2-core CPU (docs/design.md, "NeuralNDCG").
_USERS_PER_CHUNK = 32


def _neural_ndcg_per_user(scores, labels, where, temperature, sinkhorn_iters, k):
    """``(NeuralNDCG_u [...], has_positive [...])``; 0 for users without valid positives.

    Users are processed ``_USERS_PER_CHUNK`` at a time (``lax.map``); the values are those of
    :func:`_neural_ndcg_lists` on the whole batch.
    """
    scores = _as_float(scores)
    valid = _valid_mask(scores, where)
    labels = jnp.broadcast_to(jnp.asarray(labels), scores.shape)
    lead, n_slots = scores.shape[:-1], scores.shape[-1]
    flat = tuple(x.reshape(-1, n_slots) for x in (scores, labels, valid))
    ndcg, has_positive = jax.lax.map(
        lambda lists: _neural_ndcg_lists(*lists, temperature, sinkhorn_iters, k), flat,
        batch_size=max(1, min(_USERS_PER_CHUNK, flat[0].shape[0])))
    return ndcg.reshape(lead), has_positive.reshape(lead)


def _neural_ndcg_lists(scores, labels, valid, temperature, sinkhorn_iters, k):
    """:func:`_neural_ndcg_per_user` of float ``scores`` and bool ``valid``, all users at once."""
    is_positive = (labels > 0) & valid
    n_slots = scores.shape[-1]
    relaxed = _sinkhorn(_neural_sort(jnp.where(valid, scores, 0.0), valid, temperature), _position_cells(valid),
                        sinkhorn_iters)
    gains = is_positive.astype(scores.dtype)  # 2^rel - 1 for binary relevance
    position_gains = jnp.einsum("...ij,...j->...i", relaxed, gains)  # (P^ g)_i
    cutoff = n_slots if k is None else min(k, n_slots)
    discounts = 1.0 / jnp.log2(2.0 + jnp.arange(n_slots, dtype=scores.dtype))  # 1/log2(1 + i), i 1-based
    discounts = jnp.where(jnp.arange(n_slots) < cutoff, discounts, 0.0)
    dcg = jnp.sum(position_gains * discounts, axis=-1)
    n_positive = jnp.sum(is_positive, axis=-1)
    ideal = jnp.sum(jnp.where(jnp.arange(n_slots) < n_positive[..., None], discounts, 0.0), axis=-1)
    has_positive = n_positive > 0
    ndcg = jnp.where(has_positive, dcg / jnp.where(has_positive, ideal, 1.0), 0.0)
    return ndcg, has_positive


@partial(jax.jit, static_argnames=("sinkhorn_iters", "k", "reduce"))
def _neural_ndcg(scores, labels, where, temperature, sinkhorn_iters, k, reduce):
    ndcg, has_positive = _neural_ndcg_per_user(scores, labels, where, temperature, sinkhorn_iters, k)
    return _reduce_over_users(ndcg, has_positive, reduce)


@partial(jax.jit, static_argnames=("sinkhorn_iters", "k"))
def _neural_ndcg_loss(scores, labels, where, temperature, sinkhorn_iters, k):
    ndcg, has_positive = _neural_ndcg_per_user(scores, labels, where, temperature, sinkhorn_iters, k)
    return _reduce_over_users(1.0 - ndcg, has_positive, "mean")


def neural_ndcg(scores, labels, *, where=None, temperature=1.0, sinkhorn_iters=50, k=None, reduce="mean") -> Array:
    """NeuralNDCG@k of each user's list (module docstring).

    Args:
      scores: ``[..., L]`` float scores.
      labels: ``[..., L]`` binary relevance (``> 0`` = positive, gain 1).
      where: optional ``[..., L]`` bool validity mask; padding takes no position.
      temperature: NeuralSort temperature ``T > 0``.
      sinkhorn_iters: ``>= 0`` Sinkhorn iterations (static; 0 = the row-stochastic NeuralSort matrix).
      k: cut-off (static int ``>= 1``), or ``None`` for the whole list.
      reduce: ``"mean"`` over users with at least one valid positive (0 if none), ``"sum"``, or
        ``None`` for per-user ``[...]`` values (0 for users without positives).
    Returns:
      scalar, or ``[...]`` with ``reduce=None``; tends to the exact NDCG@k as ``T -> 0``
      (distinct scores).
    """
    _check_positive("temperature", temperature)
    _check_iters(sinkhorn_iters)
    _check_k(k)
    if reduce not in _REDUCTIONS:
        raise ConfigError(f"reduce={reduce!r} is not supported; use one of {_REDUCTIONS}")
    return _neural_ndcg(scores, labels, where, temperature, sinkhorn_iters, k, reduce)


def neural_ndcg_loss(scores, labels, *, where=None, temperature=1.0, sinkhorn_iters=50, k=None) -> Array:
    """``mean_{u : |P_u| > 0} (1 - NeuralNDCG_u@k)``; arguments as :func:`neural_ndcg`.

    Returns:
      scalar; 0 when no user has a valid positive (gradients then are zero, not NaN).
    """
    _check_positive("temperature", temperature)
    _check_iters(sinkhorn_iters)
    _check_k(k)
    return _neural_ndcg_loss(scores, labels, where, temperature, sinkhorn_iters, k)


@jax.jit
def _softmax_per_user(scores, labels, where, temperature, log_q):
    """``(mean_{p in P_u} l_up [...], has_positive [...])``; 0 without valid positives or negatives."""
    scores = _as_float(scores)
    valid = _valid_mask(scores, where)
    labelled = jnp.broadcast_to(jnp.asarray(labels), scores.shape) > 0
    is_positive = labelled & valid
    is_negative = ~labelled & valid
    logits = jnp.where(valid, scores, 0.0) / temperature
    log_q = jnp.broadcast_to(jnp.asarray(log_q, scores.dtype), scores.shape)
    negative_logits = jnp.where(is_negative, logits - jnp.where(is_negative, log_q, 0.0), 0.0)
    has_negative = jnp.any(is_negative, axis=-1, keepdims=True)
    top = jnp.max(jnp.where(is_negative, negative_logits, -jnp.inf), axis=-1, keepdims=True)
    top = jax.lax.stop_gradient(jnp.where(has_negative, top, 0.0))
    mass = jnp.sum(jnp.where(is_negative, jnp.exp(jnp.where(is_negative, negative_logits - top, 0.0)), 0.0),
                   axis=-1, keepdims=True)
    log_partition = top + jnp.log(jnp.where(has_negative, mass, 1.0))  # logsumexp over N_u  [..., 1]
    per_positive = jnp.where(has_negative, jax.nn.softplus(log_partition - logits), 0.0)
    return masked_mean(per_positive, is_positive, axis=-1), jnp.any(is_positive, axis=-1)


def sampled_softmax_loss(scores, labels, *, where=None, temperature=1.0, log_q=0.0, reduce="mean") -> Array:
    """Sampled softmax (InfoNCE) over each user's list, with an optional logQ correction.

    ``l_up = softplus(logsumexp_{n in N_u}(s_n/T - log_q_n) - s_p/T)`` for each valid positive
    ``p`` (module docstring); mean over the user's valid positives, then over users.

    Args:
      scores: ``[..., L]`` float scores (raw dot products).
      labels: ``[..., L]`` binary relevance: positives (``> 0``) are the targets, the valid
        entries labelled 0 the negatives.
      where: optional ``[..., L]`` bool validity mask.
      temperature: ``T > 0``, divides every score.
      log_q: scalar or ``[..., L]`` subtracted from each negative's logit ``s_n/T`` (ignored at
        positives and masked entries). ``log(N_u Q(n))`` with ``Q(n)`` the sampler's probability
        of ``n`` per draw makes the denominator an unbiased estimate of the full-catalogue one;
        0 (default) is no correction.
      reduce: ``"mean"`` over users with at least one valid positive (0 if none), ``"sum"``, or
        ``None`` for per-user ``[...]`` values.
    Returns:
      scalar, or ``[...]`` with ``reduce=None``; ``>= 0``.
    """
    _check_positive("temperature", temperature)
    if reduce not in _REDUCTIONS:
        raise ConfigError(f"reduce={reduce!r} is not supported; use one of {_REDUCTIONS}")
    per_user, has_positive = _softmax_per_user(scores, labels, where, temperature, log_q)
    return _reduce_over_users(per_user, has_positive, reduce)
