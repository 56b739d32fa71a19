"""Tests of itemjax.objective.ranking_losses against float64 numpy loops, limits and invariances."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import central_differences
from hypothesis import given, settings
from hypothesis import strategies as st

from itemjax.errors import ConfigError
from itemjax.objective.ranking_losses import bce_loss, item_loss, smooth_ndcg, smooth_ranks, smooth_recall


# ----------------------------------------------------------------------------------------------
# float64 references written as plain loops (one list at a time)
# ----------------------------------------------------------------------------------------------


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def ref_ranks(scores, valid, tau, clamp=50.0, weights=None, slope=0.0, margin=0.0, step=None):
    """Smooth ranks of one list; masked entries get 1 + (number of valid entries).

    ``step[j]`` True: competitor ``j`` enters with the exact step ``1[s_j > s_i]`` instead of ``h``."""
    n = len(scores)
    weights = np.ones(n) if weights is None else weights
    step = np.zeros(n, bool) if step is None else step
    ranks = np.zeros(n)
    for i in range(n):
        if not valid[i]:
            ranks[i] = 1.0 + sum(valid)
            continue
        rank = 1.0
        for j in range(n):
            if j != i and valid[j]:
                diff = scores[j] - scores[i]
                if step[j]:
                    term = 1.0 if diff > 0 else 0.0
                else:
                    term = sigmoid(min(max(diff / tau, -clamp), clamp)) + slope * max(diff - margin, 0.0)
                rank += weights[j] * term
        ranks[i] = rank
    return ranks


def ref_positive_ranks(scores, labels, valid, tau, negative_weight=1.0, slope=0.0, margin=0.0, exact=False):
    positive = [bool(labels[i] > 0 and valid[i]) for i in range(len(scores))]
    weights = np.array([1.0 if p else negative_weight for p in positive])
    step = np.array(positive) if exact else None
    return ref_ranks(scores, valid, tau, weights=weights, slope=slope, margin=margin, step=step), positive


def ref_ndcg(scores, labels, valid, tau, negative_weight=1.0, slope=0.0, margin=0.0, exact=False):
    ranks, positive = ref_positive_ranks(scores, labels, valid, tau, negative_weight, slope, margin, exact)
    n_pos = sum(positive)
    if n_pos == 0:
        return 0.0
    dcg = sum(1.0 / math.log2(1.0 + ranks[i]) for i in range(len(scores)) if positive[i])
    idcg = sum(1.0 / math.log2(1.0 + r) for r in range(1, n_pos + 1))
    return dcg / idcg


def ref_recall(scores, labels, valid, tau, k, tau_k, slope=0.0, margin=0.0, exact=False):
    """Smooth Recall@k; for a tuple ``k`` the mean of the single-cut-off recalls."""
    ranks, positive = ref_positive_ranks(scores, labels, valid, tau, 1.0, slope, margin, exact)
    n_pos = sum(positive)
    if n_pos == 0:
        return 0.0
    recalls = []
    for cutoff in (k if isinstance(k, (tuple, list)) else (k,)):
        hits = sum(sigmoid(min(max((cutoff - ranks[i]) / tau_k, -50.0), 50.0))
                   for i in range(len(scores)) if positive[i])
        recalls.append(min(1.0, hits / min(n_pos, cutoff)))
    return sum(recalls) / len(recalls)


def ref_calibration(scores, labels, valid, query=None):
    """Mean over users with a valid positive (at a query slot) of the mean softplus(s_n - s_p)."""
    per_user = []
    for u in range(len(scores)):
        slots = range(scores.shape[1]) if query is None else query[u]
        positives = [p for p in slots if labels[u, p] > 0 and valid[u, p]]
        negatives = [n for n in range(scores.shape[1]) if labels[u, n] <= 0 and valid[u, n]]
        if not positives:
            continue
        pairs = [np.logaddexp(0.0, scores[u, n] - scores[u, p]) for p in positives for n in negatives]
        per_user.append(np.mean(pairs) if pairs else 0.0)
    return float(np.mean(per_user)) if per_user else 0.0


def exact_ranks(scores, valid):
    """1-based rank of each valid entry among the valid entries (distinct scores)."""
    ranks = np.zeros(len(scores))
    for i in range(len(scores)):
        if valid[i]:
            ranks[i] = 1 + sum(1 for j in range(len(scores)) if valid[j] and scores[j] > scores[i])
    return ranks


def exact_ndcg(scores, labels, valid):
    """NDCG of the whole list ordered by score (sort, then discount by position)."""
    order = sorted((i for i in range(len(scores)) if valid[i]), key=lambda i: -scores[i])
    dcg = sum(1.0 / math.log2(2 + pos) for pos, i in enumerate(order) if labels[i] > 0)
    n_pos = sum(1 for i in order if labels[i] > 0)
    idcg = sum(1.0 / math.log2(2 + pos) for pos in range(n_pos))
    return dcg / idcg if n_pos else 0.0


def random_batch(seed, n_users=5, n_slots=9, p_valid=0.8, p_positive=0.35, scale=1.0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_users, n_slots)) * scale
    valid = rng.random((n_users, n_slots)) < p_valid
    labels = (rng.random((n_users, n_slots)) < p_positive).astype(np.int32)
    valid[0] = False  # an all-masked user
    labels[1] = 0  # a user without positives
    labels[2, 0], valid[2, 0] = 1, True  # a user with at least one valid positive
    return scores, labels, valid


# ----------------------------------------------------------------------------------------------
# values against the references
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.05, 0.5, 3.0])
def test_smooth_ranks_match_reference_float64(x64, tau):
    scores, _, valid = random_batch(0)
    got = np.asarray(smooth_ranks(jnp.asarray(scores), jnp.asarray(valid), tau=tau))
    assert got.dtype == np.float64
    want = np.stack([ref_ranks(scores[u], valid[u], tau) for u in range(len(scores))])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_smooth_ranks_float32_close_to_float64_reference():
    scores, _, valid = random_batch(1, scale=3.0)
    got = np.asarray(smooth_ranks(jnp.asarray(scores, jnp.float32), jnp.asarray(valid), tau=0.1))
    assert got.dtype == np.float32
    want = np.stack([ref_ranks(scores[u], valid[u], 0.1) for u in range(len(scores))])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tau, negative_weight", [(0.1, 1.0), (1.0, 1.0), (0.3, 7.5), (0.3, 0.0)])
def test_smooth_ndcg_matches_reference_float64(x64, tau, negative_weight):
    scores, labels, valid = random_batch(2)
    got = np.asarray(smooth_ndcg(scores, labels, where=valid, tau=tau, reduce=None,
                                 negative_weight=negative_weight))
    want = np.array([ref_ndcg(scores[u], labels[u], valid[u], tau, negative_weight) for u in range(len(scores))])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert got[0] == 0.0 and got[1] == 0.0  # all-masked user, user without positives
    has_positive = (labels * valid).sum(1) > 0
    mean = smooth_ndcg(scores, labels, where=valid, tau=tau, negative_weight=negative_weight)
    np.testing.assert_allclose(mean, want[has_positive].mean(), rtol=1e-12)
    total = smooth_ndcg(scores, labels, where=valid, tau=tau, negative_weight=negative_weight, reduce="sum")
    np.testing.assert_allclose(total, want.sum(), rtol=1e-12)


def test_per_user_negative_weight_matches_reference(x64):
    scores, labels, valid = random_batch(3)
    weights = np.array([1.0, 2.0, 0.5, 10.0, 3.0])
    got = np.asarray(smooth_ndcg(scores, labels, where=valid, tau=0.2, reduce=None, negative_weight=weights))
    want = np.array([ref_ndcg(scores[u], labels[u], valid[u], 0.2, weights[u]) for u in range(len(scores))])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k, tau_k", [(1, 0.1), (3, 1.0), (20, 1.0), (2, 50.0)])
def test_smooth_recall_matches_reference_float64(x64, k, tau_k):
    scores, labels, valid = random_batch(4, n_slots=12, p_positive=0.5)
    got = np.asarray(smooth_recall(scores, labels, where=valid, k=k, tau=0.2, tau_k=tau_k, reduce=None))
    want = np.array([ref_recall(scores[u], labels[u], valid[u], 0.2, k, tau_k) for u in range(len(scores))])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_smooth_recall_is_capped_at_one_when_many_positives_and_soft_step():
    # 12 positives, k = 2, very soft step: the uncapped sum would be about 12 * 0.5 / 2 = 3.
    scores = jnp.linspace(0.0, 1.0, 12)[None]
    labels = jnp.ones((1, 12), jnp.int32)
    got = smooth_recall(scores, labels, k=2, tau_k=1000.0, reduce=None)
    np.testing.assert_allclose(got, [1.0], rtol=1e-6)


def test_item_loss_is_one_minus_mean_metric_over_users_with_positives(x64):
    scores, labels, valid = random_batch(5)
    has_positive = (labels * valid).sum(1) > 0
    ndcg = np.array([ref_ndcg(scores[u], labels[u], valid[u], 0.1) for u in range(len(scores))])
    np.testing.assert_allclose(item_loss(scores, labels, where=valid), np.mean(1 - ndcg[has_positive]), rtol=1e-12)
    recall = np.array([ref_recall(scores[u], labels[u], valid[u], 0.1, 3, 0.5) for u in range(len(scores))])
    got = item_loss(scores, labels, where=valid, metric="recall", k=3, tau_k=0.5)
    np.testing.assert_allclose(got, np.mean(1 - recall[has_positive]), rtol=1e-12)


def test_bce_loss_matches_reference(x64):
    rng = np.random.default_rng(6)
    pos, neg = rng.normal(size=(4, 3)) * 3, rng.normal(size=(4, 5)) * 3
    pos_where, neg_where = rng.random((4, 3)) < 0.6, rng.random((4, 5)) < 0.6
    pos_ref = [math.log1p(math.exp(-s)) for s, w in zip(pos.ravel(), pos_where.ravel()) if w]
    neg_ref = [math.log1p(math.exp(s)) for s, w in zip(neg.ravel(), neg_where.ravel()) if w]
    got = bce_loss(pos, neg, pos_where=pos_where, neg_where=neg_where)
    np.testing.assert_allclose(got, np.mean(pos_ref) + np.mean(neg_ref), rtol=1e-12)
    unmasked = [math.log1p(math.exp(-s)) for s in pos.ravel()], [math.log1p(math.exp(s)) for s in neg.ravel()]
    np.testing.assert_allclose(bce_loss(pos, neg), np.mean(unmasked[0]) + np.mean(unmasked[1]), rtol=1e-12)
    # nothing valid: 0 with zero gradients
    grads = jax.grad(lambda p, n: bce_loss(p, n, pos_where=np.zeros((4, 3), bool), neg_where=np.zeros((4, 5), bool)),
                     argnums=(0, 1))(jnp.asarray(pos), jnp.asarray(neg))
    assert all(np.all(np.asarray(g) == 0) for g in grads)


# ----------------------------------------------------------------------------------------------
# limits and invariances
# ----------------------------------------------------------------------------------------------


def test_tau_to_zero_gives_exact_ranks_and_exact_ndcg(x64):
    rng = np.random.default_rng(7)
    n_users, n_slots = 6, 11
    # distinct scores, gaps >= 0.01 >> tau
    scores = np.stack([rng.permutation(n_slots) * 0.01 + rng.normal() for _ in range(n_users)])
    valid = rng.random((n_users, n_slots)) < 0.75
    valid[:, 0] = True
    labels = (rng.random((n_users, n_slots)) < 0.4).astype(np.int32)
    labels[:, 0] = 1
    got_ranks = np.asarray(smooth_ranks(scores, valid, tau=1e-4))
    want_ranks = np.stack([exact_ranks(scores[u], valid[u]) for u in range(n_users)])
    np.testing.assert_allclose(got_ranks[valid], want_ranks[valid], atol=1e-9)
    got_ndcg = np.asarray(smooth_ndcg(scores, labels, where=valid, tau=1e-4, reduce=None))
    want_ndcg = np.array([exact_ndcg(scores[u], labels[u], valid[u]) for u in range(n_users)])
    np.testing.assert_allclose(got_ndcg, want_ndcg, atol=1e-9)
    assert np.any(want_ndcg < 0.99)  # the check is not trivially 1 everywhere


def test_masking_an_entry_equals_dropping_it(x64):
    rng = np.random.default_rng(8)
    scores = rng.normal(size=10)
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 0, 1, 0])
    for dropped in (0, 1, 5, 9):  # positives and negatives, first and last slot
        valid = np.ones(10, bool)
        valid[dropped] = False
        keep = np.flatnonzero(valid)
        masked = smooth_ranks(scores[None], valid[None], tau=0.3)[0]
        dropped_list = smooth_ranks(scores[keep][None], tau=0.3)[0]
        np.testing.assert_allclose(np.asarray(masked)[keep], dropped_list, rtol=1e-12)
        for fn in (smooth_ndcg, smooth_recall):
            kwargs = {"tau_k": 0.7, "k": 2} if fn is smooth_recall else {}
            np.testing.assert_allclose(
                fn(scores[None], labels[None], where=valid[None], tau=0.3, **kwargs),
                fn(scores[keep][None], labels[keep][None], tau=0.3, **kwargs),
                rtol=1e-12,
            )
        np.testing.assert_allclose(
            item_loss(scores[None], labels[None], where=valid[None], negative_weight=3.0),
            item_loss(scores[keep][None], labels[keep][None], negative_weight=3.0),
            rtol=1e-12,
        )


def test_masked_entries_with_nonfinite_scores_do_not_leak(x64):
    scores, labels, valid = random_batch(9)
    poisoned = np.where(valid, scores, np.nan)
    poisoned[3, ~valid[3]] = np.inf
    clean = item_loss(scores, labels, where=valid)
    np.testing.assert_allclose(item_loss(poisoned, labels, where=valid), clean, rtol=1e-12)
    grad = np.asarray(jax.grad(lambda s: item_loss(s, labels, where=valid))(jnp.asarray(poisoned)))
    assert np.all(np.isfinite(grad))
    assert np.all(grad[~valid] == 0)


def test_query_slots_equal_full_computation(x64):
    rng = np.random.default_rng(10)
    n_users, n_pos, n_neg = 4, 3, 7
    scores = rng.normal(size=(n_users, n_pos + n_neg))
    labels = np.concatenate([np.ones((n_users, n_pos)), np.zeros((n_users, n_neg))], 1)
    valid = rng.random(scores.shape) < 0.8
    query = np.arange(n_pos)
    full = np.asarray(smooth_ranks(scores, valid, tau=0.2))
    part = np.asarray(smooth_ranks(scores, valid, query=query, tau=0.2))
    assert part.shape == (n_users, n_pos)
    np.testing.assert_allclose(part, full[:, :n_pos], rtol=1e-12)
    per_user_query = np.stack([rng.permutation(n_pos + n_neg)[:5] for _ in range(n_users)])
    np.testing.assert_allclose(
        smooth_ranks(scores, valid, query=per_user_query, tau=0.2),
        np.take_along_axis(full, per_user_query, 1), rtol=1e-12,
    )
    for kwargs in ({"metric": "ndcg", "negative_weight": 2.0}, {"metric": "recall", "k": 2}):
        np.testing.assert_allclose(
            item_loss(scores, labels, where=valid, query=query, **kwargs),
            item_loss(scores, labels, where=valid, **kwargs), rtol=1e-12,
        )


def test_jit_equals_no_jit():
    scores, labels, valid = random_batch(11)
    scores = jnp.asarray(scores, jnp.float32)
    for fn in (
        lambda s: smooth_ranks(s, valid, tau=0.2),
        lambda s: smooth_ndcg(s, labels, where=valid, reduce=None),
        lambda s: smooth_recall(s, labels, where=valid, k=3, reduce=None),
        lambda s: item_loss(s, labels, where=valid, negative_weight=4.0),
    ):
        np.testing.assert_allclose(jax.jit(fn)(scores), fn(scores), rtol=1e-6)


def test_leading_axes_equal_loop_over_users(x64):
    rng = np.random.default_rng(12)
    scores = rng.normal(size=(2, 3, 8))
    labels = (rng.random((2, 3, 8)) < 0.4).astype(int)
    valid = rng.random((2, 3, 8)) < 0.8
    batched = np.asarray(smooth_ndcg(scores, labels, where=valid, tau=0.3, reduce=None))
    assert batched.shape == (2, 3)
    for a in range(2):
        for b in range(3):
            single = smooth_ndcg(scores[a, b][None], labels[a, b][None], where=valid[a, b][None], tau=0.3, reduce=None)
            np.testing.assert_allclose(batched[a, b], single[0], rtol=1e-12)


def test_raising_a_positive_score_lowers_the_loss():
    rng = np.random.default_rng(13)
    scores = jnp.asarray(rng.normal(size=(3, 10)), jnp.float32)
    labels = jnp.asarray((np.arange(10) < 3)[None].repeat(3, 0).astype(np.int32))
    for metric in ("ndcg", "recall"):
        base = item_loss(scores, labels, metric=metric, tau=0.5, k=3, tau_k=1.0)
        raised = item_loss(scores.at[1, 0].add(1.0), labels, metric=metric, tau=0.5, k=3, tau_k=1.0)
        lowered_negative = item_loss(scores.at[1, 7].add(-1.0), labels, metric=metric, tau=0.5, k=3, tau_k=1.0)
        assert raised < base and lowered_negative < base
        grad = np.asarray(jax.grad(lambda s: item_loss(s, labels, metric=metric, tau=0.5, k=3))(scores))
        # raising a negative only pushes positives down; raising all positives together only
        # lifts them over negatives (positive-positive terms cancel in the sum of their gradients)
        assert np.all(grad[:, 3:] > 0) and np.all(grad[:, :3].sum(1) < 0)
    # with a single positive per user, raising it alone always helps
    single = jnp.asarray((np.arange(10) < 1)[None].repeat(3, 0).astype(np.int32))
    grad = np.asarray(jax.grad(lambda s: item_loss(s, single, tau=0.5))(scores))
    assert np.all(grad[:, 0] < 0) and np.all(grad[:, 1:] > 0)


# ----------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------


def test_gradients_finite_for_all_masked_users_and_huge_gaps():
    scores = jnp.array(
        [
            [1.0, 2.0, 3.0, 4.0],  # all masked
            [1e30, -1e30, 0.0, 5.0],  # huge gaps
            [7.0, 7.0, 7.0, 7.0],  # ties
            [0.0, 0.0, 0.0, 0.0],  # valid but no positive
        ],
        jnp.float32,
    )
    labels = jnp.array([[1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    where = jnp.array([[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], bool)
    for metric in ("ndcg", "recall"):
        for tau in (1e-6, 0.1, 10.0):
            loss, grad = jax.value_and_grad(lambda s: item_loss(s, labels, where=where, metric=metric, tau=tau,
                                                                negative_weight=100.0))(scores)
            assert np.isfinite(loss) and np.all(np.isfinite(np.asarray(grad)))
            assert np.all(np.asarray(grad)[0] == 0) and np.all(np.asarray(grad)[3] == 0)
    # a batch where nobody has a valid positive: loss 0, gradient 0
    loss, grad = jax.value_and_grad(lambda s: item_loss(s, labels, where=jnp.zeros_like(where)))(scores)
    assert loss == 0 and np.all(np.asarray(grad) == 0)
    grad = jax.grad(lambda s: smooth_ranks(s, where, tau=1e-3).sum())(scores)
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"metric": "ndcg", "tau": 0.3},
        {"metric": "ndcg", "tau": 1.0, "negative_weight": 5.0},
        {"metric": "recall", "tau": 0.3, "k": 2, "tau_k": 0.8},
    ],
)
def test_gradients_match_central_differences_float64(x64, kwargs):
    scores, labels, valid = random_batch(14, n_users=4, n_slots=6, p_positive=0.5)
    fn = jax.jit(lambda s: item_loss(s, labels, where=valid, **kwargs))
    grad = np.asarray(jax.grad(fn)(jnp.asarray(scores)))
    assert grad.dtype == np.float64
    want = central_differences(lambda s: fn(jnp.asarray(s)), scores)
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-8)
    assert np.abs(grad).max() > 1e-3


def test_bad_options_raise_config_error():
    scores, labels = jnp.zeros((1, 3)), jnp.ones((1, 3))
    with pytest.raises(ConfigError, match="metric"):
        item_loss(scores, labels, metric="map")
    with pytest.raises(ConfigError, match="reduce"):
        smooth_ndcg(scores, labels, reduce="max")
    with pytest.raises(ConfigError, match="tau"):
        smooth_ranks(scores, tau=0.0)


# ----------------------------------------------------------------------------------------------
# property tests
# ----------------------------------------------------------------------------------------------

N_USERS, N_SLOTS = 3, 6
_jitted_metrics = jax.jit(
    lambda s, l, w, tau: (
        smooth_ndcg(s, l, where=w, tau=tau, reduce=None),
        smooth_recall(s, l, where=w, k=2, tau=tau, reduce=None),
        jax.value_and_grad(lambda x: item_loss(x, l, where=w, tau=tau))(s),
        smooth_ranks(s, w, tau=tau),
    )
)


@settings(max_examples=60, deadline=None)
@given(
    scores=hnp.arrays(np.float32, (N_USERS, N_SLOTS),
                      elements=st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_infinity=False)),
    labels=hnp.arrays(np.int32, (N_USERS, N_SLOTS), elements=st.integers(0, 1)),
    where=hnp.arrays(np.bool_, (N_USERS, N_SLOTS)),
    tau=st.sampled_from([1e-4, 0.01, 0.1, 1.0, 100.0]),
)
def test_property_outputs_finite_and_in_unit_interval(scores, labels, where, tau):
    ndcg, recall, (loss, grad), ranks = jax.tree.map(np.asarray, _jitted_metrics(scores, labels, where, np.float32(tau)))
    for value in (ndcg, recall, loss, grad, ranks):
        assert np.all(np.isfinite(value))
    assert np.all(ndcg >= 0) and np.all(ndcg <= 1 + 1e-5)
    assert np.all(recall >= 0) and np.all(recall <= 1)
    assert -1e-5 <= loss <= 1 + 1e-5  # 1 - NDCG~ with float32 rounding, as NDCG~ <= 1 + 1e-5 above
    n_valid = where.sum(1, keepdims=True)
    assert np.all(ranks >= 1 - 1e-6) and np.all(ranks <= n_valid + 1 + 1e-4)
    no_positive = (labels * where).sum(1) == 0
    assert np.all(ndcg[no_positive] == 0) and np.all(recall[no_positive] == 0)
    assert np.all(grad[~where] == 0)


# ----------------------------------------------------------------------------------------------
# SupRank linear tail (slope)
# ----------------------------------------------------------------------------------------------


def test_slope_ranks_and_ndcg_match_float64_loops():
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(3, 9)) * 2.0
    labels = (rng.random((3, 9)) < 0.4).astype(float)
    valid = rng.random((3, 9)) < 0.8
    valid[2] = False  # an all-masked user
    with jax.enable_x64():
        ranks = np.asarray(smooth_ranks(jnp.asarray(scores), where=valid, tau=0.3, slope=2.5))
        ndcg = np.asarray(smooth_ndcg(jnp.asarray(scores), labels, where=valid, tau=0.3, slope=2.5, reduce=None))
    for b in range(3):
        np.testing.assert_allclose(ranks[b], ref_ranks(scores[b], valid[b], 0.3, slope=2.5), rtol=1e-12)
        np.testing.assert_allclose(ndcg[b], ref_ndcg(scores[b], labels[b], valid[b], 0.3, slope=2.5), rtol=1e-12)


def test_slope_keeps_gradient_of_a_saturated_positive():
    """With the sigmoid saturated (positive far below every negative) the plain loss has no
    gradient; the linear tail pulls the positive up by ``slope`` per negative ahead of it."""
    scores = jnp.array([[-40.0, 0.0, 1.0, 2.0]])
    labels = jnp.array([[1.0, 0.0, 0.0, 0.0]])
    plain = jax.grad(lambda s: item_loss(s, labels, tau=0.1))(scores)
    tail = jax.grad(lambda s: item_loss(s, labels, tau=0.1, slope=1.0))(scores)
    assert abs(float(plain[0, 0])) < 1e-30
    assert float(tail[0, 0]) < -1e-4  # raising the positive lowers the loss
    rank = 1 + 3 * 1.0 + (40 + 41 + 42) * 1.0  # per negative: sigmoid ~1 plus slope * gap
    expected = -3.0 / (math.log(2) * (1 + rank) * math.log2(1 + rank) ** 2)  # d(1 - 1/log2(1+r))/ds_p
    np.testing.assert_allclose(float(tail[0, 0]), expected, rtol=1e-4)


def test_negative_slope_is_refused():
    with pytest.raises(ConfigError, match="slope"):
        item_loss(jnp.zeros((1, 3)), jnp.array([[1.0, 0.0, 0.0]]), slope=-1.0)


# ----------------------------------------------------------------------------------------------
# detach_positive_pairs
# ----------------------------------------------------------------------------------------------


def test_detached_positive_pairs_keep_the_value_and_drop_their_gradient():
    """Same loss value; the gradient equals that of a float64 loss in which the positive-vs-
    positive sigmoids are constants (computed at the current scores), by central differences."""
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(2, 8))
    labels = np.array([[1, 1, 1, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0, 0, 0]], float)
    valid = np.ones((2, 8), bool)
    valid[1, 7] = False
    tau = 0.5
    with jax.enable_x64():
        def loss(s, detach):
            return item_loss(s, labels, where=valid, tau=tau, detach_positive_pairs=detach)

        plain, detached = float(loss(jnp.asarray(scores), False)), float(loss(jnp.asarray(scores), True))
        grad = np.asarray(jax.grad(loss)(jnp.asarray(scores), True))
        grad_plain = np.asarray(jax.grad(loss)(jnp.asarray(scores), False))
    assert detached == pytest.approx(plain, rel=1e-12)

    def frozen_loss(s):  # positive-vs-positive terms frozen at `scores`
        per_user = []
        for b in range(2):
            pos = [i for i in range(8) if labels[b, i] > 0 and valid[b, i]]
            dcg = 0.0
            for p in pos:
                rank = 1.0
                for j in range(8):
                    if j == p or not valid[b, j]:
                        continue
                    src = scores if j in pos else s
                    rank += sigmoid((src[b, j] - src[b, p]) / tau)
                dcg += 1.0 / math.log2(1.0 + rank)
            per_user.append(1.0 - dcg / sum(1.0 / math.log2(1.0 + r) for r in range(1, len(pos) + 1)))
        return float(np.mean(per_user))

    eps = 1e-6
    numeric = np.zeros_like(scores)
    for b in range(2):
        for i in range(8):
            up, down = scores.copy(), scores.copy()
            up[b, i] += eps
            down[b, i] -= eps
            numeric[b, i] = (frozen_loss(up) - frozen_loss(down)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-8)
    assert not np.allclose(grad, grad_plain, atol=1e-6)  # the option changes something


def test_ndcg_plus_recall_is_the_sum_of_both_losses():
    rng = np.random.default_rng(11)
    scores = jnp.asarray(rng.normal(size=(4, 10)) * 3)
    labels = jnp.asarray((rng.random((4, 10)) < 0.3).astype(float))
    labels = labels.at[3].set(0.0)  # a user without positives counts in neither mean
    both = float(item_loss(scores, labels, metric="ndcg+recall", k=3, tau_k=2.0))
    ndcg = float(item_loss(scores, labels, metric="ndcg", k=3))
    recall = float(item_loss(scores, labels, metric="recall", k=3, tau_k=2.0))
    assert both == pytest.approx(ndcg + recall, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# SupRank margin of the linear tail
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("margin, slope", [(0.5, 1.0), (2.0, 3.0), (1e-3, 0.5)])
def test_margin_ranks_and_ndcg_match_float64_loops(x64, margin, slope):
    scores, labels, valid = random_batch(15, n_slots=10, scale=2.0)
    ranks = np.asarray(smooth_ranks(scores, valid, tau=0.3, slope=slope, margin=margin))
    ndcg = np.asarray(smooth_ndcg(scores, labels, where=valid, tau=0.3, slope=slope, margin=margin, reduce=None,
                                  negative_weight=2.0))
    recall = np.asarray(smooth_recall(scores, labels, where=valid, tau=0.3, slope=slope, margin=margin, k=2,
                                      tau_k=0.7, reduce=None))
    for u in range(len(scores)):
        np.testing.assert_allclose(ranks[u], ref_ranks(scores[u], valid[u], 0.3, slope=slope, margin=margin),
                                   rtol=1e-12)
        np.testing.assert_allclose(ndcg[u], ref_ndcg(scores[u], labels[u], valid[u], 0.3, 2.0, slope, margin),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(recall[u], ref_recall(scores[u], labels[u], valid[u], 0.3, 2, 0.7, slope, margin),
                                   rtol=1e-12, atol=1e-12)
    no_margin = np.asarray(smooth_ranks(scores, valid, tau=0.3, slope=slope))
    assert np.abs(ranks - no_margin).max() > 1e-4  # the margin changes something


def test_margin_tail_keeps_gradient_beyond_the_margin(x64):
    """A positive far below three negatives (gaps 40..42 > margin 5) keeps the tail's gradient,
    from those three only: the fourth negative is 4 ahead, inside the margin, and saturated."""
    scores = jnp.array([[-40.0, 0.0, 1.0, 2.0, -36.0]])
    labels = jnp.array([[1.0, 0.0, 0.0, 0.0, 0.0]])
    margin, slope = 5.0, 0.5
    plain = jax.grad(lambda s: item_loss(s, labels, tau=0.1, margin=margin))(scores)
    tail = jax.grad(lambda s: item_loss(s, labels, tau=0.1, slope=slope, margin=margin))(scores)
    assert abs(float(plain[0, 0])) < 1e-12
    rank = 1 + 4 * 1.0 + slope * ((40 - margin) + (41 - margin) + (42 - margin))
    d_loss_d_rank = 1.0 / (math.log(2) * (1 + rank) * math.log2(1 + rank) ** 2)  # d(1 - 1/log2(1+r))/dr
    np.testing.assert_allclose(float(tail[0, 0]), -3 * slope * d_loss_d_rank, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(tail[0, 1:4]), slope * d_loss_d_rank, rtol=1e-6)
    assert abs(float(tail[0, 4])) < 1e-12  # within the margin: no tail, sigmoid saturated
    # all competitors within the margin: no gradient at all, as without a tail
    within = jax.grad(lambda s: item_loss(s, labels, tau=0.1, slope=slope, margin=50.0))(scores)
    assert np.abs(np.asarray(within)).max() < 1e-12


def test_margin_zero_is_bit_identical_to_the_default(x64):
    scores, labels, valid = random_batch(16, scale=2.0)
    for slope in (0.0, 1.5):
        assert np.array_equal(smooth_ranks(scores, valid, slope=slope, margin=0.0),
                              smooth_ranks(scores, valid, slope=slope))
        for metric in ("ndcg", "recall", "ndcg+recall"):
            def loss(s, **kw):
                return item_loss(s, labels, where=valid, metric=metric, k=3, slope=slope, **kw)

            with_margin = jax.value_and_grad(lambda s: loss(s, margin=0.0))(jnp.asarray(scores))
            default = jax.value_and_grad(loss)(jnp.asarray(scores))
            assert np.array_equal(with_margin[0], default[0]) and np.array_equal(with_margin[1], default[1])
    np.testing.assert_allclose(smooth_ranks(scores, valid, tau=0.2, slope=1.5, margin=0.0),
                               np.stack([ref_ranks(scores[u], valid[u], 0.2, slope=1.5) for u in range(5)]), rtol=1e-12)


def test_negative_margin_is_refused():
    with pytest.raises(ConfigError, match="margin"):
        item_loss(jnp.zeros((1, 3)), jnp.array([[1.0, 0.0, 0.0]]), slope=1.0, margin=-0.5)
    with pytest.raises(ConfigError, match="margin"):
        smooth_ranks(jnp.zeros((1, 3)), margin=-1.0)


# ----------------------------------------------------------------------------------------------
# positive_pairs: "smooth", "detach", "exact"
# ----------------------------------------------------------------------------------------------


def batch_with_tied_positives(seed):
    scores, labels, valid = random_batch(seed, n_slots=10, p_positive=0.5, scale=2.0)
    labels[3, :4], valid[3, :4] = 1, True
    scores[3, 1] = scores[3, 0]  # two tied positives: the exact step counts 0 for a tie, sigmoid 1/2
    return scores, labels, valid


@pytest.mark.parametrize("slope, margin", [(0.0, 0.0), (2.0, 0.3)])
def test_exact_positive_pairs_match_float64_loops(x64, slope, margin):
    scores, labels, valid = batch_with_tied_positives(17)
    kwargs = {"tau": 0.4, "slope": slope, "margin": margin, "positive_pairs": "exact"}
    ndcg = np.asarray(smooth_ndcg(scores, labels, where=valid, reduce=None, **kwargs))
    recall = np.asarray(smooth_recall(scores, labels, where=valid, k=2, tau_k=0.5, reduce=None, **kwargs))
    want_ndcg = [ref_ndcg(scores[u], labels[u], valid[u], 0.4, 1.0, slope, margin, exact=True) for u in range(5)]
    want_recall = [ref_recall(scores[u], labels[u], valid[u], 0.4, 2, 0.5, slope, margin, exact=True)
                   for u in range(5)]
    np.testing.assert_allclose(ndcg, want_ndcg, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(recall, want_recall, rtol=1e-12, atol=1e-12)
    smooth = [ref_ndcg(scores[u], labels[u], valid[u], 0.4, 1.0, slope, margin) for u in range(5)]
    assert np.abs(np.array(want_ndcg) - smooth).max() > 1e-3  # the reference is not the smooth one
    # through the query path too: query slots holding every positive (and some negatives)
    query = np.stack([np.argsort(-(labels[u] * valid[u]), kind="stable")[:7] for u in range(5)])
    assert (labels * valid).sum(1).max() <= 7
    np.testing.assert_allclose(item_loss(scores, labels, where=valid, query=query, **kwargs),
                               item_loss(scores, labels, where=valid, **kwargs), rtol=1e-12)


def test_exact_positive_pairs_pass_no_gradient_between_positives(x64):
    # a list of positives only: every term is an exact step, so the gradient is exactly zero
    scores = jnp.asarray(np.random.default_rng(18).normal(size=(2, 6)) * 3)
    only_positives = jnp.ones((2, 6))
    for metric in ("ndcg", "recall", "ndcg+recall"):
        grad = jax.grad(lambda s: item_loss(s, only_positives, metric=metric, k=2, slope=1.0,
                                            positive_pairs="exact"))(scores)
        assert np.all(np.asarray(grad) == 0)
        smooth_grad = jax.grad(lambda s: item_loss(s, only_positives, metric=metric, k=2, slope=1.0))(scores)
        assert np.abs(np.asarray(smooth_grad)).max() > 1e-3
    # mixed lists: the gradient is that of the loop reference (whose steps are flat between ties)
    batch, labels, valid = random_batch(19, n_users=4, n_slots=7, p_positive=0.5)
    fn = jax.jit(lambda s: item_loss(s, labels, where=valid, tau=0.5, slope=0.8, margin=0.2, positive_pairs="exact"))
    grad = np.asarray(jax.grad(fn)(jnp.asarray(batch)))

    def ref_loss(s):
        has = [u for u in range(len(s)) if np.any((labels[u] > 0) & valid[u])]
        return np.mean([1 - ref_ndcg(s[u], labels[u], valid[u], 0.5, 1.0, 0.8, 0.2, exact=True) for u in has])

    np.testing.assert_allclose(grad, central_differences(ref_loss, batch), rtol=1e-6, atol=1e-8)
    assert np.abs(grad).max() > 1e-3


def test_positive_pairs_detach_and_smooth_equal_the_boolean_bit_for_bit(x64):
    scores, labels, valid = batch_with_tied_positives(20)
    for metric in ("ndcg", "recall", "ndcg+recall"):
        def loss(s, **kw):
            return item_loss(s, labels, where=valid, metric=metric, k=2, slope=0.5, **kw)

        for new, old in (({"positive_pairs": "detach"}, {"detach_positive_pairs": True}),
                         ({"positive_pairs": "detach", "detach_positive_pairs": True}, {"detach_positive_pairs": True}),
                         ({"positive_pairs": "smooth"}, {}),
                         ({"positive_pairs": "smooth", "detach_positive_pairs": False}, {})):
            got = jax.value_and_grad(lambda s: loss(s, **new))(jnp.asarray(scores))
            want = jax.value_and_grad(lambda s: loss(s, **old))(jnp.asarray(scores))
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), (metric, new)


def test_bad_positive_pairs_raise_config_error():
    scores, labels = jnp.zeros((1, 3)), jnp.array([[1.0, 1.0, 0.0]])
    with pytest.raises(ConfigError, match="positive_pairs"):
        item_loss(scores, labels, positive_pairs="frozen")
    for mode in ("smooth", "exact"):
        with pytest.raises(ConfigError, match="detach_positive_pairs"):
            smooth_ndcg(scores, labels, positive_pairs=mode, detach_positive_pairs=True)


# ----------------------------------------------------------------------------------------------
# several recall cut-offs
# ----------------------------------------------------------------------------------------------


def test_multi_k_recall_is_the_mean_of_single_k_recalls(x64):
    scores, labels, valid = random_batch(21, n_users=6, n_slots=14, p_positive=0.4, scale=2.0)
    ks = (1, 2, 4, 8)
    kwargs = {"where": valid, "tau": 0.3, "tau_k": 0.6, "reduce": None}
    got = np.asarray(smooth_recall(scores, labels, k=ks, **kwargs))
    singles = np.stack([np.asarray(smooth_recall(scores, labels, k=k, **kwargs)) for k in ks])
    np.testing.assert_allclose(got, singles.mean(0), rtol=1e-12)
    want = [ref_recall(scores[u], labels[u], valid[u], 0.3, ks, 0.6) for u in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.ptp(singles[:, 2:], axis=0).max() > 0.1  # the cut-offs (and their denominators) differ
    np.testing.assert_allclose(smooth_recall(scores, labels, k=list(ks), **kwargs), got, rtol=1e-12)
    has_positive = (labels * valid).sum(1) > 0
    for metric, expected in (("recall", np.mean(1 - got[has_positive])), (
            "ndcg+recall", float(item_loss(scores, labels, where=valid, tau=0.3)) + np.mean(1 - got[has_positive]))):
        fn = jax.jit(lambda s: item_loss(s, labels, where=valid, metric=metric, k=ks, tau=0.3, tau_k=0.6))
        np.testing.assert_allclose(fn(scores), expected, rtol=1e-12)


def test_single_int_k_unchanged_by_multi_k_support(x64):
    scores, labels, valid = random_batch(22, n_slots=12, p_positive=0.5)
    single = np.asarray(smooth_recall(scores, labels, where=valid, k=3, tau_k=0.5, reduce=None))
    np.testing.assert_allclose(single, [ref_recall(scores[u], labels[u], valid[u], 0.1, 3, 0.5) for u in range(5)],
                               rtol=1e-12, atol=1e-12)
    assert np.array_equal(smooth_recall(scores, labels, where=valid, k=(3,), tau_k=0.5, reduce=None), single)
    with pytest.raises(ConfigError, match="k"):
        smooth_recall(scores, labels, k=())
    with pytest.raises(ConfigError, match="k"):
        item_loss(scores, labels, metric="recall", k=(2, 0))


# ----------------------------------------------------------------------------------------------
# calibration term
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["ndcg", "recall", "ndcg+recall"])
def test_calibration_adds_the_weighted_pairwise_softplus(x64, metric):
    scores, labels, valid = random_batch(23, n_users=6, scale=3.0)
    labels[3] = 1  # a user with positives and no negative: C_u = 0, still counted in the mean
    assert ref_calibration(scores[3:4], labels[3:4], valid[3:4]) == 0.0
    kwargs = {"where": valid, "metric": metric, "k": 2, "tau": 0.3}
    base = float(item_loss(scores, labels, **kwargs))
    for weight in (0.25, 3.0):
        got = float(item_loss(scores, labels, calibration=weight, **kwargs))
        np.testing.assert_allclose(got, base + weight * ref_calibration(scores, labels, valid), rtol=1e-12)
    query = np.stack([np.random.default_rng(u).permutation(9)[:4] for u in range(6)])
    base = float(item_loss(scores, labels, query=query, **kwargs))
    got = float(item_loss(scores, labels, query=query, calibration=0.5, **kwargs))
    np.testing.assert_allclose(got, base + 0.5 * ref_calibration(scores, labels, valid, query), rtol=1e-12)
    assert ref_calibration(scores, labels, valid, query) != ref_calibration(scores, labels, valid)


def test_calibration_gradient_matches_central_differences_float64(x64):
    scores, labels, valid = random_batch(24, n_users=4, n_slots=6, p_positive=0.5)
    fn = jax.jit(lambda s: item_loss(s, labels, where=valid, tau=0.5, calibration=2.0))
    grad = np.asarray(jax.grad(fn)(jnp.asarray(scores)))
    np.testing.assert_allclose(grad, central_differences(lambda s: fn(jnp.asarray(s)), scores), rtol=1e-6, atol=1e-8)
    only_calibration = np.asarray(jax.grad(lambda s: item_loss(s, labels, where=valid, tau=0.5, calibration=2.0)
                                           - item_loss(s, labels, where=valid, tau=0.5))(jnp.asarray(scores)))
    want = central_differences(lambda s: 2.0 * ref_calibration(s, labels, valid), scores)
    np.testing.assert_allclose(only_calibration, want, rtol=1e-6, atol=1e-8)
    assert np.abs(want).max() > 1e-2


def test_calibration_is_nan_free_without_positives_or_negatives():
    scores = jnp.array(
        [
            [1.0, 2.0, 3.0, 4.0],  # all masked
            [1e30, -1e30, 0.0, 5.0],  # huge gaps
            [7.0, 7.0, 7.0, 7.0],  # positives only
            [0.0, 1.0, 2.0, 3.0],  # valid but no positive
        ],
        jnp.float32,
    )
    labels = jnp.array([[1, 0, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    where = jnp.array([[0, 0, 0, 0], [1, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], bool)
    for metric in ("ndcg", "recall"):
        loss, grad = jax.value_and_grad(lambda s: item_loss(s, labels, where=where, metric=metric,
                                                            calibration=1.0))(scores)
        grad = np.asarray(grad)
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
        assert np.all(grad[0] == 0) and np.all(grad[2] == 0) and np.all(grad[3] == 0) and np.all(grad[~where] == 0)
    nobody = jnp.zeros_like(where)
    loss, grad = jax.value_and_grad(lambda s: item_loss(s, labels, where=nobody, calibration=1.0))(scores)
    assert loss == 0 and np.all(np.asarray(grad) == 0)
    with pytest.raises(ConfigError, match="calibration"):
        item_loss(scores, labels, calibration=-1.0)


# ----------------------------------------------------------------------------------------------
# item_loss_blocks: [positives | negatives] lists, P x P and P x N blocks built apart
# ----------------------------------------------------------------------------------------------


def block_lists(seed, n_users=7, n_pos=5, n_neg=9):
    """Random ``[positives | negatives]`` lists with padding, ties and the corner-case users."""
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(n_users, n_pos)) * 1.5
    neg = rng.normal(size=(n_users, n_neg)) * 1.5
    pos_where = rng.random((n_users, n_pos)) < 0.7
    neg_where = rng.random((n_users, n_neg)) < 0.85
    pos_where[0] = False  # a user without valid positives
    pos_where[1], neg_where[1] = False, False  # an all-masked user
    pos_where[2], neg_where[2] = True, False  # positives only, no valid negative
    pos_where[3, :3] = True
    pos[3, 1] = pos[3, 0]  # tied positives
    neg[3, 2] = pos[3, 0]  # a negative tied with a positive
    pos[4, ~pos_where[4]] = np.nan  # masked scores must not leak
    neg[4, 0], neg_where[4, 0] = np.inf, False
    return pos, neg, pos_where, neg_where


BLOCK_CASES = [
    dict(metric="ndcg", positive_pairs="smooth"),
    dict(metric="ndcg", positive_pairs="detach", negative_weight=3.5),
    dict(metric="recall", positive_pairs="exact", k=2, tau_k=0.7),
    dict(metric="ndcg+recall", positive_pairs="detach", k=(1, 3), tau_k=2.0, calibration=0.4),
    dict(metric="ndcg+recall", positive_pairs="exact", slope=0.6, margin=0.2, calibration=1.5),
    dict(metric="recall", positive_pairs="smooth", slope=0.3, k=3, tau_k=1.0, negative_weight="per-user"),
    dict(metric="ndcg", detach_positive_pairs=True, tau=0.05, clamp=4.0),  # the older boolean; a clamped sigmoid
]


def _old_formula(pos, neg, pos_where, neg_where, **kwargs):
    """The objective's former call: item_loss on the concatenated list, only the positives ranked."""
    scores = jnp.concatenate([pos, neg], -1)
    labels = jnp.concatenate([jnp.ones(pos.shape), jnp.zeros(neg.shape)], -1)
    where = jnp.concatenate([pos_where, neg_where], -1)
    return item_loss(scores, labels, where=where, query=jnp.arange(pos.shape[-1]), **kwargs)


