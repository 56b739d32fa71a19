"""compare.py: the time-to-reach table (both directions, as fractions) from saved runs."""

from __future__ import annotations

import json
import pathlib
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    from itemjax.commands import compare

    return compare


def fake_run(path: pathlib.Path, loss: str, curve: list, test: tuple, refit=None, per_user=None):
    """A finished run: validation NDCG@20 ``curve`` of ``(elapsed, value)``; test ``(recall, ndcg)``;
    ``per_user``: ``{"user": rows, "recall@20": ..., "ndcg@20": ...}`` written as per_user_test."""
    path.mkdir(parents=True)
    if per_user is not None:
        from itemjax.runio import write_table

        write_table(path / "per_user_test", per_user)
    records = [{"epoch": i + 1, "split": "valid", "elapsed": t, "train_seconds": t / 2, "ndcg@20": v, "step": 10 * i}
               for i, (t, v) in enumerate(curve)]
    path.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"recall@20": test[0], "ndcg@20": test[1], "train_seconds": curve[-1][0] / 2, "selected_epoch": 1,
               "steps": 10 * len(curve), "stop_reason": "time budget", "load_average": {"mean": 1.0}}
    if refit:
        summary.update({"refit/recall@20": refit[0], "refit/ndcg@20": refit[1]})
    path.joinpath("summary.json").write_text(json.dumps(summary))
    return types.SimpleNamespace(loss=loss, seed=0, out=str(path))


def test_time_to_reach_each_others_best_and_fraction(compare, tmp_path):
    bpr = fake_run(tmp_path / "bpr", "bpr", [(100, 0.10), (200, 0.20), (400, 0.30), (800, 0.29)], (0.2, 0.1),
                   refit=(0.22, 0.11))
    item = fake_run(tmp_path / "item", "item", [(50, 0.25), (100, 0.31), (200, 0.33)], (0.3, 0.15),
                    refit=(0.33, 0.165))
    result = compare.summarise(tmp_path, [bpr, item])
    table = result["table"]
    # ITEM reaches BPR's best (0.30) at 100 s of the elapsed clock; BPR took 400 s to its best
    assert table["item"]["seconds_to_bpr_best_valid"] == [100]
    assert table["item"]["fraction_of_bpr_time_to_its_best"] == [pytest.approx(0.25)]
    assert table["bpr"]["seconds_to_item_best_valid"] == [None]  # never reached 0.33
    assert table["bpr"]["seconds_to_best"]["mean"] == 400 and table["item"]["seconds_to_best"]["mean"] == 200
    assert table["item"]["ndcg@20"]["gain_vs_bpr"] == pytest.approx(0.5)
    assert table["item"]["refit/recall@20"]["gain_vs_bpr"] == pytest.approx(0.5)
    text = compare.markdown(result, "t")
    assert "refit NDCG@20" in text and "bpr: 100 (0.25)" in text and "item: never (never)" in text


