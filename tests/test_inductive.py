"""Tests for itemjax.evaluation.inductive: the held-out-user split, the augmented graph, zero-ego embeddings
against a float64 LightGCN loop, metrics against plain-loop references, config validation."""

import dataclasses

import jax
import numpy as np
import pytest
import scipy.sparse

from itemjax.config import TrainConfig
from itemjax.data.datasets import RawDataset
from itemjax.errors import ConfigError, DataError
from itemjax.evaluation.evaluate import evaluate
from itemjax.graph.bipartite import build_graph
from itemjax.evaluation.inductive import (
    augmented_graph,
    evaluate_inductive,
    evaluate_popularity,
    inductive_embeddings,
    make_inductive_split,
    zero_user_embeddings,
)
from itemjax.model.models import LightGCN
from itemjax.graph.propagation import to_device
from itemjax.data.split import make_split

N_USERS, N_ITEMS = 52, 40
SINGLE_USER, EMPTY_USER = 50, 51  # one interaction / none: never held out


def synthetic_split(seed=0, valid_frac=0.1):
    rng = np.random.default_rng(seed)
    n = 800
    users = rng.integers(0, N_USERS - 2, n)
    items = np.minimum(rng.zipf(1.4, n) - 1, N_ITEMS - 2)  # power law; item N_ITEMS-1 never seen
    users = np.append(users, SINGLE_USER)
    items = np.append(items, 3)
    raw = RawDataset(name="toy", n_users=N_USERS, n_items=N_ITEMS, users=users, items=items, test_users=None,
                     test_items=None, user_ids=np.arange(N_USERS) + 100, item_ids=np.arange(N_ITEMS) + 1000,
                     files={}, n_duplicates=0)
    return make_split(raw, test_frac=0.2, valid_frac=valid_frac, seed=seed)


def pairs(matrix, rows=None):
    coo = matrix.tocoo()
    keep = np.ones(coo.nnz, bool) if rows is None else np.isin(coo.row, rows)
    return set(zip(coo.row[keep].tolist(), coo.col[keep].tolist()))


def row_items(matrix, user):
    return set(matrix.indices[matrix.indptr[user]:matrix.indptr[user + 1]].tolist())


# ----------------------------------------------------------------------------- split


def test_split_is_disjoint_and_complete():
    split = synthetic_split()
    ind = make_inductive_split(split, holdout=0.2, reveal=0.5, seed=0)
    held = ind.holdout_users
    everything = split.train + split.valid + split.test
    n_per_user = np.diff(everything.tocsr().indptr)
    assert held.dtype == np.int64 and np.all(np.diff(held) > 0)
    assert held.size == round(0.2 * N_USERS)
    assert np.all(n_per_user[held] >= 2)
    assert SINGLE_USER not in held and EMPTY_USER not in held
    others = np.setdiff1d(np.arange(N_USERS), held)
    for part in ("train", "valid", "test"):
        reduced, original = getattr(ind.train_split, part), getattr(split, part)
        assert reduced.shape == original.shape and reduced.dtype == np.float32 and reduced.has_sorted_indices
        assert pairs(reduced, held) == set()  # held-out users have no training / valid / test rows
        assert pairs(reduced) == pairs(original, others)  # everybody else is untouched
    assert pairs(ind.revealed) & pairs(ind.targets) == set()
    assert pairs(ind.revealed) | pairs(ind.targets) == pairs(everything, held)  # revealed U targets = all of theirs
    assert pairs(ind.revealed, others) == pairs(ind.targets, others) == set()
    for user in held:  # counts: n_target = min(max(round((1 - reveal) n), 1), n - 1), reference with Python round
        n = int(n_per_user[user])
        assert len(row_items(ind.targets, user)) == min(max(round(0.5 * n), 1), n - 1)
        assert len(row_items(ind.revealed, user)) >= 1
    assert (ind.train_split.n_users, ind.train_split.n_items) == (N_USERS, N_ITEMS)  # ids kept, no re-indexing
    np.testing.assert_array_equal(ind.train_split.user_ids, split.user_ids)


def test_split_is_seeded():
    split = synthetic_split()
    a = make_inductive_split(split, holdout=0.3, reveal=0.4, seed=7)
    b = make_inductive_split(split, holdout=0.3, reveal=0.4, seed=7)
    c = make_inductive_split(split, holdout=0.3, reveal=0.4, seed=8)
    np.testing.assert_array_equal(a.holdout_users, b.holdout_users)
    assert pairs(a.revealed) == pairs(b.revealed) and pairs(a.targets) == pairs(b.targets)
    assert not np.array_equal(a.holdout_users, c.holdout_users)
    for user in a.holdout_users:  # reveal 0.4 of n: round(0.6 n) targets
        n = len(row_items(a.revealed, user)) + len(row_items(a.targets, user))
        assert len(row_items(a.targets, user)) == min(max(round(0.6 * n), 1), n - 1)


