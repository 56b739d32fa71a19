"""Tests of itemjax.objective.listwise_losses (NeuralSort, Sinkhorn, NeuralNDCG, sampled softmax) against
float64 numpy loops, limits and invariances."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import central_differences

from itemjax.errors import ConfigError
from itemjax.objective.listwise_losses import neural_ndcg, neural_ndcg_loss, neural_sort, sampled_softmax_loss, sinkhorn

# ----------------------------------------------------------------------------------------------
# float64 references written as plain loops (one list at a time)
# ----------------------------------------------------------------------------------------------


def ref_neural_sort(scores, valid, temperature):
    """``[L, L]``: row i < n (n valid entries) = softmax over valid j of
    ((n + 1 - 2(i + 1)) s_j - sum_{k valid} |s_j - s_k|) / T; every other cell 0."""
    n_slots = len(scores)
    kept = [j for j in range(n_slots) if valid[j]]
    n = len(kept)
    matrix = np.zeros((n_slots, n_slots))
    for i in range(n):
        logits = {}
        for j in kept:
            spread = sum(abs(scores[j] - scores[k]) for k in kept)
            logits[j] = ((n + 1 - 2 * (i + 1)) * scores[j] - spread) / temperature
        top = max(logits.values())
        total = sum(math.exp(v - top) for v in logits.values())
        for j in kept:
            matrix[i, j] = math.exp(logits[j] - top) / total
    return matrix


def ref_sinkhorn(matrix, iters, eps=1e-10):
    """``iters`` times: divide each column, then each row, by its sum (floored at eps)."""
    matrix = np.array(matrix, dtype=np.float64)
    rows, cols = matrix.shape
    for _ in range(iters):
        for c in range(cols):
            total = max(sum(matrix[r, c] for r in range(rows)), eps)
            for r in range(rows):
                matrix[r, c] /= total
        for r in range(rows):
            total = max(sum(matrix[r, c] for c in range(cols)), eps)
            for c in range(cols):
                matrix[r, c] /= total
    return matrix


def ref_neural_ndcg(scores, labels, valid, temperature, iters, k=None):
    """NeuralNDCG@k of one list: sum_{i <= min(k, n)} (P g)_i / log2(1 + i) / IDCG@k; 0 without positives."""
    relaxed = ref_sinkhorn(ref_neural_sort(scores, valid, temperature), iters)
    n_slots = len(scores)
    gains = [1.0 if labels[j] > 0 and valid[j] else 0.0 for j in range(n_slots)]
    n_pos = int(sum(gains))
    if n_pos == 0:
        return 0.0
    cutoff = n_slots if k is None else k
    dcg = 0.0
    for i in range(min(cutoff, n_slots)):
        dcg += sum(relaxed[i, j] * gains[j] for j in range(n_slots)) / math.log2(i + 2)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(cutoff, n_pos)))
    return dcg / idcg


def ref_neural_ndcg_loss(scores, labels, valid, temperature, iters, k=None):
    per_user = [1.0 - ref_neural_ndcg(scores[u], labels[u], valid[u], temperature, iters, k)
                for u in range(len(scores)) if np.any((labels[u] > 0) & valid[u])]
    return float(np.mean(per_user)) if per_user else 0.0


def ref_softmax(scores, labels, valid, temperature, log_q=None):
    """Mean over valid positives of -log(e^{s_p/T} / (e^{s_p/T} + sum_n e^{s_n/T - log_q_n})); 0 without positives."""
    n_slots = len(scores)
    log_q = np.zeros(n_slots) if log_q is None else log_q
    negatives = [n for n in range(n_slots) if valid[n] and labels[n] <= 0]
    losses = []
    for p in range(n_slots):
        if not (valid[p] and labels[p] > 0):
            continue
        terms = [scores[p] / temperature] + [scores[n] / temperature - log_q[n] for n in negatives]
        top = max(terms)
        log_partition = top + math.log(sum(math.exp(t - top) for t in terms))
        losses.append(log_partition - scores[p] / temperature)
    return float(np.mean(losses)) if losses else 0.0


def ref_softmax_loss(scores, labels, valid, temperature, log_q=None):
    per_user = [ref_softmax(scores[u], labels[u], valid[u], temperature, None if log_q is None else log_q[u])
                for u in range(len(scores)) if np.any((labels[u] > 0) & valid[u])]
    return float(np.mean(per_user)) if per_user else 0.0


def exact_ndcg_at(scores, labels, valid, k=None):
    """NDCG@k of the list ordered by score (distinct scores)."""
    order = sorted((i for i in range(len(scores)) if valid[i]), key=lambda i: -scores[i])
    cutoff = len(order) if k is None else k
    dcg = sum(1.0 / math.log2(2 + pos) for pos, i in enumerate(order[:cutoff]) if labels[i] > 0)
    n_pos = sum(1 for i in order if labels[i] > 0)
    idcg = sum(1.0 / math.log2(2 + pos) for pos in range(min(n_pos, cutoff)))
    return dcg / idcg if n_pos else 0.0


def random_batch(seed, n_users=5, n_slots=8, p_valid=0.8, p_positive=0.4, scale=1.0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_users, n_slots)) * scale
    valid = rng.random((n_users, n_slots)) < p_valid
    labels = (rng.random((n_users, n_slots)) < p_positive).astype(np.int32)
    valid[0] = False  # an all-masked user
    labels[1] = 0  # a user without positives
    labels[2, :2], valid[2, :3] = 1, True  # positives and a negative, valid
    labels[2, 2] = 0
    return scores, labels, valid


# ----------------------------------------------------------------------------------------------
# NeuralSort and Sinkhorn
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 1.0, 5.0])
def test_neural_sort_matches_reference_float64(x64, temperature):
    scores, _, valid = random_batch(0, scale=2.0)
    got = np.asarray(neural_sort(scores, valid, temperature=temperature))
    assert got.dtype == np.float64 and got.shape == (5, 8, 8)
    for u in range(len(scores)):
        np.testing.assert_allclose(got[u], ref_neural_sort(scores[u], valid[u], temperature), rtol=1e-12, atol=1e-14)
    n_valid = valid.sum(1)
    rows = got.sum(-1)
    for u in range(len(scores)):
        np.testing.assert_allclose(rows[u, : n_valid[u]], 1.0, rtol=1e-12)
        assert np.all(got[u, n_valid[u]:] == 0) and np.all(got[u][:, ~valid[u]] == 0)


def test_neural_sort_tends_to_the_sort_permutation(x64):
    rng = np.random.default_rng(1)
    scores = np.stack([rng.permutation(9) * 0.05 + rng.normal() for _ in range(4)])  # distinct, gaps >= 0.05
    valid = rng.random(scores.shape) < 0.7
    valid[:, 0] = True
    got = np.asarray(neural_sort(scores, valid, temperature=1e-4))
    for u in range(4):
        order = sorted(np.flatnonzero(valid[u]), key=lambda j: -scores[u, j])
        want = np.zeros((9, 9))
        want[np.arange(len(order)), order] = 1.0
        np.testing.assert_allclose(got[u], want, atol=1e-12)


@pytest.mark.parametrize("iters", [0, 1, 7, 50])
def test_sinkhorn_matches_reference_float64(x64, iters):
    rng = np.random.default_rng(2)
    matrix = rng.random((3, 6, 6)) + 0.05
    cells = rng.random((3, 6, 6)) < 0.8
    cells[0, 2, :] = False  # an empty row: stays 0
    cells[1, :, 4] = False  # an empty column
    got = np.asarray(sinkhorn(matrix, cells, iters=iters))
    for b in range(3):
        np.testing.assert_allclose(got[b], ref_sinkhorn(np.where(cells[b], matrix[b], 0.0), iters), rtol=1e-12,
                                   atol=1e-14)
    assert np.all(got[~cells] == 0)
    if iters == 50:  # a full positive matrix converges to doubly stochastic
        full = np.asarray(sinkhorn(matrix, iters=200))
        np.testing.assert_allclose(full.sum(-1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(full.sum(-2), 1.0, rtol=1e-9)


def test_sinkhorn_gradient_matches_central_differences_float64(x64):
    rng = np.random.default_rng(3)
    matrix = rng.random((2, 4, 4)) + 0.1
    cells = np.ones((2, 4, 4), bool)
    cells[1, 3, :] = cells[1, :, 0] = False
    weights = rng.normal(size=(2, 4, 4))
    fn = jax.jit(lambda m: jnp.sum(sinkhorn(m, cells, iters=13) * weights))  # 13: chunks of 3, 3, 3, 3, 1
    grad = np.asarray(jax.grad(fn)(jnp.asarray(matrix)))
    want = central_differences(lambda m: np.sum(ref_sinkhorn(np.where(cells[0], m[0], 0), 13) * weights[0])
                               + np.sum(ref_sinkhorn(np.where(cells[1], m[1], 0), 13) * weights[1]), matrix)
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-8)
    assert np.all(grad[~cells] == 0) and np.abs(grad).max() > 1e-2


# ----------------------------------------------------------------------------------------------
# NeuralNDCG
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature, iters, k", [(1.0, 50, None), (0.3, 50, 3), (2.0, 0, None), (0.5, 5, 1),
                                                   (1.0, 50, 20)])
def test_neural_ndcg_matches_reference_float64(x64, temperature, iters, k):
    scores, labels, valid = random_batch(4, scale=2.0)
    got = np.asarray(neural_ndcg(scores, labels, where=valid, temperature=temperature, sinkhorn_iters=iters, k=k,
                                 reduce=None))
    want = [ref_neural_ndcg(scores[u], labels[u], valid[u], temperature, iters, k) for u in range(len(scores))]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert got[0] == 0 and got[1] == 0  # all-masked user, user without positives
    loss = neural_ndcg_loss(scores, labels, where=valid, temperature=temperature, sinkhorn_iters=iters, k=k)
    np.testing.assert_allclose(loss, ref_neural_ndcg_loss(scores, labels, valid, temperature, iters, k), rtol=1e-12)


def test_neural_ndcg_float32_close_to_float64_reference():
    """Lists of ITEM's shape (positives then negatives, padded positives), float32, 50 Sinkhorn iterations."""
    rng = np.random.default_rng(5)
    n_pos, n_neg = 6, 34
    scores = rng.normal(size=(2, n_pos + n_neg)) * 2
    labels = np.concatenate([np.ones((2, n_pos)), np.zeros((2, n_neg))], 1)
    valid = np.ones(scores.shape, bool)
    valid[1, 3:n_pos] = False
    got = float(neural_ndcg_loss(jnp.asarray(scores, jnp.float32), labels, where=valid, temperature=0.5))
    np.testing.assert_allclose(got, ref_neural_ndcg_loss(scores, labels, valid, 0.5, 50), rtol=1e-4)


