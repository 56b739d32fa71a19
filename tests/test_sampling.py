"""On-device samplers against plain-Python references on small random matrices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from itemjax.objective import sampling


def random_train(n_users=30, n_items=50, density=0.2, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < density
    dense[0] = False  # a user without training items
    dense[1] = True  # a user who has every item but none left... except we drop one below
    dense[1, 7] = False
    dense[2, :] = False
    dense[2, 3] = True  # a user with a single item
    return sp.csr_matrix(dense.astype(np.float32))


@pytest.fixture(scope="module")
def train():
    return random_train()


@pytest.fixture(scope="module")
def data(train):
    return sampling.make_train_data(train)


def test_is_training_item_matches_dense(train, data):
    dense = train.toarray() > 0
    users, items = np.meshgrid(np.arange(train.shape[0]), np.arange(train.shape[1]), indexing="ij")
    got = np.asarray(jax.jit(sampling.is_training_item, static_argnums=())(data, jnp.asarray(users), jnp.asarray(items)))
    np.testing.assert_array_equal(got, dense)


def test_uniform_negatives_avoid_training_items(train, data):
    dense = train.toarray() > 0
    users = jnp.asarray(np.arange(1, train.shape[0]), jnp.int32)
    neg = np.asarray(sampling.uniform_negatives(jax.random.PRNGKey(3), data, users, 64))
    assert neg.shape == (len(users), 64)
    assert neg.min() >= 0 and neg.max() < train.shape[1]
    assert not dense[np.asarray(users)[:, None], neg].any()
    # user 1 has exactly one non-training item: every draw must be it
    assert (neg[0] == 7).all()


def test_uniform_negatives_are_roughly_uniform(train, data):
    dense = train.toarray() > 0
    user = 5
    neg = np.asarray(sampling.uniform_negatives(jax.random.PRNGKey(0), data, jnp.full((200,), user, jnp.int32), 100))
    allowed = np.flatnonzero(~dense[user])
    counts = np.bincount(neg.ravel(), minlength=train.shape[1])[allowed]
    expected = neg.size / len(allowed)
    # chi-square statistic well within what a uniform draw gives (df ~ 40, 99.9% quantile ~ 73)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 80, chi2


def test_sample_edges_are_training_interactions(train, data):
    users, items = sampling.sample_edges(jax.random.PRNGKey(1), data, 500)
    dense = train.toarray() > 0
    assert dense[np.asarray(users), np.asarray(items)].all()


def test_sample_users_only_active(train, data):
    users = np.asarray(sampling.sample_users(jax.random.PRNGKey(2), data, 1000))
    degrees = np.diff(train.indptr)
    assert (degrees[users] > 0).all()
    assert set(users) == set(np.flatnonzero(degrees > 0))


@pytest.mark.parametrize("n", [1, 4, 64])
def test_sample_positives_distinct_and_masked(train, data, n):
    users = jnp.asarray(np.arange(train.shape[0]), jnp.int32)
    items, where = sampling.sample_positives(jax.random.PRNGKey(4), data, users, n)
    items, where = np.asarray(items), np.asarray(where)
    dense = train.toarray() > 0
    degrees = np.diff(train.indptr)
    assert items.shape == where.shape == (train.shape[0], n)
    for u in range(train.shape[0]):
        chosen = items[u][where[u]]
        assert len(chosen) == min(n, degrees[u])
        assert len(set(chosen)) == len(chosen)  # distinct
        assert dense[u, chosen].all()


def test_sample_positives_cover_the_row_uniformly(train, data):
    user = 1  # 49 items, pick 4 at a time
    users = jnp.full((2000,), user, jnp.int32)
    items, where = sampling.sample_positives(jax.random.PRNGKey(5), data, users, 4)
    counts = np.bincount(np.asarray(items)[np.asarray(where)], minlength=train.shape[1])
    row = train[user].indices
    assert set(np.flatnonzero(counts)) == set(row)
    assert counts[row].min() > 0.5 * counts[row].mean()


def test_negatives_mix_hard_and_uniform(train):
    n_users, n_items = train.shape
    hard = np.full((n_users, 3), -1, np.int32)
    dense = train.toarray() > 0
    for u in range(n_users):
        cand = np.flatnonzero(~dense[u])[:3]
        hard[u, : len(cand)] = cand
    data = sampling.make_train_data(train, hard)
    users = jnp.asarray(np.arange(3, n_users), jnp.int32)
    only_hard = np.asarray(sampling.negatives(jax.random.PRNGKey(0), data, users, 50, 1.0))
    for row, u in zip(only_hard, np.asarray(users)):
        assert set(row) <= set(hard[u][hard[u] >= 0])
    mixed = np.asarray(sampling.negatives(jax.random.PRNGKey(0), data, users, 400, 0.5))
    in_hard = np.array([[x in hard[u] for x in row] for row, u in zip(mixed, np.asarray(users))])
    assert 0.45 < in_hard.mean() < 0.6  # half hard, plus uniform draws that happen to hit the table
    assert not dense[np.asarray(users)[:, None], mixed].any()


def test_sample_users_by_degree_follows_training_degrees(train, data):
    """Frequencies of 20000 draws against deg_u / n_train (chi-square, generous bound)."""
    n = 20000
    users = np.asarray(sampling.sample_users(jax.random.PRNGKey(5), data, n, by_degree=True))
    degrees = np.diff(train.indptr).astype(float)
    counts = np.bincount(users, minlength=train.shape[0]).astype(float)
    assert counts[degrees == 0].sum() == 0
    expected = n * degrees / degrees.sum()
    active = degrees > 0
    chi2 = float(np.sum((counts[active] - expected[active]) ** 2 / expected[active]))
    assert chi2 < 3 * active.sum() + 30, chi2
    # and it differs from the uniform draw when degrees differ
    uniform = np.bincount(np.asarray(sampling.sample_users(jax.random.PRNGKey(5), data, n)),
                          minlength=train.shape[0]).astype(float)
    heavy = int(np.argmax(degrees))
    assert counts[heavy] > uniform[heavy]


def test_hard_negatives_are_drawn_without_replacement(train):
    """With only hard slots, the first n_valid slots of a user are its distinct candidates."""
    n_users, n_items = train.shape
    width = 6
    hard = np.full((n_users, width), -1, np.int32)
    dense = train.toarray() > 0
    for u in range(n_users):
        cand = np.flatnonzero(~dense[u])[: width - (u % 3)]  # some rows padded with -1
        hard[u, : len(cand)] = cand
    data = sampling.make_train_data(train, hard)
    users = jnp.asarray(np.arange(3, n_users), jnp.int32)
    got = np.asarray(sampling.negatives(jax.random.PRNGKey(1), data, users, 2 * width, 1.0))
    for row, u in zip(got, np.asarray(users)):
        valid = hard[u][hard[u] >= 0]
        assert sorted(row[: len(valid)]) == sorted(valid)  # a permutation: no repeats
        np.testing.assert_array_equal(row[len(valid): 2 * len(valid)], row[: len(valid)])  # then it wraps
    # orders differ between users with the same candidates and between keys
    again = np.asarray(sampling.negatives(jax.random.PRNGKey(2), data, users, 2 * width, 1.0))
    assert (again != got).any()


def test_sample_pairs_uniform_draws_users_uniformly_then_a_positive(train, data):
    """user-uniform pairs: P(u, p) = 1 / (n_active deg_u); every pair is a training interaction."""
    n = 40000
    users, items = (np.asarray(x) for x in sampling.sample_pairs(jax.random.PRNGKey(7), data, n, "uniform"))
    dense = train.toarray() > 0
    assert dense[users, items].all()
    degrees = np.diff(train.indptr)
    active = np.flatnonzero(degrees > 0)
    counts = np.bincount(users, minlength=train.shape[0]).astype(float)
    expected = n / len(active)
    chi2 = float(np.sum((counts[active] - expected) ** 2 / expected))
    assert chi2 < 3 * len(active) + 30, chi2
    # within the heaviest user, its items are equally likely
    heavy = int(np.argmax(degrees))
    per_item = np.bincount(items[users == heavy], minlength=train.shape[1])[train[heavy].indices].astype(float)
    exp_item = per_item.sum() / len(per_item)
    assert float(np.sum((per_item - exp_item) ** 2 / exp_item)) < 3 * len(per_item) + 30


def test_sample_pairs_degree_is_sample_edges(data):
    key = jax.random.PRNGKey(3)
    for a, b in zip(sampling.sample_pairs(key, data, 64, "degree"), sampling.sample_edges(key, data, 64)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
