"""Tests of itemjax.graph.ppr against dense float64 numpy references on small graphs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import itemjax.graph.ppr as ppr
from itemjax.errors import ConfigError
from itemjax.graph.ppr import PAD, cached_hard_negative_table, hard_negative_table, ppr_scores

# ----------------------------------------------------------------------------------------------
# graphs and float64 references
# ----------------------------------------------------------------------------------------------


def random_train(seed, n_users=40, n_items=60, density=0.12):
    """Random bipartite training matrix with corner cases: user 0 isolated, last item unused."""
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < density
    dense[0] = False
    dense[:, -1] = False
    dense[1:, 1:-1] |= np.eye(n_users - 1, n_items - 2, dtype=bool)  # every other user has an edge
    return sp.csr_matrix(dense.astype(np.float32))


def dense_walk_transpose(train):
    """``W^T`` of the bipartite graph, float64 ``[n_nodes, n_nodes]``, built with loops."""
    r = train.toarray() != 0
    n_users, n_items = r.shape
    n = n_users + n_items
    adjacency = np.zeros((n, n))
    for u in range(n_users):
        for i in range(n_items):
            if r[u, i]:
                adjacency[u, n_users + i] = adjacency[n_users + i, u] = 1.0
    walk = np.zeros((n, n))
    for a in range(n):
        degree = adjacency[a].sum()
        if degree > 0:
            walk[a] = adjacency[a] / degree
    return walk.T


def ppr_linear_solve(train, user, alpha):
    """Item part of ``pi = alpha (I - (1 - alpha) W^T)^-1 e_u`` (float64)."""
    walk_t = dense_walk_transpose(train)
    n_users = train.shape[0]
    e = np.zeros(walk_t.shape[0])
    e[user] = 1.0
    pi = np.linalg.solve(np.eye(len(e)) - (1 - alpha) * walk_t, alpha * e)
    return pi[n_users:]


def ppr_power_iteration(train, user, alpha, n_iter, tol):
    """Plain power iteration from ``alpha e_u`` with the max-abs-change stop (float64)."""
    walk_t = dense_walk_transpose(train)
    e = np.zeros(walk_t.shape[0])
    e[user] = 1.0
    pi = alpha * e
    for _ in range(n_iter):
        new = alpha * e + (1 - alpha) * walk_t @ pi
        change = np.abs(new - pi).max()
        pi = new
        if change < tol:
            break
    return pi[train.shape[0]:]


def reference_ranking(train, user, alpha):
    """Candidates of ``user`` (reachable, not trained) sorted by decreasing float64 PPR."""
    scores = ppr_linear_solve(train, user, alpha)
    trained = set(train[user].indices)
    candidates = [i for i in range(len(scores)) if i not in trained and scores[i] > 1e-12]
    return sorted(candidates, key=lambda i: (-scores[i], i)), scores


# ----------------------------------------------------------------------------------------------
# PPR scores
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.15, 0.5])
def test_ppr_scores_match_linear_solve(alpha):
    train = random_train(0)
    users = np.arange(train.shape[0])
    got = ppr_scores(train, users, alpha=alpha, n_iter=1000, tol=1e-12)
    assert got.dtype == np.float32 and got.shape == (train.shape[0], train.shape[1])
    want = np.stack([ppr_linear_solve(train, u, alpha) for u in users])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-8)
    assert np.all(got[0] == 0)  # isolated user
    assert np.all(got[:, -1] == 0)  # item without edges
    assert got[1:].max() > 1e-3


@pytest.mark.parametrize("n_iter, tol", [(1, 0.0), (4, 0.0), (7, 0.0), (50, 2e-3)])
def test_ppr_scores_follow_power_iteration_and_its_stopping_rule(n_iter, tol):
    train = random_train(1, n_users=15, n_items=20, density=0.2)
    users = np.array([3, 1, 7, 14])
    got = ppr_scores(train, users, alpha=0.15, n_iter=n_iter, tol=tol)
    want = np.stack([ppr_power_iteration(train, u, 0.15, n_iter, tol) for u in users])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    converged = np.stack([ppr_linear_solve(train, u, 0.15) for u in users])
    assert np.abs(got - converged).max() > 1e-5  # truncated: the check above is not trivially met


def test_ppr_scores_of_a_block_equal_rows_of_all_users():
    train = random_train(2, n_users=150, n_items=50, density=0.08).tolil()
    # user 5 and item 48 form their own component: its increments decay slowest (a 2-cycle), so
    # a stopping rule shared by a block instead of per user would change its neighbours' rows
    train[5, :] = 0
    train[:, 48] = 0
    train[5, 48] = 1
    train = train.tocsr()
    everyone = ppr_scores(train, np.arange(150), tol=1e-4)
    block = np.array([149, 3, 70, 3, 0])
    np.testing.assert_array_equal(ppr_scores(train, block, tol=1e-4), everyone[block])
    np.testing.assert_allclose(everyone[5, 48], ppr_linear_solve(train, 5, 0.15)[48], rtol=2e-2)


# ----------------------------------------------------------------------------------------------
# hard-negative tables
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [(0, 5), (3, 12), (10, 30)])
def test_table_is_the_window_of_the_reference_ranking(window):
    lo, hi = window
    train = random_train(3)
    table = hard_negative_table(train, window=window, alpha=0.15, n_iter=1000, tol=1e-12, progress=False)
    assert table.dtype == np.int32 and table.shape == (train.shape[0], hi - lo)
    n_exact = 0
    for u in range(train.shape[0]):
        ranking, scores = reference_ranking(train, u, 0.15)
        want = ranking[lo:hi]
        got = [int(i) for i in table[u] if i != PAD]
        assert np.all(table[u, len(got):] == PAD)  # padding only at the end
        assert len(got) == len(want)
        assert not set(got) & set(train[u].indices)  # no training item
        assert len(set(got)) == len(got)
        # tie-tolerant: the k-th entry has the reference score of the k-th ranked candidate
        np.testing.assert_allclose(scores[got], scores[want], rtol=1e-4, atol=1e-9)
        n_exact += got == want
    assert n_exact >= 0.8 * train.shape[0]  # ties are rare: mostly the exact same list


def test_users_with_few_candidates_are_padded():
    # users 0, 1 share items 0, 1, 2; user 2 is isolated; user 3 owns item 3 alone; item 4 unused
    train = sp.csr_matrix(
        (np.ones(6, np.float32), ([0, 0, 1, 1, 3, 1], [0, 1, 1, 2, 3, 0])), shape=(4, 5)
    )
    table = hard_negative_table(train, window=(0, 3), progress=False)
    np.testing.assert_array_equal(table, [[2, PAD, PAD], [PAD, PAD, PAD], [PAD, PAD, PAD], [PAD, PAD, PAD]])
    table = hard_negative_table(train, window=(1, 3), progress=False)
    assert np.all(table == PAD)
    # a window wider than the catalogue
    table = hard_negative_table(train, window=(0, 9), progress=False)
    assert table.shape == (4, 9) and table[0, 0] == 2 and np.all(table[0, 1:] == PAD)


def test_blocks_give_the_same_table_as_one_block():
    train = random_train(4, n_users=130, n_items=70, density=0.06)
    one_block = hard_negative_table(train, window=(2, 20), block_size=1000, progress=False)
    for block_size in (1, 7, 64):
        np.testing.assert_array_equal(
            hard_negative_table(train, window=(2, 20), block_size=block_size, progress=False), one_block
        )
    assert np.mean(one_block != PAD) > 0.5


def test_bad_parameters_raise_config_error():
    train = random_train(5, n_users=5, n_items=6)
    with pytest.raises(ConfigError, match="window"):
        hard_negative_table(train, window=(5, 5), progress=False)
    with pytest.raises(ConfigError, match="alpha"):
        hard_negative_table(train, alpha=0.0, progress=False)
    with pytest.raises(ConfigError, match="user ids"):
        ppr_scores(train, np.array([5]))


# ----------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def counted_tables(monkeypatch):
    calls = []
    original = ppr.hard_negative_table

    def counting(train, **params):
        calls.append(params)
        return original(train, **params)

    monkeypatch.setattr(ppr, "hard_negative_table", counting)
    return calls


def test_cache_is_reused_and_invalidated(tmp_path, counted_tables):
    train = random_train(6)
    kwargs = {"cache_dir": tmp_path, "key": "toy/split-1", "window": (2, 9), "progress": False}
    first = cached_hard_negative_table(train, **kwargs)
    assert len(counted_tables) == 1
    np.testing.assert_array_equal(first, hard_negative_table(train, window=(2, 9), progress=False))

    again = cached_hard_negative_table(train, **kwargs)
    np.testing.assert_array_equal(again, first)
    cached_hard_negative_table(train.astype(np.float64) * 3, **{**kwargs, "block_size": 5, "alpha": 0.15})
    assert len(counted_tables) == 1  # same edges, run-only params, explicit default: reused

    cached_hard_negative_table(train, **{**kwargs, "alpha": 0.3})
    assert len(counted_tables) == 2
    cached_hard_negative_table(train, **{**kwargs, "window": (2, 10)})
    assert len(counted_tables) == 3
    cached_hard_negative_table(train, **{**kwargs, "key": "toy/split-2"})
    assert len(counted_tables) == 4
    other = train.tolil()
    other[1, 0] = 1.0 - other[1, 0]  # flip one edge
    cached_hard_negative_table(other.tocsr(), **kwargs)
    assert len(counted_tables) == 5
    cached_hard_negative_table(train, **{**kwargs, "alpha": 0.3})
    assert len(counted_tables) == 5  # each variant has its own file
    assert len(list(tmp_path.glob("*.npy"))) == 5 and not list(tmp_path.glob("*.tmp"))


def test_corrupt_cache_file_is_recomputed(tmp_path, counted_tables):
    train = random_train(7, n_users=10, n_items=12)
    kwargs = {"cache_dir": tmp_path, "key": "toy", "window": (0, 4), "progress": False}
    table = cached_hard_negative_table(train, **kwargs)
    path = ppr.table_cache_path(train, **{k: v for k, v in kwargs.items() if k != "progress"})
    assert path.exists()
    path.write_bytes(b"not a numpy file")
    np.testing.assert_array_equal(cached_hard_negative_table(train, **kwargs), table)
    assert len(counted_tables) == 2
    np.testing.assert_array_equal(np.load(path), table)
    with pytest.raises(ConfigError, match="unknown"):
        cached_hard_negative_table(train, cache_dir=tmp_path, key="toy", windw=(0, 4))