@pytest.mark.parametrize("temperature, iters, k", [(1.0, 50, None), (0.4, 20, 3), (2.0, 0, None)])
def test_neural_ndcg_gradient_matches_central_differences_of_reference_float64(x64, temperature, iters, k):
    scores, labels, valid = random_batch(6, n_users=4, n_slots=6, p_positive=0.5, scale=1.5)
    fn = jax.jit(lambda s: neural_ndcg_loss(s, labels, where=valid, temperature=temperature, sinkhorn_iters=iters,
                                            k=k))
    grad = np.asarray(jax.grad(fn)(jnp.asarray(scores)))
    assert grad.dtype == np.float64
    want = central_differences(lambda s: ref_neural_ndcg_loss(s, labels, valid, temperature, iters, k), scores)
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-8)
    assert np.abs(grad).max() > 1e-3
    assert np.all(grad[~valid] == 0) and np.all(grad[:2] == 0)  # masked entries, users 0 and 1


@pytest.mark.parametrize("k", [None, 3])
def test_temperature_to_zero_gives_exact_ndcg(x64, k):
    rng = np.random.default_rng(7)
    n_users, n_slots = 6, 11
    scores = np.stack([rng.permutation(n_slots) * 0.01 + rng.normal() for _ in range(n_users)])  # distinct
    valid = rng.random((n_users, n_slots)) < 0.75
    valid[:, 0] = True
    labels = (rng.random((n_users, n_slots)) < 0.4).astype(np.int32)
    labels[:, 0] = 1
    got = np.asarray(neural_ndcg(scores, labels, where=valid, temperature=1e-5, k=k, reduce=None))
    want = np.array([exact_ndcg_at(scores[u], labels[u], valid[u], k) for u in range(n_users)])
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert np.any(want < 0.9)  # not trivially 1
    softer = np.asarray(neural_ndcg(scores, labels, where=valid, temperature=0.05, k=k, reduce=None))
    assert np.abs(softer - want).max() > 1e-3  # the relaxation is not the exact metric at a finite T


