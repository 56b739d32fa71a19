"""Tests for itemjax.serve.recommend and experiments/recommend.py on a short inductive run of a tiny
synthetic data file: summary.json of the inductive protocol, load_run reproducing it, exclusions,
the new-user path against a float64 LightGCN loop, unknown ids."""

import json
import pathlib

import numpy as np
import pytest

from itemjax.cli import run_main
from itemjax.config import TrainConfig
from itemjax.errors import ConfigError, DataError
from itemjax.evaluation.evaluate import evaluate
from itemjax.evaluation.inductive import evaluate_inductive, inductive_embeddings
from itemjax.serve.recommend import load_run, top_k_items

pytestmark = pytest.mark.integration  # trains whole runs / starts subprocesses

ROOT = pathlib.Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS, K = 60, 45, 5


def _cli():
    from itemjax.commands import recommend

    return recommend


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """4 epochs of LightGCN (dim 8) + BPR, inductive protocol, on 60 users x 45 items."""
    from itemjax.train.run import fit

    root = tmp_path_factory.mktemp("recommend")
    rng = np.random.default_rng(0)
    users = rng.integers(0, N_USERS, 900)
    items = np.minimum(rng.zipf(1.3, 900) - 1, N_ITEMS - 1)
    lines = ["user,item"] + [f"{100 + u},{5000 + i}" for u, i in zip(users, items)]  # original ids != dense ids
    data = root / "clicks.csv"
    data.write_text("\n".join(lines) + "\n")
    config = TrainConfig(dataset=str(data), protocol="inductive", model="lightgcn", loss="bpr", dim=8, layers=2,
                         epochs=4, eval_every=2, batch_size=256, lr=0.05, ks=(K, 10), select_metric="ndcg@10",
                         progress=False, out=str(root / "run"))
    summary = fit(config)
    return root / "run", summary, load_run(root / "run")


def test_summary_says_inductive_and_holds_the_three_reports(run):
    run_dir, summary, rec = run
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["protocol"] == "inductive" and summary["protocol"] == "inductive"
    n_held = rec.inductive.holdout_users.size
    assert n_held == round(0.2 * rec.split.n_users) and saved["n_users"] == n_held
    for key in ("recall@10", "ndcg@10", "popularity/recall@10", "popularity/ndcg@10", "transductive/recall@10",
                "transductive/ndcg@10"):
        assert 0.0 <= saved[key] <= 1.0, key
    assert saved["transductive/n_users"] > 0 and saved["popularity/n_users"] == n_held


def test_load_run_reproduces_the_summary(run):
    _, summary, rec = run
    assert rec.checkpoint == "best"
    held_out = evaluate_inductive(rec.model, rec.params, rec.inductive, ks=(K, 10))
    for metric in ("recall@10", "ndcg@10", f"recall@{K}"):
        assert held_out[metric] == pytest.approx(summary[metric], abs=1e-6)
    user_emb, item_emb = inductive_embeddings(rec.model, rec.params, rec.split.train, [])
    test = evaluate(user_emb, item_emb, [rec.split.train, rec.split.valid], rec.split.test, ks=(10,))
    assert test["ndcg@10"] == pytest.approx(summary["transductive/ndcg@10"], abs=1e-6)


def _dense_items(rec, rows):
    lookup = {str(v): i for i, v in enumerate(rec.item_ids)}  # a user file's ids are str objects
    return [lookup[str(item_id)] for item_id, _, _ in rows]


def test_known_user_gets_scored_items_without_its_training_items(run):
    _, _, rec = run
    user_emb, item_emb = (np.asarray(a, np.float64) for a in
                          inductive_embeddings(rec.model, rec.params, rec.split.train, []))
    held = set(rec.inductive.holdout_users.tolist())
    would_repeat = 0
    for user in [u for u in range(rec.split.n_users) if u not in held and rec.split.train[u].nnz >= 3][:8]:
        rows = rec.for_user(int(rec.user_ids[user]), k=K)
        dense = _dense_items(rec, rows)
        trained = set(rec.split.train[user].indices.tolist())
        assert len(rows) == K and not set(dense) & trained
        scores = item_emb @ user_emb[user]
        np.testing.assert_allclose([s for _, s, _ in rows], scores[dense], rtol=1e-5)
        assert [s for _, s, _ in rows] == sorted((s for _, s, _ in rows), reverse=True)
        assert all(title is None for _, _, title in rows)  # a user file has no titles
        would_repeat += bool(set(top_k_items(scores, [], K).tolist()) & trained)
    assert would_repeat > 0  # without the exclusion, training items would have been recommended


