"""``itemjax export``: the exported embeddings are the run's, top_k.parquet is every user's exact
top-K of unseen items (float64 numpy reference), load_run answers from the folder alone, and the
faiss index returns the exact inner-product top-K."""

from __future__ import annotations

import numpy as np
import pytest

from itemjax.commands import export as export_command
from itemjax.config import TrainConfig
from itemjax.errors import ConfigError
from itemjax.serve.recommend import ExportedRecommender, load_run
from itemjax.train.run import fit
from itemjax.runio import read_table

pytestmark = pytest.mark.integration  # trains a run


@pytest.fixture(scope="module")
def exported(tiny_csv, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    fit(TrainConfig(dataset=str(tiny_csv), out=str(root / "run"), progress=False, dim=8, layers=2, epochs=3,
                    eval_every=1))
    assert export_command.main([str(root / "run"), "--out", str(root / "out"), "-k", "5", "--faiss",
                                "--no-progress"]) == 0
    return root


def test_export_matches_the_run_and_a_float64_top_k(exported):
    run, out = load_run(exported / "run"), exported / "out"
    user_emb, item_emb = run.embeddings("train")
    np.testing.assert_allclose(np.load(out / "user_embeddings.npy"), user_emb, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.load(out / "item_embeddings.npy"), item_emb, rtol=1e-6, atol=1e-7)
    split = run.split
    seen = (split.train + split.valid + split.test).toarray() > 0
    table = read_table(out / "top_k")
    assert set(table) == {"user_id", "rank", "item_id", "score"}
    item_index = {str(i): n for n, i in enumerate(split.item_ids)}
    exported_user = np.asarray([str(u) for u in table["user_id"]])
    for u, user_id in enumerate(split.user_ids):
        rows = exported_user == str(user_id)
        scores = item_emb.astype(np.float64) @ user_emb[u].astype(np.float64)
        order = [i for i in np.argsort(-scores, kind="stable") if not seen[u, i]][:5]
        assert list(table["rank"][rows]) == list(range(1, len(order) + 1))
        assert [item_index[str(i)] for i in table["item_id"][rows]] == order
        np.testing.assert_allclose(table["score"][rows], scores[order], rtol=1e-5, atol=1e-6)


def test_load_run_answers_from_the_export_alone(exported, monkeypatch):
    import itemjax.data.datasets

    monkeypatch.setattr(itemjax.data.datasets, "load_dataset", lambda *a, **k: pytest.fail("re-read the raw data"))
    rec = load_run(exported / "out")
    assert isinstance(rec, ExportedRecommender)
    table = read_table(exported / "out" / "top_k")
    user_id = table["user_id"][0]
    want = [str(i) for i, u in zip(table["item_id"], table["user_id"]) if u == user_id]
    assert [str(item) for item, _, _ in rec.for_user(user_id, k=5)] == want
    with pytest.raises(ConfigError, match="known users only"):
        rec.for_new_user(["i1"])


def test_faiss_index_returns_the_exact_top_k(exported):
    import faiss

    out = exported / "out"
    index = faiss.read_index(str(out / "items.faiss"))
    user_emb, item_emb = np.load(out / "user_embeddings.npy"), np.load(out / "item_embeddings.npy")
    _, found = index.search(user_emb, 7)
    want = np.argsort(-(user_emb.astype(np.float64) @ item_emb.T.astype(np.float64)), axis=1, kind="stable")[:, :7]
    assert np.array_equal(found, want)