def test_raising_a_positive_lowers_the_neural_ndcg_loss():
    scores = jnp.asarray(np.random.default_rng(8).normal(size=(3, 10)), jnp.float32)
    labels = jnp.asarray((np.arange(10) < 3)[None].repeat(3, 0).astype(np.int32))
    base = neural_ndcg_loss(scores, labels)
    assert neural_ndcg_loss(scores.at[1, 0].add(1.0), labels) < base
    assert neural_ndcg_loss(scores.at[1, 7].add(-1.0), labels) < base
    grad = np.asarray(jax.grad(lambda s: neural_ndcg_loss(s, labels))(scores))
    assert np.all(grad[:, :3].sum(1) < 0) and np.all(grad[:, 3:].sum(1) > 0)


# ----------------------------------------------------------------------------------------------
# sampled softmax
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 1.0])
@pytest.mark.parametrize("with_log_q", [False, True])
def test_softmax_matches_reference_float64(x64, temperature, with_log_q):
    scores, labels, valid = random_batch(9, n_slots=10, scale=2.0)
    log_q = np.random.default_rng(10).normal(size=scores.shape) * 2 if with_log_q else None
    kwargs = {"log_q": log_q} if with_log_q else {}
    got = np.asarray(sampled_softmax_loss(scores, labels, where=valid, temperature=temperature, reduce=None, **kwargs))
    want = [ref_softmax(scores[u], labels[u], valid[u], temperature, None if log_q is None else log_q[u])
            for u in range(len(scores))]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert got[0] == 0 and got[1] == 0
    mean = sampled_softmax_loss(scores, labels, where=valid, temperature=temperature, **kwargs)
    np.testing.assert_allclose(mean, ref_softmax_loss(scores, labels, valid, temperature, log_q), rtol=1e-12)
    if with_log_q:  # the correction moves the value, and is not applied to positives
        plain = sampled_softmax_loss(scores, labels, where=valid, temperature=temperature)
        assert abs(float(mean) - float(plain)) > 1e-2
        at_positives = np.where(labels > 0, 100.0, log_q)
        np.testing.assert_allclose(sampled_softmax_loss(scores, labels, where=valid, temperature=temperature,
                                                        log_q=at_positives), mean, rtol=1e-12)


