"""Tests of itemjax.graph.ppr against dense float64 numpy references on small graphs.

Every backend (``"device"``: JAX, ``"scipy"``: host, ``"native"``: the device iteration on the native
kernel, or device itself where the kernel is not built) is checked against the references, and the
device path against the scipy path: scores within ``rtol = 1e-5, atol = 1e-9`` (float32
rounding; on CPU they are bitwise equal), tables equal except for swaps of candidates whose
scipy scores tie within that tolerance. The approximate ``"push"`` backend (forward push) has its own
tests in tests/test_ppr_push.py.
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import itemjax.graph.ppr as ppr
from itemjax.errors import ConfigError
from itemjax.config import PPR_BACKENDS, TrainConfig
from itemjax.graph.ppr import PAD, cached_hard_negative_table, hard_negative_table, ppr_scores

#: device vs scipy scores: float32 rounding of the same operations
DEVICE_RTOL, DEVICE_ATOL = 1e-5, 1e-9
#: the backends that run the power iteration (the approximate "push" is tested in tests/test_ppr_push.py)
EXACT_BACKENDS = tuple(backend for backend in PPR_BACKENDS if backend != "push")

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


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
@pytest.mark.parametrize("alpha", [0.15, 0.5])
def test_ppr_scores_match_linear_solve(alpha, backend):
    train = random_train(0)
    users = np.arange(train.shape[0])
    got = ppr_scores(train, users, alpha=alpha, n_iter=1000, tol=1e-12, backend=backend)
    assert got.dtype == np.float32 and got.shape == (train.shape[0], train.shape[1])
    want = np.stack([ppr_linear_solve(train, u, alpha) for u in users])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-8)
    assert np.all(got[0] == 0)  # isolated user
    assert np.all(got[:, -1] == 0)  # item without edges
    assert got[1:].max() > 1e-3


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
@pytest.mark.parametrize("n_iter, tol", [(1, 0.0), (2, 0.0), (4, 0.0), (7, 0.0), (50, 2e-3)])
def test_ppr_scores_follow_power_iteration_and_its_stopping_rule(n_iter, tol, backend):
    train = random_train(1, n_users=15, n_items=20, density=0.2)
    users = np.array([3, 1, 7, 14])
    got = ppr_scores(train, users, alpha=0.15, n_iter=n_iter, tol=tol, backend=backend)
    want = np.stack([ppr_power_iteration(train, u, 0.15, n_iter, tol) for u in users])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    converged = np.stack([ppr_linear_solve(train, u, 0.15) for u in users])
    assert np.abs(got - converged).max() > 1e-5  # truncated: the check above is not trivially met


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_ppr_scores_of_a_block_equal_rows_of_all_users(backend):
    train = random_train(2, n_users=150, n_items=50, density=0.08).tolil()
    # user 5 and item 48 form their own component: its increments decay slowest (a 2-cycle), so
    # a stopping rule shared by a block instead of per user would change its neighbours' rows
    train[5, :] = 0
    train[:, 48] = 0
    train[5, 48] = 1
    train = train.tocsr()
    everyone = ppr_scores(train, np.arange(150), tol=1e-4, backend=backend)
    block = np.array([149, 3, 70, 3, 0])
    np.testing.assert_array_equal(ppr_scores(train, block, tol=1e-4, backend=backend), everyone[block])
    np.testing.assert_allclose(everyone[5, 48], ppr_linear_solve(train, 5, 0.15)[48], rtol=2e-2)


# ----------------------------------------------------------------------------------------------
# hard-negative tables
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
@pytest.mark.parametrize("window", [(0, 5), (3, 12), (10, 30)])
def test_table_is_the_window_of_the_reference_ranking(window, backend):
    lo, hi = window
    train = random_train(3)
    table = hard_negative_table(train, window=window, alpha=0.15, n_iter=1000, tol=1e-12, backend=backend,
                                progress=False)
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


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_users_with_few_candidates_are_padded(backend):
    # users 0, 1 share items 0, 1, 2; user 2 is isolated; user 3 owns item 3 alone; item 4 unused
    train = sp.csr_matrix(
        (np.ones(6, np.float32), ([0, 0, 1, 1, 3, 1], [0, 1, 1, 2, 3, 0])), shape=(4, 5)
    )
    table = hard_negative_table(train, window=(0, 3), backend=backend, progress=False)
    np.testing.assert_array_equal(table, [[2, PAD, PAD], [PAD, PAD, PAD], [PAD, PAD, PAD], [PAD, PAD, PAD]])
    table = hard_negative_table(train, window=(1, 3), backend=backend, progress=False)
    assert np.all(table == PAD)
    # a window wider than the catalogue, and one that starts past it
    table = hard_negative_table(train, window=(0, 9), backend=backend, progress=False)
    assert table.shape == (4, 9) and table[0, 0] == 2 and np.all(table[0, 1:] == PAD)
    table = hard_negative_table(train, window=(6, 9), backend=backend, progress=False)
    assert table.shape == (4, 3) and np.all(table == PAD)


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_blocks_give_the_same_table_as_one_block(backend):
    train = random_train(4, n_users=130, n_items=70, density=0.06)
    one_block = hard_negative_table(train, window=(2, 20), block_size=1000, backend=backend, progress=False)
    for block_size in (1, 7, 64):
        np.testing.assert_array_equal(
            hard_negative_table(train, window=(2, 20), block_size=block_size, backend=backend, progress=False),
            one_block,
        )
    assert np.mean(one_block != PAD) > 0.5


# ----------------------------------------------------------------------------------------------
# device backend against the scipy backend
# ----------------------------------------------------------------------------------------------


def train_with_ties(seed, n_users=120, n_items=90, density=0.05):
    """:func:`random_train` with every 10th item a copy of its left neighbour: equal neighbourhoods
    give exactly tied PPR scores, which both backends must break by item id."""
    dense = random_train(seed, n_users, n_items, density).toarray()
    dense[:, 10:-1:10] = dense[:, 9:-2:10]
    return sp.csr_matrix(dense)


def assert_tables_agree(got, want, scores, rtol=DEVICE_RTOL, atol=DEVICE_ATOL) -> float:
    """``got == want`` except at slots where the two items' ``scores`` (float ``[n_users, n_items]``)
    tie within ``atol + rtol * score``; returns the fraction of identical rows."""
    assert got.shape == want.shape and got.dtype == want.dtype == np.int32
    np.testing.assert_array_equal(got == PAD, want == PAD)
    rows, cols = np.nonzero(got != want)
    got_scores, want_scores = scores[rows, got[rows, cols]], scores[rows, want[rows, cols]]
    untied = np.abs(got_scores - want_scores) > atol + rtol * np.abs(want_scores)
    assert not untied.any(), f"users {np.unique(rows[untied])} differ beyond ties"
    return float(np.mean(np.all(got == want, axis=1)))


@pytest.fixture(params=[None, 3], ids=["default-slots", "3-slots"])
def slots(request, monkeypatch):
    """The device iterate's width: the platform default, or 3 columns through which every block's
    users stream (so a column hands over to the next user many times)."""
    if request.param is not None:
        monkeypatch.setattr(ppr, "device_slots", lambda block: min(request.param, block))
    return request.param


@pytest.mark.parametrize("n_iter, tol", [(50, 1e-6), (9, 0.0), (50, 2e-3), (400, 1e-9)])
def test_device_scores_equal_scipy_scores(n_iter, tol, slots):
    train = train_with_ties(10)
    users = np.array([5, 0, 17, 5, 119, 64, 3, 88, 42])  # isolated user 0, a repeated user
    want = ppr_scores(train, users, n_iter=n_iter, tol=tol, backend="scipy")
    got = ppr_scores(train, users, n_iter=n_iter, tol=tol, backend="device")
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=DEVICE_RTOL, atol=DEVICE_ATOL)
    assert np.all(got[1] == 0) and got.max() > 1e-3
    reference = np.stack([ppr_power_iteration(train, u, 0.15, n_iter, tol) for u in users])
    np.testing.assert_allclose(got, reference, rtol=2e-4, atol=1e-8)  # float64, same stopping rule


@pytest.mark.parametrize("window, block_size", [((10, 40), 1024), ((0, 7), 16), ((3, 100), 50)])
def test_device_table_equals_scipy_table(window, block_size, slots):
    train = train_with_ties(11)
    want = hard_negative_table(train, window=window, backend="scipy", progress=False)
    got = hard_negative_table(train, window=window, block_size=block_size, backend="device", progress=False)
    scores = ppr_scores(train, np.arange(train.shape[0]), backend="scipy")
    # differences are swaps of tied items only: at the window's edges scipy's argpartition cuts a
    # tie arbitrarily, the device's top_k by item id (this graph's copied items tie often)
    assert assert_tables_agree(got, want, scores) >= 0.8
    assert np.mean(want != PAD) > 0.3


def test_ties_are_broken_by_item_id_on_both_backends():
    train = train_with_ties(12)
    scores = ppr_scores(train, np.arange(train.shape[0]), backend="scipy")
    tied = (scores[:, 10:-1:10] == scores[:, 9:-2:10]) & (scores[:, 9:-2:10] > 0)
    assert tied.mean() > 0.9  # the copied items do tie exactly
    for backend in EXACT_BACKENDS:
        table = hard_negative_table(train, window=(0, 89), backend=backend, progress=False)
        for u in range(train.shape[0]):
            position = {int(item): k for k, item in enumerate(table[u]) if item != PAD}
            for copy in range(10, 89, 10):
                if copy in position and copy - 1 in position and scores[u, copy] == scores[u, copy - 1]:
                    assert position[copy - 1] < position[copy], (backend, u, copy)


def test_device_table_is_jitted_once_per_block_shape(monkeypatch):
    traces = []
    original = ppr._device_block_scores

    def counting(*args, **kwargs):
        traces.append(args[1].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(ppr, "_device_block_scores", counting)
    train = random_train(13, n_users=50, n_items=37)  # a shape no other test compiles
    table = hard_negative_table(train, window=(1, 6), block_size=16, progress=False)  # 4 blocks, last padded
    assert traces == [(16,)]
    np.testing.assert_array_equal(table, hard_negative_table(train, window=(1, 6), backend="scipy", progress=False))


def test_device_top_k_is_not_compiled_as_a_sort():
    """XLA's CPU compiler turns a top-k whose outputs are sliced from ``lo > 0`` into a full sort of
    every row (40x slower on Gowalla); the device ranking must keep the top-k kernel."""
    train = random_train(15, n_users=20, n_items=33)
    operators, alpha, tol = ppr._device_args(ppr._walk_operators(ppr._binary_csr(train), 0.15), 0.15, 1e-6)
    compiled = ppr._device_ranking.lower(operators, jnp.arange(8, dtype=jnp.int32), alpha, tol, n_iter=50, slots=4,
                                         top=12).compile().as_text()
    if jax.default_backend() == "cpu":
        assert "TopK" in compiled
    assert " sort(" not in compiled


def test_device_out_of_memory_names_the_fix(monkeypatch):
    def exhausted(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.5GiB")

    monkeypatch.setattr(ppr, "_device_ranking", exhausted)
    train = random_train(16, n_users=12, n_items=10)
    with pytest.raises(ConfigError, match="ran out of memory.*blocks of 5 users.*block_size.*--ppr-backend scipy"):
        hard_negative_table(train, window=(0, 4), block_size=5, progress=False)


def test_device_scores_of_no_users():
    train = random_train(14, n_users=6, n_items=9)
    assert ppr_scores(train, np.array([], np.int64), backend="device").shape == (0, 9)


def test_bad_parameters_raise_config_error():
    train = random_train(5, n_users=5, n_items=6)
    with pytest.raises(ConfigError, match="window"):
        hard_negative_table(train, window=(5, 5), progress=False)
    with pytest.raises(ConfigError, match="alpha"):
        hard_negative_table(train, alpha=0.0, progress=False)
    with pytest.raises(ConfigError, match="user ids"):
        ppr_scores(train, np.array([5]))
    with pytest.raises(ConfigError, match="PPR backend 'gpu'"):
        hard_negative_table(train, backend="gpu", progress=False)
    with pytest.raises(ConfigError, match="PPR backend"):
        ppr_scores(train, np.array([1]), backend="numpy")
    with pytest.raises(ConfigError, match="--ppr-backend"):
        TrainConfig(ppr_backend="gpu").validate()


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


def test_cache_key_includes_the_backend(tmp_path, counted_tables):
    train = random_train(8, n_users=30, n_items=25)
    kwargs = {"cache_dir": tmp_path, "key": "toy", "window": (2, 9), "progress": False}
    device = cached_hard_negative_table(train, **kwargs)  # the default backend
    cached_hard_negative_table(train, **kwargs, backend="device")
    assert len(counted_tables) == 1
    scipy_table = cached_hard_negative_table(train, **kwargs, backend="scipy")
    assert len(counted_tables) == 2 and len(list(tmp_path.glob("*.npy"))) == 2
    assert_tables_agree(device, scipy_table, ppr_scores(train, np.arange(30), backend="scipy"))
    # scipy tables keep the names they had before the device backend (no "backend" in the hash)
    legacy = {"key": "toy", "train": ppr._matrix_digest(ppr._binary_csr(train)), "window": [2, 9], "alpha": 0.15,
              "n_iter": 50, "tol": 1e-6}
    digest = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:24]
    assert ppr.table_cache_path(train, cache_dir=tmp_path, key="toy", window=(2, 9), backend="scipy").name == (
        f"hard_negatives-toy-{digest}.npy")
    with pytest.raises(ConfigError, match="PPR backend"):
        ppr.table_cache_path(train, cache_dir=tmp_path, key="toy", backend="cuda")


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