@pytest.mark.parametrize("case", range(len(BLOCK_CASES)))
def test_item_loss_blocks_equals_item_loss_on_the_concatenated_list_float64(x64, case):
    from itemjax.objective.ranking_losses import item_loss_blocks

    pos, neg, pos_where, neg_where = block_lists(30 + case)
    kwargs = dict(BLOCK_CASES[case])
    kwargs.setdefault("tau", 0.3)
    if kwargs.get("negative_weight") == "per-user":
        kwargs["negative_weight"] = jnp.asarray(np.linspace(0.5, 4.0, pos.shape[0]))

    def old(p, n, w):
        return _old_formula(p, n, pos_where, neg_where, **{**kwargs, "negative_weight": w})

    def new(p, n, w):
        return item_loss_blocks(p, n, pos_where=pos_where, neg_where=neg_where, **{**kwargs, "negative_weight": w})

    weight = kwargs.get("negative_weight", 1.0)
    args = (jnp.asarray(pos), jnp.asarray(neg), jnp.asarray(weight, jnp.float64))
    want, want_grads = jax.value_and_grad(old, argnums=(0, 1, 2))(*args)
    got, got_grads = jax.jit(jax.value_and_grad(new, argnums=(0, 1, 2)))(*args)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    for g, w in zip(got_grads, want_grads):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-13)
    assert 0 < float(want) and np.abs(want_grads[0]).max() > 1e-3 and np.abs(want_grads[1]).max() > 1e-3
    assert np.all(np.asarray(got_grads[0])[~pos_where] == 0) and np.all(np.asarray(got_grads[1])[~neg_where] == 0)