def test_only_users_with_two_interactions_can_be_held_out():
    split = synthetic_split()
    ind = make_inductive_split(split, holdout=0.99, reveal=0.5, seed=0)
    n_per_user = np.diff((split.train + split.valid + split.test).tocsr().indptr)
    np.testing.assert_array_equal(ind.holdout_users, np.flatnonzero(n_per_user >= 2))  # capped at the eligible
    assert row_items(ind.train_split.train, SINGLE_USER) == {3}  # the single-interaction user still trains


def test_bad_options_and_data():
    split = synthetic_split()
    for holdout, reveal in [(0.0, 0.5), (1.0, 0.5), (0.2, 0.0), (0.2, 1.0), (-0.1, 0.5)]:
        with pytest.raises(ConfigError):
            make_inductive_split(split, holdout=holdout, reveal=reveal)
    ones = scipy.sparse.csr_matrix(np.eye(4, dtype=np.float32))  # every user has 1 interaction
    empty = scipy.sparse.csr_matrix((4, 4), dtype=np.float32)
    tiny = dataclasses.replace(split, n_users=4, n_items=4, train=ones, valid=empty, test=empty)
    with pytest.raises(DataError, match="2 or more interactions"):
        make_inductive_split(tiny)


def test_config_validates_protocol_options():
    TrainConfig(protocol="inductive").resolve()
    for bad in [dict(protocol="both"), dict(holdout_users=0.0), dict(holdout_users=1.0), dict(reveal=0.0),
                dict(reveal=1.5), dict(protocol="inductive", model="mf"), dict(protocol="inductive", layers=0)]:
        with pytest.raises(ConfigError):
            TrainConfig(**bad).resolve()


# ----------------------------------------------------------------------------- graph and embeddings


def test_augmented_graph_adds_exactly_the_revealed_edges():
    split = synthetic_split()
    ind = make_inductive_split(split, seed=1)

    def edges(graph):
        return set(zip(graph.senders[:graph.n_edges].tolist(), graph.receivers[:graph.n_edges].tolist()))

    train_edges, aug_edges = edges(build_graph(ind.train_split.train)), edges(augmented_graph(ind))
    revealed = {(u, N_USERS + i) for u, i in pairs(ind.revealed)}
    revealed |= {(b, a) for a, b in revealed}  # both directions
    assert train_edges <= aug_edges
    assert aug_edges - train_edges == revealed
    assert not any(u in set(ind.holdout_users.tolist()) for u, _ in train_edges)  # isolated in training


def lightgcn_reference(interactions, user_ego, item_ego, n_layers):
    """float64 loops: A_hat[r, c] = 1 / sqrt(deg_r deg_c) per edge, e = mean_k A_hat^k x0."""
    n_users, n_items = interactions.shape
    n = n_users + n_items
    adjacency = np.zeros((n, n))
    for u, i in pairs(interactions):
        adjacency[u, n_users + i] = adjacency[n_users + i, u] = 1.0
    degree = adjacency.sum(axis=1)
    a_hat = np.zeros((n, n))
    for r in range(n):
        for c in range(n):
            if adjacency[r, c]:
                a_hat[r, c] = 1.0 / np.sqrt(degree[r] * degree[c])
    x = np.concatenate([user_ego, item_ego]).astype(np.float64)
    total = x.copy()
    for _ in range(n_layers):
        x = a_hat @ x
        total += x
    out = total / (n_layers + 1)
    return out[:n_users], out[n_users:]


def model_and_params(seed=0, n_layers=2):
    model = LightGCN(n_users=N_USERS, n_items=N_ITEMS, dim=8, n_layers=n_layers)
    dummy = to_device(build_graph(scipy.sparse.csr_matrix((N_USERS, N_ITEMS), dtype=np.float32)), "segment")
    return model, model.init(jax.random.PRNGKey(seed), dummy)["params"]