def test_held_out_user_never_gets_its_revealed_items(run):
    _, _, rec = run
    user_emb, item_emb = (np.asarray(a, np.float64) for a in inductive_embeddings(
        rec.model, rec.params, rec.inductive.graph_interactions(), rec.inductive.holdout_users))
    would_repeat = 0
    for user in rec.inductive.holdout_users[:8]:
        revealed = set(rec.inductive.revealed[user].indices.tolist())
        dense = _dense_items(rec, rec.for_user(str(rec.user_ids[user]), k=K))  # str ids work too
        assert len(dense) == K and not set(dense) & revealed
        would_repeat += bool(set(top_k_items(item_emb @ user_emb[user], [], K).tolist()) & revealed)
    assert would_repeat > 0


def lightgcn_new_user_reference(rec, dense_items):
    """float64: one extra user row (ego zero) linked to dense_items, A_hat by loops over edges."""
    n_users, n_items = rec.split.n_users + 1, rec.split.n_items
    edges = [(u, i) for u in range(n_users - 1) for i in rec.split.train[u].indices] + [(n_users - 1, i)
                                                                                      for i in dense_items]
    n = n_users + n_items
    adjacency = np.zeros((n, n))
    for u, i in edges:
        adjacency[u, n_users + i] = adjacency[n_users + i, u] = 1.0
    degree = adjacency.sum(axis=1)
    a_hat = np.zeros((n, n))
    for r, c in zip(*np.nonzero(adjacency)):
        a_hat[r, c] = 1.0 / np.sqrt(degree[r] * degree[c])
    ego = np.concatenate([np.asarray(rec.params["ids"]["user_embedding"], np.float64), np.zeros((1, 8)),
                          np.asarray(rec.params["ids"]["item_embedding"], np.float64)])
    x, total = ego, ego.copy()
    for _ in range(rec.model.n_layers):
        x = a_hat @ x
        total += x
    out = total / (rec.model.n_layers + 1)
    return out[n_users - 1] @ out[n_users:].T


def test_new_user_matches_lightgcn_reference_and_excludes_given_items(run):
    _, _, rec = run
    given = [int(rec.item_ids[i]) for i in (0, 1, 4)]
    rows = rec.for_new_user(given, k=K)
    dense = _dense_items(rec, rows)
    assert len(rows) == K and not set(dense) & {0, 1, 4}
    reference = lightgcn_new_user_reference(rec, [0, 1, 4])
    np.testing.assert_allclose([s for _, s, _ in rows], reference[dense], rtol=1e-4, atol=1e-6)
    reference[[0, 1, 4]] = -np.inf
    assert dense == list(np.argsort(-reference, kind="stable")[:K])
    assert set(top_k_items(reference, [], K).tolist()) == set(dense)  # sanity of the helper
    # order, duplicates and str/int spelling of the ids do not matter
    assert rec.for_new_user([str(given[2]), given[0], given[1], given[0]], k=K) == rows


def test_unknown_ids_and_bad_requests(run):
    run_dir, _, rec = run
    with pytest.raises(DataError, match=r"user id 'nobody'.*--list-users"):
        rec.for_user("nobody")
    with pytest.raises(DataError, match=r"item id 99.*--list-items"):
        rec.for_new_user([int(rec.item_ids[0]), 99])
    with pytest.raises(DataError, match="at least one item"):
        rec.for_new_user([])
    with pytest.raises(ConfigError):
        rec.for_user(int(rec.user_ids[0]), k=0)
    with pytest.raises(DataError, match="no config.json"):
        load_run(run_dir / "checkpoints")


def test_cli_prints_a_numbered_list_and_exits_2_on_unknown_ids(run, capsys):
    run_dir, _, rec = run
    cli = _cli()
    given = f"{rec.item_ids[2]},{rec.item_ids[3]}"
    assert run_main(cli.main, [str(run_dir), "--items", given, "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    expected = rec.for_new_user(given.split(","), k=3)
    assert [line.split()[:2] for line in out[-3:]] == [[f"{r}.", str(item)] for r, (item, _, _) in
                                                        enumerate(expected, start=1)]
    assert run_main(cli.main, [str(run_dir), "--user", "123456"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "123456" in err[0] and "--list-users" in err[0]
    assert run_main(cli.main, [str(run_dir), "--list-users"]) == 0
    assert capsys.readouterr().out.split() == [str(u) for u in rec.user_ids.tolist()]