def test_item_loss_blocks_per_list_temperature_matches_float64_loops(x64):
    """A ``[B]`` temperature (``--tau-by-positives``): each list ranked at its own ``tau_u``, against
    the float64 loop reference, and equal to one ``tau`` on the list's scores divided by ``tau_u / tau``
    (the tail and calibration terms off, which see the raw score gaps)."""
    from itemjax.objective.ranking_losses import item_loss_blocks

    pos, neg, pos_where, neg_where = block_lists(42)
    pos, neg = np.nan_to_num(pos), np.nan_to_num(neg, posinf=0.0)
    taus = np.linspace(0.1, 0.9, pos.shape[0])
    got = item_loss_blocks(jnp.asarray(pos), jnp.asarray(neg), pos_where=pos_where, neg_where=neg_where,
                           metric="ndcg", tau=jnp.asarray(taus), positive_pairs="smooth")
    scores, where = np.concatenate([pos, neg], 1), np.concatenate([pos_where, neg_where], 1)
    labels = np.concatenate([np.ones(pos.shape), np.zeros(neg.shape)], 1)
    ndcgs = [ref_ndcg(scores[u], labels[u], where[u], taus[u]) for u in range(len(taus)) if pos_where[u].any()]
    np.testing.assert_allclose(got, 1.0 - np.mean(ndcgs), rtol=1e-12)
    assert len(set(np.round(ndcgs, 6))) > 3  # the temperatures differ enough to matter

    scale = jnp.asarray(taus / 0.1)[:, None]
    kwargs = dict(pos_where=pos_where, neg_where=neg_where, metric="ndcg+recall", k=3, tau_k=2.0,
                  positive_pairs="detach")
    per_list = jax.value_and_grad(lambda p, n: item_loss_blocks(p, n, tau=jnp.asarray(taus), **kwargs), (0, 1))
    rescaled = jax.value_and_grad(lambda p, n: item_loss_blocks(p / scale, n / scale, tau=0.1, **kwargs), (0, 1))
    (want, want_grads), (got, got_grads) = rescaled(jnp.asarray(pos), jnp.asarray(neg)), jax.jit(per_list)(
        jnp.asarray(pos), jnp.asarray(neg))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-13)