@pytest.mark.parametrize("backend", ["segment", "csr"])
def test_held_out_embeddings_match_float64_lightgcn_with_zero_ego(backend):
    split = synthetic_split()
    ind = make_inductive_split(split, seed=2)
    model, params = model_and_params(seed=3)
    interactions = ind.graph_interactions()
    user_emb, item_emb = inductive_embeddings(model, params, interactions, ind.holdout_users, backend=backend)
    user_ego = np.array(params["ids"]["user_embedding"], dtype=np.float64)
    user_ego[ind.holdout_users] = 0.0  # an unseen user's own ID embedding is zero
    ref_users, ref_items = lightgcn_reference(interactions, user_ego, np.asarray(params["ids"]["item_embedding"]), 2)
    np.testing.assert_allclose(np.asarray(user_emb), ref_users, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(item_emb), ref_items, rtol=1e-5, atol=1e-6)
    held = np.asarray(user_emb)[ind.holdout_users]
    assert np.all(np.linalg.norm(held, axis=1) > 0)  # built from propagated item information
    # ...and from nothing else: the held-out users' stored ID rows do not matter
    perturbed = {**params, "ids": {**params["ids"],
                                   "user_embedding": params["ids"]["user_embedding"].at[ind.holdout_users].add(5.0)}}
    again, _ = inductive_embeddings(model, perturbed, interactions, ind.holdout_users, backend=backend)
    np.testing.assert_allclose(np.asarray(again), np.asarray(user_emb), rtol=0, atol=0)


def test_zero_user_embeddings_does_not_touch_the_input():
    _, params = model_and_params()
    before = np.asarray(params["ids"]["user_embedding"]).copy()
    zeroed = zero_user_embeddings(params, [1, 4])
    np.testing.assert_array_equal(np.asarray(params["ids"]["user_embedding"]), before)
    out = np.asarray(zeroed["ids"]["user_embedding"])
    assert np.all(out[[1, 4]] == 0) and np.array_equal(np.delete(out, [1, 4], 0), np.delete(before, [1, 4], 0))
    assert zeroed["ids"]["item_embedding"] is params["ids"]["item_embedding"]


# ----------------------------------------------------------------------------- metrics


def loop_metrics(scores, revealed, targets, users, k):
    """Plain-loop recall@k / ndcg@k: rank every non-revealed item (ties to the lower id)."""
    recall, ndcg = [], []
    for u in users:
        excluded, relevant = row_items(revealed, u), row_items(targets, u)
        ranked = [i for i in sorted(range(scores.shape[1]), key=lambda i: (-scores[u, i], i)) if i not in excluded][:k]
        assert not set(ranked) & excluded
        hits = [1.0 if i in relevant else 0.0 for i in ranked]
        recall.append(sum(hits) / len(relevant))
        dcg = sum(h / np.log2(r + 2) for r, h in enumerate(hits))
        ndcg.append(dcg / sum(1 / np.log2(r + 2) for r in range(min(len(relevant), k))))
    return np.mean(recall), np.mean(ndcg)


def test_inductive_metrics_match_loop_and_exclude_revealed_items():
    split = synthetic_split()
    ind = make_inductive_split(split, seed=4)
    model, params = model_and_params(seed=5)
    got = evaluate_inductive(model, params, ind, backend="csr", ks=(5, 10))
    user_emb, item_emb = inductive_embeddings(model, params, ind.graph_interactions(), ind.holdout_users,
                                              backend="csr")
    scores = np.asarray(user_emb, np.float64) @ np.asarray(item_emb, np.float64).T
    for k in (5, 10):
        recall, ndcg = loop_metrics(scores, ind.revealed, ind.targets, ind.holdout_users, k)
        assert got[f"recall@{k}"] == pytest.approx(recall, abs=1e-6)
        assert got[f"ndcg@{k}"] == pytest.approx(ndcg, abs=1e-6)
    assert got["n_users"] == ind.holdout_users.size
    # the exclusion matters: ranking the revealed items too gives other numbers
    unexcluded = evaluate(user_emb, item_emb, None, ind.targets, ks=(5, 10), users=ind.holdout_users)
    assert unexcluded["recall@10"] != got["recall@10"]


def test_popularity_baseline_matches_loop():
    split = synthetic_split()
    ind = make_inductive_split(split, seed=6)
    degree = np.zeros(N_ITEMS)
    for _, i in pairs(ind.train_split.train):  # training degree, held-out users not counted
        degree[i] += 1
    scores = np.tile(degree, (N_USERS, 1))
    got = evaluate_popularity(ind, ks=(10,))
    recall, ndcg = loop_metrics(scores, ind.revealed, ind.targets, ind.holdout_users, 10)
    assert got["recall@10"] == pytest.approx(recall, abs=1e-6)
    assert got["ndcg@10"] == pytest.approx(ndcg, abs=1e-6)
    assert got["n_users"] == ind.holdout_users.size
