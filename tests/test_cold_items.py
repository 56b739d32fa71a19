"""Cold-start items (``--protocol inductive-items``): the split, the baselines against float64
loops, the features-only embedding of a held-out item, and a run end to end."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from itemjax.config import TrainConfig
from itemjax.data.datasets import RawDataset
from itemjax.data.features import NodeFeatures
from itemjax.data.split import make_split
from itemjax.errors import ConfigError, DataError
from itemjax.evaluation.inductive import (
    ColdItemSplit,
    content_embeddings,
    evaluate_cold_items,
    feature_matrix,
    feature_popularity_scores,
    inductive_embeddings,
    make_cold_item_split,
    protocol_split,
)
from itemjax.graph.bipartite import build_graph
from itemjax.graph.propagation import to_device
from itemjax.train.step import make_model


def random_split(n_users=40, n_items=30, density=0.25, seed=0, valid_frac=0.1):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < density
    users, items = np.nonzero(dense)
    raw = RawDataset(name="toy", n_users=n_users, n_items=n_items, users=users.astype(np.int64),
                     items=items.astype(np.int64), test_users=None, test_items=None, user_ids=np.arange(n_users),
                     item_ids=np.arange(n_items), files={}, n_duplicates=0)
    return make_split(raw, test_frac=0.2, valid_frac=valid_frac, seed=seed), dense


def random_features(n_items=30, n_features=5, seed=1):
    rng = np.random.default_rng(seed)
    matrix = (rng.random((n_items, n_features)) < 0.4) * rng.integers(1, 4, (n_items, n_features))
    matrix[:, 0] += matrix.sum(1) == 0  # every item has a feature
    return NodeFeatures.from_matrix(sp.csr_matrix(matrix.astype(np.float64)), [f"f{j}" for j in range(n_features)])


def test_the_split_moves_every_interaction_of_the_held_out_items_to_targets():
    split, dense = random_split()
    cold = make_cold_item_split(split, holdout=0.2, seed=3)
    assert cold.holdout_items.size == 6 and np.all(np.diff(cold.holdout_items) > 0)
    for part in (cold.train_split.train, cold.train_split.valid, cold.train_split.test):
        assert part[:, cold.holdout_items].nnz == 0
    every = (split.train + split.valid + split.test).toarray() > 0
    np.testing.assert_array_equal(every, dense)
    want = np.zeros_like(dense)
    want[:, cold.holdout_items] = dense[:, cold.holdout_items]
    np.testing.assert_array_equal(cold.targets.toarray() > 0, want)
    kept = (cold.train_split.train + cold.train_split.valid + cold.train_split.test).toarray() > 0
    np.testing.assert_array_equal(kept | want, dense)  # nothing lost, nothing invented
    np.testing.assert_array_equal(cold.users, np.flatnonzero(want.any(1)))
    again = make_cold_item_split(split, holdout=0.2, seed=3)
    np.testing.assert_array_equal(again.holdout_items, cold.holdout_items)
    assert not np.array_equal(make_cold_item_split(split, holdout=0.2, seed=4).holdout_items, cold.holdout_items)
    with pytest.raises(ConfigError, match="--holdout-items"):
        make_cold_item_split(split, holdout=1.0)


def test_the_split_refuses_to_hold_out_every_item():
    split, _ = random_split(n_users=3, n_items=2, density=1.0, valid_frac=0.0)
    with pytest.raises(DataError, match="lower --holdout-items"):
        make_cold_item_split(split, holdout=0.99)


def test_feature_popularity_and_content_baselines_match_float64_loops():
    split, _ = random_split()
    cold = make_cold_item_split(split, holdout=0.2, seed=0)
    train = cold.train_split.train.toarray()
    features = random_features()
    F = feature_matrix(features, 30).toarray()
    np.testing.assert_allclose(F.sum(1), 1.0, rtol=1e-6)
    degree = train.sum(0)
    pop = np.zeros(F.shape[1])
    for f in range(F.shape[1]):
        warm = [j for j in range(30) if degree[j] > 0]
        mass = sum(F[j, f] for j in warm)
        pop[f] = sum(F[j, f] * degree[j] for j in warm) / mass if mass > 0 else 0.0
    want = np.array([sum(F[i, f] * pop[f] for f in range(F.shape[1])) for i in range(30)])
    np.testing.assert_allclose(feature_popularity_scores(cold.train_split.train, sp.csr_matrix(F)), want, rtol=1e-12)
    users, items = content_embeddings(cold.train_split.train, sp.csr_matrix(F))
    for u in range(0, 40, 7):
        profile = sum(F[j] for j in range(30) if train[u, j])
        for i in range(0, 30, 5):
            norm = np.linalg.norm(profile) * np.linalg.norm(F[i])
            cosine = profile @ F[i] / norm if norm > 0 else 0.0
            assert float(users[u] @ items[i]) == pytest.approx(cosine, abs=1e-6)


def ref_ndcg_at(scores, relevant, k):
    order = np.argsort(-scores, kind="stable")[:k]
    dcg = sum(1 / np.log2(r + 2) for r, i in enumerate(order) if relevant[i])
    ideal = sum(1 / np.log2(r + 2) for r in range(min(k, int(relevant.sum()))))
    return dcg / ideal


def test_cold_items_are_ranked_among_the_held_out_items_only():
    split, _ = random_split(n_users=50, n_items=60)
    cold = make_cold_item_split(split, holdout=0.25, seed=1)
    rng = np.random.default_rng(2)
    user_emb, item_emb = rng.normal(size=(50, 4)), rng.normal(size=(60, 4))
    item_emb[np.setdiff1d(np.arange(60), cold.holdout_items)] += 100.0  # warm items would win if they competed
    got = evaluate_cold_items(user_emb, item_emb, cold, ks=(5,))
    with pytest.raises(ConfigError, match="raise --holdout-items or lower --ks"):
        evaluate_cold_items(user_emb, item_emb, cold, ks=(5, cold.holdout_items.size + 1))
    targets = cold.targets.toarray()[:, cold.holdout_items] > 0
    want = [ref_ndcg_at(item_emb[cold.holdout_items] @ user_emb[u], targets[u], 5) for u in cold.users]
    assert got["n_users"] == len(cold.users)
    assert got["ndcg@5"] == pytest.approx(np.mean(want), rel=1e-5)


def test_a_held_out_item_is_embedded_from_its_features_alone():
    """LightGCN, K layers: an isolated item with a zero ID row has e_i = (mean of its feature
    embeddings) / (K + 1), whatever its trained ID row holds."""
    split, _ = random_split()
    cold = make_cold_item_split(split, holdout=0.2, seed=0)
    features = random_features()
    config = TrainConfig(model="lightgcn", loss="bpr", dim=6, layers=2).resolve()
    model = make_model(config, 40, 30, 0, features.n_features)
    graph = to_device(build_graph(cold.train_split.train), "segment", None, features)
    params = model.init(jax.random.PRNGKey(0), graph)["params"]
    _, items = inductive_embeddings(model, params, cold.train_split.train, (), backend="segment",
                                    features=(None, features), unseen_items=cold.holdout_items)
    table = np.asarray(params["ids"]["item_feature_embedding"], np.float64)
    F = feature_matrix(features, 30).toarray()
    want = F[cold.holdout_items] @ table / 3
    np.testing.assert_allclose(np.asarray(items)[cold.holdout_items], want, rtol=1e-5, atol=1e-6)
    assert isinstance(cold, ColdItemSplit) and cold.target_name.startswith("cold-start")


def test_the_protocol_needs_item_features():
    with pytest.raises(ConfigError, match="--item-features"):
        TrainConfig(protocol="inductive-items").resolve()
    with pytest.raises(ConfigError, match="--item-dropout"):
        TrainConfig(item_dropout=1.0).resolve()
    split, _ = random_split()  # 30 items: 10% held out = 3, fewer than the cut-off 20, refused before training
    config = TrainConfig(protocol="inductive-items", item_features="genres", ks=(20,)).resolve()
    with pytest.raises(ConfigError, match="raise --holdout-items or lower --ks"):
        protocol_split(split, config)


@pytest.mark.integration
def test_a_cold_item_run_reports_the_model_and_both_baselines(tiny_csv, tmp_path):
    from itemjax.serve.recommend import load_run
    from itemjax.train.run import fit

    (tmp_path / "items.csv").write_text("".join(f"i{i},kind{i % 4}\ni{i},size{i % 3}\n" for i in range(80)))
    out = tmp_path / "run"
    summary = fit(TrainConfig(dataset=str(tiny_csv), out=str(out), progress=False, dim=8, layers=2, epochs=2,
                              eval_every=1, protocol="inductive-items", holdout_items=0.3, item_dropout=0.3, ks=(10, 20),
                              item_features=str(tmp_path / "items.csv")))
    assert summary["split"] == "cold-start items' interactions" and summary["cold/holdout_items"] == 24
    rec = load_run(out)  # the same held-out items, their ID rows zero in the served embeddings
    assert rec.inductive.holdout_items.size == 24
    _, item_emb = rec.embeddings("train")
    cold = rec.inductive
    want = evaluate_cold_items(*rec.embeddings("train"), cold, ks=(10, 20))
    assert summary["ndcg@10"] == pytest.approx(want["ndcg@10"], rel=1e-4)
    for name in ("popularity", "features_only", "transductive"):
        assert 0 <= summary[f"{name}/ndcg@10"] <= 1
    assert np.isfinite(item_emb).all()
