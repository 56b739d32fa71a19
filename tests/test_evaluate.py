"""Tests of itemjax.evaluation.evaluate against a float64 numpy plain-loop full-ranking reference."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from itemjax.errors import ConfigError, DataError
from itemjax.evaluation.evaluate import evaluate, popularity_embeddings, popularity_scores

METRICS = ("recall", "ndcg", "precision", "hitrate")


def reference_per_user(scores, exclude_sets, target_sets, users, ks):
    """float64 loops: rank the non-excluded items of each user by score (ties: lower id
    first), then Recall (denominator n_rel), NDCG (ideal truncated at min(n_rel, k)),
    Precision, HitRate at every k."""
    out = {f"{m}@{k}": np.zeros(len(users)) for k in ks for m in METRICS}
    for position, u in enumerate(users):
        targets = target_sets[u]
        n_rel = len(targets)
        if n_rel == 0:
            continue
        candidates = np.array([i for i in range(scores.shape[1]) if i not in exclude_sets[u]], dtype=np.int64)
        ranked = candidates[np.argsort(-scores[u, candidates], kind="stable")]
        for k in ks:
            n_hits, dcg, idcg = 0, 0.0, 0.0
            for r, item in enumerate(ranked[:k]):
                if item in targets:
                    n_hits += 1
                    dcg += 1.0 / math.log2(r + 2)
            for r in range(min(n_rel, k)):
                idcg += 1.0 / math.log2(r + 2)
            out[f"recall@{k}"][position] = n_hits / n_rel
            out[f"ndcg@{k}"][position] = dcg / idcg
            out[f"precision@{k}"][position] = n_hits / k
            out[f"hitrate@{k}"][position] = float(n_hits > 0)
    return out


def rows_as_sets(matrices, n_users):
    sets = [set() for _ in range(n_users)]
    for matrix in matrices:
        coo = sp.coo_array(matrix)
        for u, i in zip(coo.row, coo.col):
            sets[u].add(int(i))
    return sets


def random_case(seed, n_users, n_items, dim):
    """Random embeddings, train / valid (excluded) and test (targets) matrices with corner cases."""
    rng = np.random.default_rng(seed)
    user_emb = rng.normal(size=(n_users, dim)).astype(np.float32)
    item_emb = rng.normal(size=(n_items, dim)).astype(np.float32)
    dense_train = rng.random((n_users, n_items)) < 0.15
    dense_valid = (rng.random((n_users, n_items)) < 0.03) & ~dense_train
    dense_test = (rng.random((n_users, n_items)) < 0.08) & ~dense_train & ~dense_valid
    dense_test[0] = False  # no test item: left out of the mean
    dense_test[1] = False
    dense_test[1, rng.choice(n_items, 2, replace=False)] = True  # fewer test items than K
    dense_test[1] &= ~dense_train[1]
    dense_test[1, np.flatnonzero(~dense_train[1] & ~dense_valid[1])[0]] = True
    # A user whose excluded set is all but 3 items (fewer candidates than K), one of its
    # targets inside the excluded set (it counts in n_rel but can never be hit).
    keep = rng.choice(n_items, 3, replace=False)
    dense_train[2] = True
    dense_train[2, keep] = False
    dense_valid[2] = False
    dense_test[2] = False
    dense_test[2, keep[0]] = True
    dense_test[2, (keep[1] + 1) % n_items if (keep[1] + 1) % n_items not in keep else (keep[2] + 1) % n_items] = True
    dense_train[3, : n_items // 2] = True  # a heavy user: half of the catalogue excluded
    dense_test[3, : n_items // 2] = False
    dense_test[3, n_items - 1] = True
    train, valid, test = (sp.csr_array(m.astype(np.float32)) for m in (dense_train, dense_valid, dense_test))
    return user_emb, item_emb, train, valid, test


CASES = [
    # seed, n_users, n_items, dim, chunk_size, ks
    (0, 40, 97, 8, 7, (1, 5, 20)),
    (1, 53, 131, 16, 16, (10, 20, 50)),
    (2, 23, 61, 4, 1024, (3, 20)),
]


@pytest.mark.parametrize("seed,n_users,n_items,dim,chunk_size,ks", CASES)
def test_matches_float64_loop_reference(seed, n_users, n_items, dim, chunk_size, ks):
    user_emb, item_emb, train, valid, test = random_case(seed, n_users, n_items, dim)
    scores = user_emb.astype(np.float64) @ item_emb.astype(np.float64).T  # continuous: no ties
    exclude_sets = rows_as_sets([train, valid], n_users)
    target_sets = rows_as_sets([test], n_users)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    assert 0 not in users and {1, 2, 3} <= set(users)

    per_user = evaluate(user_emb, item_emb, [train, valid], test, ks=ks, chunk_size=chunk_size, reduce=None)
    expected = reference_per_user(scores, exclude_sets, target_sets, users, ks)
    np.testing.assert_array_equal(per_user["users"], users)
    np.testing.assert_array_equal(per_user["n_relevant"], [len(target_sets[u]) for u in users])
    for name, values in expected.items():
        np.testing.assert_allclose(per_user[name], values, rtol=1e-5, atol=1e-7, err_msg=name)

    means = evaluate(user_emb, item_emb, [train, valid], test, ks=ks, chunk_size=chunk_size)
    assert means["n_users"] == len(users)
    assert set(means) == set(expected) | {"n_users"}
    for name, values in expected.items():
        assert means[name] == pytest.approx(values.mean(), rel=1e-5, abs=1e-7), name


def test_user_with_few_candidates_and_excluded_target():
    user_emb, item_emb, train, valid, test = random_case(0, 40, 97, 8)
    out = evaluate(user_emb, item_emb, [train, valid], test, ks=(20,), users=np.array([2]), reduce=None)
    # User 2 ranks only 3 candidates; exactly one of its 2 targets is among them.
    assert out["n_relevant"][0] == 2
    assert out["recall@20"][0] == pytest.approx(0.5)
    assert out["precision@20"][0] == pytest.approx(1 / 20)


def test_chunk_size_does_not_change_results():
    user_emb, item_emb, train, valid, test = random_case(4, 45, 83, 8)
    results = [
        evaluate(user_emb, item_emb, [train, valid], test, ks=(5, 20), chunk_size=c, reduce=None)
        for c in (5, 13, 1000)
    ]
    for other in results[1:]:
        for name in results[0]:
            np.testing.assert_array_equal(other[name], results[0][name], err_msg=name)


def test_excluded_items_never_ranked():
    user_emb, item_emb, train, valid, test = random_case(5, 30, 71, 8)
    # Control: ranking without exclusion finds training items in most top-20 lists.
    assert evaluate(user_emb, item_emb, None, train, ks=(20,))["hitrate@20"] >= 0.8
    # Excluding them, none of them can be a hit; same for the union [train, valid].
    assert evaluate(user_emb, item_emb, train, train, ks=(20,))["hitrate@20"] == 0.0
    union = sp.csr_array(((train + valid) > 0).astype(np.float32))
    assert evaluate(user_emb, item_emb, [train, valid], union, ks=(20,))["hitrate@20"] == 0.0
    assert evaluate(user_emb, item_emb, [train, valid], valid, ks=(20,))["hitrate@20"] == 0.0
    assert evaluate(user_emb, item_emb, [train], valid, ks=(20,))["hitrate@20"] > 0.0


def test_listed_users_without_targets_are_zero_and_left_out_of_mean():
    user_emb, item_emb, train, valid, test = random_case(6, 30, 71, 8)
    users = np.array([0, 5, 7, 0])  # user 0 has no test item
    per_user = evaluate(user_emb, item_emb, train, test, ks=(10,), users=users, reduce=None)
    np.testing.assert_array_equal(per_user["users"], users)
    assert per_user["ndcg@10"][0] == 0.0 and per_user["ndcg@10"][3] == 0.0
    means = evaluate(user_emb, item_emb, train, test, ks=(10,), users=users)
    assert means["n_users"] == 2
    assert means["ndcg@10"] == pytest.approx(per_user["ndcg@10"][1:3].mean())


def test_popularity_baseline_through_the_evaluator():
    rng = np.random.default_rng(7)
    n_users, n_items = 35, 59
    train = sp.csr_array((rng.random((n_users, n_items)) < 0.2).astype(np.float32))
    dense_test = (rng.random((n_users, n_items)) < 0.1) & (train.toarray() == 0)
    test = sp.csr_array(dense_test.astype(np.float32))

    degrees = popularity_scores(train)
    expected_degrees = [sum(1 for u in range(n_users) if train[u, i] != 0) for i in range(n_items)]
    np.testing.assert_array_equal(degrees, expected_degrees)

    user_emb, item_emb = popularity_embeddings(train)
    assert user_emb.shape == (n_users, 1) and item_emb.shape == (n_items, 1)
    ks = (5, 20)
    out = evaluate(user_emb, item_emb, train, test, ks=ks, chunk_size=8, reduce=None)
    # Integer degrees tie a lot: the reference's stable sort, like lax.top_k, puts lower ids first.
    scores = np.tile(np.asarray(expected_degrees, dtype=np.float64), (n_users, 1))
    expected = reference_per_user(
        scores, rows_as_sets([train], n_users), rows_as_sets([test], n_users), out["users"], ks
    )
    for name, values in expected.items():
        np.testing.assert_allclose(out[name], values, rtol=1e-6, atol=1e-9, err_msg=name)
    # The same trick written out by hand.
    manual = evaluate(np.ones((n_users, 1)), degrees[:, None].astype(np.float32), train, test, ks=ks)
    assert manual["ndcg@20"] == pytest.approx(expected["ndcg@20"].mean(), rel=1e-6)


def test_explicit_zeros_are_not_interactions_and_inputs_are_untouched():
    user_emb, item_emb, train, valid, test = random_case(8, 20, 41, 4)
    padded_test = test.copy()
    padded_test.data[0] = 0.0  # a stored zero: not a target
    before = padded_test.copy()
    dropped = test.copy()
    dropped.data[0] = 0.0
    dropped.eliminate_zeros()
    a = evaluate(user_emb, item_emb, train, padded_test, ks=(10,), reduce=None)
    b = evaluate(user_emb, item_emb, train, dropped, ks=(10,), reduce=None)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert padded_test.nnz == before.nnz  # the caller's matrix was not modified


def test_errors_are_one_line_and_typed():
    user_emb, item_emb, train, valid, test = random_case(9, 20, 41, 4)
    with pytest.raises(DataError, match="shape"):
        evaluate(user_emb, item_emb, train[:10], test)
    with pytest.raises(DataError, match="dim"):
        evaluate(user_emb, item_emb[:, :2], train, test)
    with pytest.raises(DataError, match="no evaluated user"):
        evaluate(user_emb, item_emb, train, sp.csr_array(test.shape, dtype=np.float32))
    with pytest.raises(ConfigError, match="exceeds"):
        evaluate(user_emb, item_emb, train, test, ks=(42,))
    with pytest.raises(ConfigError, match="chunk_size"):
        evaluate(user_emb, item_emb, train, test, chunk_size=0)
    with pytest.raises(ConfigError, match="users"):
        evaluate(user_emb, item_emb, train, test, users=np.array([20]))
    with pytest.raises(ConfigError, match="reduce"):
        evaluate(user_emb, item_emb, train, test, reduce="sum")
    with pytest.raises(DataError) as info:
        evaluate(user_emb, item_emb, train.toarray(), test)
    assert "\n" not in str(info.value)