def test_constant_log_q_scales_the_negatives_sum(x64):
    """log_q = c for every negative divides each e^{s_n/T} by e^c: here e^c = (n_items - deg_u) / N,
    the uniform sampler's expected-count correction, per user."""
    scores, labels, valid = random_batch(11, n_slots=9)
    c = np.log(np.array([3.0, 7.5, 1.0, 0.2, 40.0]))
    got = np.asarray(sampled_softmax_loss(scores, labels, where=valid, log_q=-c[:, None], reduce=None))
    for u in range(len(scores)):
        p_list = [p for p in range(9) if valid[u, p] and labels[u, p] > 0]
        neg = sum(math.exp(scores[u, n]) for n in range(9) if valid[u, n] and labels[u, n] <= 0)
        want = np.mean([-math.log(math.exp(scores[u, p]) / (math.exp(scores[u, p]) + math.exp(c[u]) * neg))
                        for p in p_list]) if p_list else 0.0
        np.testing.assert_allclose(got[u], want, rtol=1e-12)


@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_softmax_gradient_matches_central_differences_of_reference_float64(x64, temperature):
    scores, labels, valid = random_batch(12, n_users=4, n_slots=7, p_positive=0.5)
    log_q = np.random.default_rng(13).normal(size=scores.shape)
    fn = jax.jit(lambda s: sampled_softmax_loss(s, labels, where=valid, temperature=temperature, log_q=log_q))
    grad = np.asarray(jax.grad(fn)(jnp.asarray(scores)))
    want = central_differences(lambda s: ref_softmax_loss(s, labels, valid, temperature, log_q), scores)
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-8)
    assert np.abs(grad).max() > 1e-2
    assert np.all(grad[~valid] == 0) and np.all(grad[:2] == 0)