def test_item_loss_blocks_all_negatives_valid_and_traced_detach_flag(x64):
    """``neg_where=None`` (every negative valid) and a traced ``detach_positive_pairs``."""
    from itemjax.objective.ranking_losses import item_loss_blocks

    pos, neg, pos_where, _ = block_lists(40)
    neg[4, 0] = 0.5  # every negative is valid here: a finite score
    all_valid = np.ones(neg.shape, bool)
    for detach in (False, True):
        def old(p, n, flag):
            return _old_formula(p, n, pos_where, all_valid, metric="ndcg+recall", k=2, tau=0.2,
                                detach_positive_pairs=flag)

        def new(p, n, flag):
            return item_loss_blocks(p, n, pos_where=pos_where, metric="ndcg+recall", k=2, tau=0.2,
                                    detach_positive_pairs=flag)

        want = jax.value_and_grad(old, argnums=(0, 1))(jnp.asarray(pos), jnp.asarray(neg), detach)
        got = jax.jit(jax.value_and_grad(new, argnums=(0, 1)))(jnp.asarray(pos), jnp.asarray(neg), jnp.asarray(detach))
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
        for g, w in zip(got[1], want[1]):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-13)
    smooth = jax.grad(lambda p: item_loss_blocks(p, jnp.asarray(neg), pos_where=pos_where))(jnp.asarray(pos))
    detached = jax.grad(lambda p: item_loss_blocks(p, jnp.asarray(neg), pos_where=pos_where,
                                                   positive_pairs="detach"))(jnp.asarray(pos))
    assert np.abs(np.asarray(smooth - detached)).max() > 1e-4  # the positive block's gradient is really dropped


