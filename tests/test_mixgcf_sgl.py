"""MixGCF negatives and SGL-ED views: per-layer model outputs, the mixing against float64 loops,
the MixGCF objective against a float64 re-computation of its step, edge dropout against the
normalised adjacency of the kept interactions, InfoNCE's value and gradient, and SGL's
one-view-per-epoch rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import central_differences
import scipy.sparse as sp

from itemjax.objective import sampling
from itemjax.config import TrainConfig
from itemjax.errors import ConfigError
from itemjax.graph.bipartite import build_graph
from itemjax.objective.losses import info_nce
from itemjax.model.models import pool_layers
from itemjax.graph.propagation import edge_dropout, propagate, to_device
from itemjax.objective.objectives import Batch, mix_hard_negatives, mixgcf_objective, sgl_loss
from itemjax.train.step import make_model


def small_train(n_users=30, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.2
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    return sp.csr_matrix(dense.astype(np.float32))


def dense_adjacency(graph) -> np.ndarray:
    """``A_hat`` of a (device) graph from its CSR arrays, float64 ``[n_nodes, n_nodes]``."""
    n = graph.n_users + graph.n_items
    return sp.csr_matrix((np.asarray(graph.data, np.float64), np.asarray(graph.indices), np.asarray(graph.indptr)),
                         shape=(n, n)).toarray()


# ----------------------------------------------------------------------------- per-layer outputs


@pytest.mark.parametrize("model_name", ["mf", "lightgcn", "ngcf", "gat", "sage"])
def test_layers_pool_to_the_final_embeddings(model_name):
    train = small_train()
    graph = to_device(build_graph(train), "segment")
    model = make_model(TrainConfig(model=model_name, loss="bpr", dim=8, layers=2).resolve(), *train.shape)
    params = model.init(jax.random.PRNGKey(0), graph)["params"]
    users, items = model.apply({"params": params}, graph)
    user_layers, item_layers = model.apply({"params": params}, graph, layers=True)
    n_layers = 1 if model_name == "mf" else 3
    assert user_layers.shape == (train.shape[0], n_layers, 8) and item_layers.shape == (train.shape[1], n_layers, 8)
    np.testing.assert_allclose(pool_layers(user_layers, model.LAYER_POOL), users, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pool_layers(item_layers, model.LAYER_POOL), items, rtol=1e-5, atol=1e-6)
    # the ego layer is the ID table
    np.testing.assert_allclose(item_layers[:, 0], params["ids"]["item_embedding"], rtol=1e-6)


# ----------------------------------------------------------------------------- MixGCF


def ref_mix(user, pos, cand, alpha, pool):
    """float64 loops: per (b, l), mix every candidate with the positive, keep the best-scoring one."""
    B, M, L, d = cand.shape
    out = np.zeros((B, L, d))
    picks = np.zeros((B, L), int)
    for b in range(B):
        for l in range(L):
            u = user[b] if pool == "mean" else user[b, l]
            best, best_score = None, -np.inf
            for c in range(M):
                mixed = alpha[b, l] * pos[b, l] + (1 - alpha[b, l]) * cand[b, c, l]
                score = float(u @ mixed)
                if score > best_score:
                    best, best_score, picks[b, l] = mixed, score, c
            out[b, l] = best
    return out, picks


@pytest.mark.parametrize("dense_scores", [False, True])
@pytest.mark.parametrize("pool", ["mean", "concat"])
def test_mix_hard_negatives_matches_reference(pool, dense_scores):
    rng = np.random.default_rng(1)
    B, M, L, d = 5, 7, 3, 4
    user = rng.normal(size=(B, d) if pool == "mean" else (B, L, d))
    pos, cand, alpha = rng.normal(size=(B, L, d)), rng.normal(size=(B, M, L, d)), rng.uniform(size=(B, L))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    # an item table whose rows (b, c) are the candidates, plus rows no pair draws; a candidate may
    # be drawn by two pairs (the last pair repeats the first one's ids)
    table = np.concatenate([cand.reshape(B * M, L, d), rng.normal(size=(3, L, d))])
    ids = np.arange(B * M).reshape(B, M)
    ids[-1] = ids[0]
    cand = table[ids]
    out = mix_hard_negatives(f32(user), f32(pos), f32(table), jnp.asarray(ids), f32(alpha), pool, dense_scores)
    want, picks = ref_mix(user, pos, cand, alpha, pool)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-6)
    # gradient of sum(w * out): alpha w to the positive, (1 - alpha) w to the chosen candidate's
    # row (summed over the pairs that chose it), 0 elsewhere and nothing to the user
    w = rng.normal(size=(B, L, d))
    grad_user, grad_pos, grad_table = jax.grad(
        lambda u, p, t: jnp.sum(f32(w) * mix_hard_negatives(u, p, t, jnp.asarray(ids), f32(alpha), pool, dense_scores)),
        argnums=(0, 1, 2))(f32(user), f32(pos), f32(table))
    want_table = np.zeros_like(table)
    for b in range(B):
        for l in range(L):
            want_table[ids[b, picks[b, l]], l] += (1 - alpha[b, l]) * w[b, l]
    np.testing.assert_allclose(np.asarray(grad_pos), alpha[..., None] * w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad_table), want_table, rtol=1e-5, atol=1e-6)
    assert not np.any(np.asarray(grad_user))


def test_mixgcf_objective_matches_reference():
    """Re-draw the step's pairs, candidates and mixing weights with the same keys; recompute LightGCN's
    layers, the synthesised negatives, BPR and the L2 term in float64."""
    train = small_train()
    data = sampling.make_train_data(train)
    g = build_graph(train)
    graph = to_device(g, "segment")
    config = TrainConfig(model="lightgcn", loss="bpr", dim=8, layers=2).resolve()
    model = make_model(config, *train.shape)
    params = model.init(jax.random.PRNGKey(0), graph)["params"]
    key, B, M, l2 = jax.random.PRNGKey(3), 12, 6, 0.01
    loss, aux = mixgcf_objective(params, model.apply, Batch(graph=graph, data=data), key, 0, batch_size=B, l2=l2,
                                 n_candidates=M, pool="mean", user_sampling="uniform")
    k_fwd, k_edge, k_neg, k_mix = jax.random.split(key, 4)
    users, pos = map(np.asarray, sampling.sample_pairs(k_edge, data, B, "uniform"))
    cand = np.asarray(sampling.negatives(k_neg, data, jnp.asarray(users), M, 0.0))
    alpha = np.asarray(jax.random.uniform(k_mix, (B, 3)), np.float64)
    dense = train.toarray() > 0
    assert dense[users, pos].all() and not dense[users[:, None], cand].any()
    P = np.asarray(params["ids"]["user_embedding"], np.float64)
    Q = np.asarray(params["ids"]["item_embedding"], np.float64)
    A = dense_adjacency(g)
    x = [np.concatenate([P, Q])]
    for _ in range(2):
        x.append(A @ x[-1])
    layers = np.stack(x, axis=1)  # [n_nodes, 3, d]
    U, I = layers[: train.shape[0]], layers[train.shape[0]:]
    u = U[users].mean(1)
    neg_layers, _ = ref_mix(u, I[pos], I[cand], alpha, "mean")
    pos_s, neg_s = np.sum(u * I[pos].mean(1), -1), np.sum(u * neg_layers.mean(1), -1)
    bpr = np.mean(np.log1p(np.exp(neg_s - pos_s)))
    reg = 0.5 * (np.sum(P[users] ** 2) + np.sum(Q[pos] ** 2) + np.sum(neg_layers[:, 0] ** 2)) / B
    np.testing.assert_allclose(float(aux["rank_loss"]), bpr, rtol=1e-5)
    np.testing.assert_allclose(float(loss), bpr + l2 * reg, rtol=1e-5)


# ----------------------------------------------------------------------------- SGL-ED


def test_edge_dropout_renormalises_the_kept_interactions():
    train = small_train()
    g = build_graph(train)
    n_users = train.shape[0]
    for backend in ("segment", "csr"):
        graph = to_device(g, backend)
        same = edge_dropout(graph, jax.random.PRNGKey(0), 0.0)
        np.testing.assert_allclose(np.asarray(same.data), g.data, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(same.weights), g.weights, rtol=1e-6)
        view = edge_dropout(graph, jax.random.PRNGKey(1), 0.4)
        got = dense_adjacency(view)
        # the kept interactions, read off the user rows; the reference graph is built from them alone
        kept = got[:n_users, n_users:] > 0
        assert 0.45 < kept.sum() / train.nnz < 0.75  # about 60% kept
        assert np.array_equal(kept, got[n_users:, :n_users].T > 0)  # both directions together
        assert not (kept & ~(train.toarray() > 0)).any()
        want = dense_adjacency(build_graph(sp.csr_matrix(kept.astype(np.float32))))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        # the padded edge weights carry the same view, and propagation reads it on either backend
        x = np.random.default_rng(0).normal(size=(g.n_nodes, 3)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(propagate(view, jnp.asarray(x))), want @ x, rtol=1e-4, atol=1e-5)
        assert np.all(np.asarray(view.weights)[g.n_edges:] == 0)


def ref_info_nce(a, b, where, temperature):
    za = a / np.linalg.norm(a, axis=1, keepdims=True)
    zb = b / np.linalg.norm(b, axis=1, keepdims=True)
    rows = [i for i in range(len(a)) if where[i]]
    total = 0.0
    for i in rows:
        logits = [za[i] @ zb[j] / temperature for j in rows]
        total += -za[i] @ zb[i] / temperature + np.log(np.sum(np.exp(logits)))
    return total / len(rows)


def test_info_nce_value_and_gradient_match_reference():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    where = np.array([True, True, False, True, True, False])
    T = 0.3
    value, grad = jax.value_and_grad(lambda x: info_nce(x, jnp.asarray(b, jnp.float32), jnp.asarray(where),
                                                        temperature=T))(jnp.asarray(a, jnp.float32))
    np.testing.assert_allclose(float(value), ref_info_nce(a, b, where, T), rtol=1e-5)
    want = central_differences(lambda x: ref_info_nce(x, b, where, T), a)
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-3, atol=1e-5)
    assert np.all(np.asarray(grad)[~where] == 0)  # masked rows are neither anchors nor negatives
    # every row valid by default
    np.testing.assert_allclose(float(info_nce(jnp.asarray(a), jnp.asarray(b), temperature=T)),
                               ref_info_nce(a, b, np.ones(6, bool), T), rtol=1e-5)


def test_sgl_views_change_per_epoch_and_the_term_matches_its_parts():
    train = small_train()
    data = sampling.make_train_data(train)
    graph = to_device(build_graph(train), "csr")
    config = TrainConfig(model="lightgcn", loss="bpr", dim=8, layers=2).resolve()
    model = make_model(config, *train.shape)
    params = model.init(jax.random.PRNGKey(0), graph)["params"]
    batch = Batch(graph=graph, data=data)
    users = jnp.array([0, 3, 3, 5, 7])  # a repeated user counts once
    items = jnp.array([[1, 2], [2, 9]])
    where = jnp.array([[True, True], [True, False]])  # item 9 is padding
    options = dict(seed=4, steps_per_epoch=5, drop=0.3, temperature=0.2, weight=0.5)
    term = lambda step: float(sgl_loss(params, model.apply, batch, jax.random.PRNGKey(1), step, users, items, where,  # noqa: E731
                                       **options))
    assert term(0) == term(4)  # one pair of views per epoch
    assert term(5) != term(0)
    # the epoch-0 term from its parts
    view_key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(4), 0x5617), 0)
    k1, k2 = jax.random.split(view_key)
    u1, i1 = model.apply({"params": params}, edge_dropout(graph, k1, 0.3))
    u2, i2 = model.apply({"params": params}, edge_dropout(graph, k2, 0.3))
    want = 0.5 * (ref_info_nce(np.asarray(u1)[[0, 3, 5, 7]], np.asarray(u2)[[0, 3, 5, 7]], np.ones(4, bool), 0.2)
                  + ref_info_nce(np.asarray(i1)[[1, 2]], np.asarray(i2)[[1, 2]], np.ones(2, bool), 0.2))
    np.testing.assert_allclose(term(0), want, rtol=1e-4)
    # more item slots (ITEM's B x P positives) than items in the catalogue: the distinct items are
    # capped at the catalogue's size, and the term is still the one over the distinct valid items
    many = jnp.asarray(np.random.default_rng(2).integers(0, 6, size=(12, 8)))  # 96 slots > 40 items
    many_where = many != 5  # item 5 only ever in padding slots
    got = float(sgl_loss(params, model.apply, batch, jax.random.PRNGKey(1), 0, users, many, many_where, **options))
    distinct = [0, 1, 2, 3, 4]
    want_many = 0.5 * (ref_info_nce(np.asarray(u1)[[0, 3, 5, 7]], np.asarray(u2)[[0, 3, 5, 7]], np.ones(4, bool), 0.2)
                       + ref_info_nce(np.asarray(i1)[distinct], np.asarray(i2)[distinct], np.ones(5, bool), 0.2))
    np.testing.assert_allclose(got, want_many, rtol=1e-4)


def test_options_name_their_constraints():
    with pytest.raises(ConfigError, match="--loss bpr"):
        TrainConfig(loss="item", neg_sampler="mixgcf").resolve()
    with pytest.raises(ConfigError, match="--model lightgcn or ngcf"):
        TrainConfig(model="mf", ssl="sgl-ed").resolve()
    with pytest.raises(ConfigError, match="--ssl-drop"):
        TrainConfig(ssl="sgl-ed", ssl_drop=1.0).resolve()