def test_paired_per_user_differences_in_the_comparison(compare, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    users = np.arange(30)
    a = {"user": users, "recall@20": rng.random(30), "ndcg@20": rng.random(30)}
    b = {"user": users[::-1], "recall@20": rng.random(30), "ndcg@20": rng.random(30)}  # stored in another order
    bpr = fake_run(tmp_path / "bpr", "bpr", [(100, 0.1)], (0.2, 0.1), per_user=a)
    item = fake_run(tmp_path / "item", "item", [(100, 0.2)], (0.3, 0.15), per_user=b)
    result = compare.summarise(tmp_path, [bpr, item])
    (test,) = result["paired"]["item"]["ndcg@20"]
    want = compare.paired_test(a["ndcg@20"], b["ndcg@20"][::-1])  # matched by user
    assert test["mean_diff"] == pytest.approx(want["mean_diff"]) and test["p_wilcoxon"] == pytest.approx(want["p_wilcoxon"])
    assert test["seed"] == 0 and test["n_users"] == 30
    text = compare.markdown(result, "t")
    assert "Wilcoxon" in text and f"{want['mean_diff']:+.4f}" in text


def test_activity_groups_split_users_into_thirds_by_test_items(compare):
    import numpy as np

    n = np.array([1, 1, 2, 2, 3, 3, 5, 8, 9])  # quantiles 2 and 3.67 -> edges 2, 4
    groups = compare.activity_groups(n)
    assert [label for label, _ in groups] == ["1-1 test items", "2-3 test items", "5-9 test items"]
    assert [m.sum() for _, m in groups] == [2, 4, 3]
    assert compare.activity_groups(np.full(6, 4))[0][0] == "4-4 test items"  # ties: one group, not an error


def test_paired_differences_within_each_activity_third(compare, tmp_path):
    import numpy as np

    rng = np.random.default_rng(1)
    users = np.arange(60)
    n_rel = np.repeat([2, 10, 40], 20)
    a = {"user": users, "n_relevant": n_rel, "recall@20": rng.random(60), "ndcg@20": rng.random(60)}
    b = {"user": users[::-1], "n_relevant": n_rel[::-1], "recall@20": rng.random(60), "ndcg@20": rng.random(60)}
    bpr = fake_run(tmp_path / "bpr", "bpr", [(100, 0.1)], (0.2, 0.1), per_user=a)
    item = fake_run(tmp_path / "item", "item", [(100, 0.2)], (0.3, 0.15), per_user=b)
    result = compare.summarise(tmp_path, [bpr, item])
    groups = result["paired_by_activity"]
    assert list(groups) == ["item, 2-2 test items", "item, 10-10 test items", "item, 40-40 test items"]
    light = n_rel == 2
    want = compare.paired_test(a["recall@20"][light], b["recall@20"][::-1][light])  # matched by user
    (got,) = groups["item, 2-2 test items"]["recall@20"]
    assert got["n_users"] == 20 and got["mean_diff"] == pytest.approx(want["mean_diff"])
    assert got["p_wilcoxon"] == pytest.approx(want["p_wilcoxon"])
    text = compare.markdown(result, "t")
    assert "within each third of the users" in text and "| item, 2-2 test items | 0 | 20 |" in text


def _with_config(run, loss: str, seed: int = 0):
    """Give a fake_run folder the config.json train.py writes (loss and seed; every other option at its default)."""
    from itemjax.config import TrainConfig

    config = TrainConfig(loss=loss, seed=seed).to_dict()
    pathlib.Path(run.out, "config.json").write_text(json.dumps({"config": config}))
    return run


def test_runs_trained_apart_are_compared_without_training(compare, tmp_path):
    bpr = _with_config(fake_run(tmp_path / "conv-bpr", "bpr", [(100, 0.10), (400, 0.30)], (0.2, 0.1),
                                refit=(0.22, 0.11)), "bpr")
    item = _with_config(fake_run(tmp_path / "conv-item", "item", [(50, 0.31), (200, 0.33)], (0.3, 0.15),
                                 refit=(0.33, 0.165)), "item")
    out = tmp_path / "cmp"
    assert compare.main(["--runs", f"{bpr.out},{item.out}", "--out", str(out), "--curve-axis", "epoch"]) == 0
    result = json.loads((out / "comparison.json").read_text())
    assert result["baseline"] == "bpr" and [r["out"] for r in result["runs"]["item"]] == [item.out]
    assert result["table"]["item"]["refit/ndcg@20"]["gain_vs_bpr"] == pytest.approx(0.5)
    assert result["table"]["item"]["fraction_of_bpr_time_to_its_best"] == [pytest.approx(50 / 400)]
    assert (out / "comparison.md").exists() and (out / "learning_curves.png").exists()


def test_runs_that_are_unfinished_or_repeat_a_loss_are_refused(compare, tmp_path):
    from itemjax.errors import ConfigError

    bpr = _with_config(fake_run(tmp_path / "a", "bpr", [(100, 0.1)], (0.2, 0.1)), "bpr")
    twin = _with_config(fake_run(tmp_path / "b", "bpr", [(100, 0.1)], (0.2, 0.1)), "bpr")
    with pytest.raises(ConfigError, match="both bpr seed 0"):
        compare.main(["--runs", f"{bpr.out},{twin.out}", "--out", str(tmp_path / "cmp")])
    pathlib.Path(twin.out, "summary.json").unlink()
    with pytest.raises(ConfigError, match=r"has not finished.*--resume --out"):
        compare.main(["--runs", f"{bpr.out},{twin.out}", "--out", str(tmp_path / "cmp")])
    with pytest.raises(ConfigError, match="needs --out"):
        compare.main(["--runs", bpr.out])


def test_a_finished_run_made_with_other_options_is_not_reused(compare, tmp_path):
    from itemjax.errors import ConfigError

    argv = ["--losses", "bpr", "--seeds", "0", "--epochs", "3", "--out", str(tmp_path), "--args-bpr", "--lr 0.01"]
    _, (config,) = compare.run_configs(compare.parser().parse_args(argv))
    run = fake_run(pathlib.Path(config.out), "bpr", [(100, 0.1)], (0.2, 0.1))
    saved = json.loads(json.dumps(config.to_dict()))
    pathlib.Path(run.out, "config.json").write_text(json.dumps({"config": {**saved, "lr": 0.002}}))
    with pytest.raises(ConfigError, match=r"was trained with lr=0.002, not 0.01; delete that folder or choose another"):
        compare.main(argv)
    # the same options (bookkeeping aside) are reused without training
    pathlib.Path(run.out, "config.json").write_text(json.dumps({"config": {**saved, "progress": False}}))
    assert compare.main(argv) == 0
    assert json.loads((tmp_path / "comparison.json").read_text())["runs"]["bpr"][0]["out"] == config.out