# ----------------------------------------------------------------------------------------------
# masks, degenerate lists, options
# ----------------------------------------------------------------------------------------------


def test_masking_an_entry_equals_dropping_it(x64):
    rng = np.random.default_rng(14)
    scores = rng.normal(size=10) * 2
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 0, 1, 0])
    log_q = rng.normal(size=10)
    for dropped in (0, 1, 5, 9):  # positives and negatives, first and last slot
        valid = np.ones(10, bool)
        valid[dropped] = False
        keep = np.flatnonzero(valid)
        masked = np.asarray(neural_sort(scores[None], valid[None], temperature=0.7))[0]
        kept = np.asarray(neural_sort(scores[keep][None], temperature=0.7))[0]
        np.testing.assert_allclose(masked[: len(keep)][:, keep], kept, rtol=1e-12)
        for k in (None, 4):
            np.testing.assert_allclose(
                neural_ndcg_loss(scores[None], labels[None], where=valid[None], temperature=0.7, k=k),
                neural_ndcg_loss(scores[keep][None], labels[keep][None], temperature=0.7, k=k), rtol=1e-12)
        np.testing.assert_allclose(
            sampled_softmax_loss(scores[None], labels[None], where=valid[None], log_q=log_q[None], temperature=0.5),
            sampled_softmax_loss(scores[keep][None], labels[keep][None], log_q=log_q[keep][None], temperature=0.5),
            rtol=1e-12)


