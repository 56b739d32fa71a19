"""Tests of itemjax.evaluation.metrics against float64 plain-loop references and hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from itemjax.errors import ConfigError
from itemjax.evaluation.metrics import mean_over_users, topk_metrics


def reference_metrics(hits_row, n_rel, k):
    """float64 plain-loop Recall / NDCG / Precision / HitRate of one user at cutoff k."""
    if n_rel == 0:
        return {"recall": 0.0, "ndcg": 0.0, "precision": 0.0, "hitrate": 0.0}
    n_hits = 0.0
    dcg = 0.0
    for r in range(k):
        if hits_row[r]:
            n_hits += 1.0
            dcg += 1.0 / math.log2(r + 2)
    idcg = 0.0
    for r in range(min(n_rel, k)):
        idcg += 1.0 / math.log2(r + 2)
    return {
        "recall": n_hits / n_rel,
        "ndcg": dcg / idcg,
        "precision": n_hits / k,
        "hitrate": 1.0 if n_hits > 0 else 0.0,
    }


def random_hit_patterns(rng, n_users, k_max):
    """Consistent random cases: each user has n_rel relevant items, at most n_rel of them hit."""
    n_relevant = rng.integers(0, k_max + 8, size=n_users)
    n_relevant[:3] = [0, 1, k_max + 5]  # no target, one target, more targets than slots
    hits = np.zeros((n_users, k_max), dtype=bool)
    for b in range(n_users):
        n_hits = rng.integers(0, min(n_relevant[b], k_max) + 1)
        hits[b, rng.choice(k_max, size=n_hits, replace=False)] = True
    return hits, n_relevant


def test_hand_computed_single_user():
    # Hits at ranks 0 and 2 of a top-3 list, 2 relevant items.
    out = topk_metrics(jnp.array([[True, False, True]]), jnp.array([2]), ks=(1, 3))
    assert out["recall@3"][0] == pytest.approx(1.0)
    assert out["precision@3"][0] == pytest.approx(2.0 / 3.0)
    assert out["hitrate@3"][0] == pytest.approx(1.0)
    assert out["ndcg@3"][0] == pytest.approx((1.0 + 0.5) / (1.0 + 1.0 / math.log2(3)), rel=1e-6)
    # At k = 1: the top item is a hit; ideal DCG truncates at min(n_rel, 1) = 1.
    assert out["recall@1"][0] == pytest.approx(0.5)
    assert out["precision@1"][0] == pytest.approx(1.0)
    assert out["ndcg@1"][0] == pytest.approx(1.0)


def test_recall_denominator_is_n_relevant_not_k():
    # 30 relevant items, all 5 slots hit: recall = 5/30 (LightGCN convention), ndcg = 1.
    out = topk_metrics(jnp.ones((1, 5), bool), jnp.array([30]), ks=(5,))
    assert out["recall@5"][0] == pytest.approx(5 / 30)
    assert out["ndcg@5"][0] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_float64_loop_reference(seed):
    rng = np.random.default_rng(seed)
    k_max = 25
    ks = (1, 5, 10, 25)
    hits, n_relevant = random_hit_patterns(rng, 40, k_max)
    out = topk_metrics(jnp.asarray(hits), jnp.asarray(n_relevant), ks)
    for k in ks:
        for name in ("recall", "ndcg", "precision", "hitrate"):
            expected = [reference_metrics(hits[b], int(n_relevant[b]), k)[name] for b in range(len(hits))]
            np.testing.assert_allclose(np.asarray(out[f"{name}@{k}"]), expected, rtol=1e-6, atol=1e-7)


def test_float_hits_equal_bool_hits():
    rng = np.random.default_rng(3)
    hits, n_relevant = random_hit_patterns(rng, 20, 10)
    from_bool = topk_metrics(jnp.asarray(hits), jnp.asarray(n_relevant), (3, 10))
    from_float = topk_metrics(jnp.asarray(hits, jnp.float32), jnp.asarray(n_relevant), (3, 10))
    for name in from_bool:
        np.testing.assert_array_equal(np.asarray(from_bool[name]), np.asarray(from_float[name]))


def test_no_relevant_or_masked_users_get_zero_not_nan():
    hits = jnp.array([[True, True, False], [True, False, False], [False, False, False]])
    n_relevant = jnp.array([2, 0, 0])
    where = jnp.array([False, True, True])
    out = topk_metrics(hits, n_relevant, (1, 3), where=where)
    for name, values in out.items():
        values = np.asarray(values)
        assert np.all(np.isfinite(values)), name
        np.testing.assert_array_equal(values, 0.0, err_msg=name)
    # Unmasked, the first user does score.
    assert float(topk_metrics(hits, n_relevant, (3,))["recall@3"][0]) == pytest.approx(1.0)


def test_jit_equals_no_jit():
    rng = np.random.default_rng(4)
    hits, n_relevant = random_hit_patterns(rng, 30, 20)
    where = rng.random(30) < 0.8
    args = (jnp.asarray(hits), jnp.asarray(n_relevant))
    eager = topk_metrics(*args, (1, 7, 20), where=jnp.asarray(where))
    jitted = jax.jit(topk_metrics, static_argnames="ks")(*args, ks=(1, 7, 20), where=jnp.asarray(where))
    assert eager.keys() == jitted.keys()
    for name in eager:
        np.testing.assert_allclose(np.asarray(jitted[name]), np.asarray(eager[name]), rtol=1e-6, atol=0)


def test_mean_over_users_matches_numpy_and_is_zero_when_empty():
    rng = np.random.default_rng(5)
    values = rng.random(12).astype(np.float32)
    valid = rng.random(12) < 0.5
    valid[0] = True
    means = mean_over_users({"recall@20": jnp.asarray(values)}, jnp.asarray(valid))
    assert float(means["recall@20"]) == pytest.approx(values[valid].astype(np.float64).mean(), rel=1e-6)
    empty = mean_over_users({"recall@20": jnp.asarray(values)}, jnp.zeros(12, bool))
    assert float(empty["recall@20"]) == 0.0


def test_mean_over_users_excludes_masked_users():
    out = topk_metrics(jnp.array([[True, False], [False, False]]), jnp.array([1, 0]), (2,))
    # The second user has no relevant item: masking it gives the first user's value, 1.0.
    means = mean_over_users(out, jnp.array([1, 0]) > 0)
    assert float(means["recall@2"]) == pytest.approx(1.0)
    assert float(means["hitrate@2"]) == pytest.approx(1.0)


@pytest.mark.parametrize("ks", [(), (0,), (4,), (2.5,), (True,)])
def test_bad_cutoffs_raise_config_error(ks):
    with pytest.raises(ConfigError):
        topk_metrics(jnp.zeros((2, 3), bool), jnp.array([1, 1]), ks)
