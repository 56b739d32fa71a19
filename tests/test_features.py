"""Side features: the loader (built-in MovieLens sets and files), the ego embedding against a numpy
reference, no change at all without features, and a run that trains and reloads with them."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from itemjax.config import TrainConfig
from itemjax.data.datasets import load_dataset
from itemjax.errors import ConfigError, DataError
from itemjax.data.features import NodeFeatures, load_features
from itemjax.graph.bipartite import build_graph
from itemjax.graph.propagation import to_device
from itemjax.train.step import make_model


def test_node_features_pad_and_normalise():
    matrix = sp.csr_matrix(np.array([[1.0, 0, 3.0], [0, 0, 0], [0, 2.0, 0]]))
    f = NodeFeatures.from_matrix(matrix, ["a", "b", "c"])
    assert f.ids.shape == (3, 2) and f.n_features == 3
    dense = np.zeros((3, 3))
    for r in range(3):
        for j in range(2):
            dense[r, f.ids[r, j]] += f.weights[r, j]
    np.testing.assert_allclose(dense, [[0.25, 0, 0.75], [0, 0, 0], [0, 1, 0]], rtol=1e-6)
    assert f.pad_rows(5).weights[3:].sum() == 0


@pytest.mark.parametrize("model_name", ["mf", "lightgcn", "ngcf"])
def test_ego_embedding_adds_the_feature_mean_and_nothing_without_features(model_name):
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((12, 9)) < 0.3).astype(np.float32))
    item_matrix = sp.csr_matrix((rng.random((9, 4)) < 0.5) * rng.integers(1, 3, (9, 4)).astype(np.float64))
    items = NodeFeatures.from_matrix(item_matrix, list("wxyz"))
    config = TrainConfig(model=model_name, loss="bpr", dim=6, layers=2).resolve()
    plain = make_model(config, 12, 9)
    featured = make_model(config, 12, 9, 0, 4)
    graph = to_device(build_graph(train), "segment", None, items)
    params = featured.init(jax.random.PRNGKey(0), graph)["params"]
    assert params["ids"]["item_feature_embedding"].shape == (4, 6)
    if model_name == "mf":  # MF's output is the ego embedding itself: check it against numpy
        _, got = featured.apply({"params": params}, graph)
        table = np.asarray(params["ids"]["item_feature_embedding"], np.float64)
        weights = item_matrix.toarray() / np.maximum(item_matrix.toarray().sum(1, keepdims=True), 1e-300)
        want = np.asarray(params["ids"]["item_embedding"], np.float64) + weights @ table
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # the same ID tables with every feature weight 0, or no features at all: bit-identical outputs
    empty = to_device(build_graph(train), "segment", None, NodeFeatures.from_matrix(sp.csr_matrix((9, 4)), "wxyz"))
    plain_params = {**params, "ids": {k: v for k, v in params["ids"].items() if "feature" not in k}}
    a = featured.apply({"params": params}, empty)
    b = plain.apply({"params": plain_params}, to_device(build_graph(train), "segment"))
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_feature_file_ids_values_and_errors(tmp_path):
    (tmp_path / "d.csv").write_text("user,item\nu1,a\nu1,b\nu2,b\nu3,c\n")
    raw = load_dataset(tmp_path / "d.csv")
    (tmp_path / "f.csv").write_text("id,feature,value\na,red,1\na,big,3\nb,red,2\nzzz,red,1\n")
    f = load_features(str(tmp_path / "f.csv"), "item", raw)
    assert f.names == ("big", "red")
    row = {f.names[i]: w for i, w in zip(f.ids[0], f.weights[0]) if w > 0}  # item a
    assert row == pytest.approx({"big": 0.75, "red": 0.25})
    assert f.weights[2].sum() == 0  # item c has no features; zzz is not an item here
    with pytest.raises(ConfigError, match="neither a built-in set"):
        load_features("colours", "item", raw)
    (tmp_path / "bad.csv").write_text("a,red,heavy\n")
    with pytest.raises(DataError, match="bad.csv:1: feature value 'heavy'"):
        load_features(str(tmp_path / "bad.csv"), "item", raw)
    with pytest.raises(DataError, match="no MovieLens"):
        load_features("genres", "item", raw)


@pytest.mark.skipif(not os.environ.get("ITEMJAX_DATA"), reason="needs ITEMJAX_DATA")
def test_movielens_built_in_features():
    root = os.environ["ITEMJAX_DATA"]
    raw = load_dataset("ml-100k", data_dir=root, download=False, progress=False)
    genres = load_features("genres", "item", raw, root)
    toy_story = list(raw.item_ids).index(1)
    row = {genres.names[i] for i, w in zip(genres.ids[toy_story], genres.weights[toy_story]) if w > 0}
    assert row == {"genre=Animation", "genre=Children's", "genre=Comedy"}
    users = load_features("demographics", "user", raw, root)
    first = list(raw.user_ids).index(1)  # 1|24|M|technician|85711
    assert {users.names[i] for i, w in zip(users.ids[first], users.weights[first]) if w > 0} == \
        {"age=18", "gender=M", "occupation=technician"}
    pairs = load_dataset(os.path.join(root, "ml-1m", "user_movie_pairs.dat.gz"), progress=False)
    ml1m = load_features("genres", "item", pairs, root)  # found beside the pairs file
    assert ml1m.n_features == 18 and (ml1m.weights.sum(1) > 0).mean() > 0.99


@pytest.mark.integration
def test_run_with_features_trains_and_reloads(tiny_csv, tmp_path):
    from itemjax.serve.recommend import load_run
    from itemjax.train.run import fit

    lines = [f"i{i},kind{i % 3}\n" for i in range(80)]
    (tmp_path / "items.csv").write_text("".join(lines))
    out = tmp_path / "run"
    summary = fit(TrainConfig(dataset=str(tiny_csv), out=str(out), progress=False, dim=8, layers=2, epochs=2,
                              eval_every=1, item_features=str(tmp_path / "items.csv")))
    assert 0 < summary["ndcg@20"] <= 1
    rec = load_run(out)
    assert rec.params["ids"]["item_feature_embedding"].shape == (3, 8)
    assert len(rec.for_user("u1", k=5)) == 5