def test_degenerate_lists_give_zero_finite_gradients():
    scores = jnp.array(
        [
            [1.0, 2.0, 3.0, 4.0],  # all masked
            [1e4, -1e4, 0.0, 5.0],  # huge gaps
            [7.0, 7.0, 7.0, 7.0],  # ties
            [0.0, 1.0, 2.0, 3.0],  # valid but no positive
            [3.0, 1.0, 2.0, 0.0],  # positives only (softmax: no negative, loss 0)
        ],
        jnp.float32,
    )
    labels = jnp.array([[1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    where = jnp.array([[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]], bool)
    poisoned = jnp.where(where, scores, jnp.nan).at[2, 3].set(jnp.inf)  # masked entries only
    losses = {
        "neuralndcg": lambda s, w: neural_ndcg_loss(s, labels, where=w, temperature=0.01),
        "neuralndcg-k1": lambda s, w: neural_ndcg_loss(s, labels, where=w, k=1, sinkhorn_iters=3),
        "softmax": lambda s, w: sampled_softmax_loss(s, labels, where=w, temperature=0.05, log_q=jnp.full((5, 4), 3.0)),
    }
    for name, fn in losses.items():
        loss, grad = jax.value_and_grad(fn)(poisoned, where)
        grad = np.asarray(grad)
        assert np.isfinite(loss) and np.all(np.isfinite(grad)), name
        assert np.all(grad[0] == 0) and np.all(grad[3] == 0) and np.all(grad[~np.asarray(where)] == 0), name
        np.testing.assert_allclose(loss, fn(scores, where), rtol=1e-6)
        nobody = jnp.zeros_like(where)  # no valid entry anywhere: loss 0, gradient 0
        loss, grad = jax.value_and_grad(fn)(scores, nobody)
        assert loss == 0 and np.all(np.asarray(grad) == 0), name
    assert np.all(np.asarray(jax.grad(losses["softmax"])(scores, where))[4] == 0)


def test_leading_axes_equal_loop_over_users(x64):
    rng = np.random.default_rng(15)
    scores = rng.normal(size=(2, 3, 7))
    labels = (rng.random((2, 3, 7)) < 0.4).astype(int)
    valid = rng.random((2, 3, 7)) < 0.8
    for fn in (lambda s, l, w: neural_ndcg(s, l, where=w, temperature=0.5, k=4, reduce=None),
               lambda s, l, w: sampled_softmax_loss(s, l, where=w, temperature=0.5, reduce=None)):
        batched = np.asarray(fn(scores, labels, valid))
        assert batched.shape == (2, 3)
        for a in range(2):
            for b in range(3):
                np.testing.assert_allclose(batched[a, b], fn(scores[a, b][None], labels[a, b][None],
                                                             valid[a, b][None])[0], rtol=1e-12)


def test_users_in_chunks_equal_all_users_at_once(x64):
    """40 users = a full chunk of 32 and a remainder of 8: value and gradient as one batch."""
    from itemjax.objective import listwise_losses
    assert listwise_losses._USERS_PER_CHUNK == 32
    scores, labels, valid = random_batch(17, n_users=40, n_slots=7, p_positive=0.3, scale=1.5)
    at_once = lambda s: jnp.mean(1.0 - listwise_losses._neural_ndcg_lists(  # noqa: E731
        s, jnp.asarray(labels), jnp.asarray(valid), 0.5, 5, 4)[0])
    chunked = lambda s: jnp.mean(1.0 - listwise_losses._neural_ndcg_per_user(  # noqa: E731
        s, labels, valid, 0.5, 5, 4)[0])
    (value, grad), (want, want_grad) = (jax.value_and_grad(f)(jnp.asarray(scores)) for f in (chunked, at_once))
    np.testing.assert_allclose(value, want, rtol=1e-13)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-11, atol=1e-15)
    assert np.abs(np.asarray(grad)[32:]).max() > 1e-4  # the remainder chunk has gradients too


def test_bad_options_raise_config_error():
    scores, labels = jnp.zeros((1, 3)), jnp.array([[1.0, 0.0, 0.0]])
    with pytest.raises(ConfigError, match="temperature"):
        neural_ndcg_loss(scores, labels, temperature=0.0)
    with pytest.raises(ConfigError, match="sinkhorn_iters"):
        neural_ndcg_loss(scores, labels, sinkhorn_iters=-1)
    with pytest.raises(ConfigError, match="k must be"):
        neural_ndcg(scores, labels, k=0)
    with pytest.raises(ConfigError, match="reduce"):
        neural_ndcg(scores, labels, reduce="max")
    with pytest.raises(ConfigError, match="temperature"):
        sampled_softmax_loss(scores, labels, temperature=-1.0)
    with pytest.raises(ConfigError, match="sinkhorn_iters"):
        sinkhorn(jnp.ones((1, 3, 3)), iters=2.5)