def test_item_loss_blocks_keeps_float32_and_checks_its_options():
    from itemjax.objective.ranking_losses import item_loss_blocks

    pos, neg, pos_where, neg_where = block_lists(41)
    pos, neg = np.nan_to_num(pos).astype(np.float32), np.nan_to_num(neg, posinf=0.0).astype(np.float32)
    loss, grad = jax.value_and_grad(lambda p: item_loss_blocks(p, neg, pos_where=pos_where, neg_where=neg_where,
                                                               metric="ndcg+recall", positive_pairs="exact"))(pos)
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.float32
    jaxpr = str(jax.make_jaxpr(lambda p: item_loss_blocks(p, neg, pos_where=pos_where, metric="ndcg+recall"))(pos))
    assert "f64" not in jaxpr and "i64" not in jaxpr
    np.testing.assert_allclose(loss, _old_formula(pos, neg, pos_where, neg_where, metric="ndcg+recall",
                                                  positive_pairs="exact"), rtol=1e-6)
    for bad in (dict(metric="map"), dict(tau=0.0), dict(slope=-1.0), dict(calibration=-0.1),
                dict(positive_pairs="frozen"), dict(positive_pairs="exact", detach_positive_pairs=True)):
        with pytest.raises(ConfigError):
            item_loss_blocks(pos, neg, **bad)
