"""``itemjax beyond``: settings x losses x seeds, reuse of finished runs, the cold-start rows."""

from __future__ import annotations

import json

import pytest

from itemjax.commands import beyond

pytestmark = pytest.mark.integration  # trains runs


def test_beyond_table_runs_every_setting_and_reuses_finished_runs(tiny_csv, tmp_path, monkeypatch):
    (tmp_path / "items.csv").write_text("".join(f"i{i},kind{i % 4}\n" for i in range(80)))
    monkeypatch.setitem(beyond.SETTINGS, "cold-items",
                        f"--protocol inductive-items --holdout-items 0.3 --item-dropout 0.3 "
                        f"--item-features {tmp_path / 'items.csv'}")
    out = tmp_path / "b"
    argv = ["--dataset", str(tiny_csv), "--settings", "random,cold-items", "--seeds", "0,1",
            "--common-args", "--epochs 2 --eval-every 1 --dim 8 --layers 1 --ks 10,20", "--out", str(out)]
    assert beyond.main(argv) == 0
    result = json.loads((out / "beyond.json").read_text())
    random, cold = (result["settings"][s] for s in ("random", "cold-items"))
    config = json.loads((out / "cold-items" / "item-seed1" / "config.json").read_text())["config"]
    assert config["item_features"].endswith("items.csv") and config["seed"] == 1 and config["loss"] == "item"
    assert config["protocol"] == "inductive-items" and config["item_dropout"] == 0.3
    # paired per-user tests on the same users (seed by seed), none for cold-start items
    assert [t["seed"] for t in random["paired"]["item"]["ndcg@20"]] == [0, 1]
    assert cold["paired"] == {} and cold["runs"]["bpr"][0]["split"] == "cold-start items' interactions"
    assert random["runs"]["bpr"][1]["ndcg@20"] != random["runs"]["bpr"][0]["ndcg@20"]  # seeds differ
    text = (out / "beyond.md").read_text()
    assert "| cold-items | – | features only |" in text and "| random | `(none)` | item |" in text
    before = (out / "random" / "bpr-seed0" / "summary.json").stat().st_mtime_ns
    assert beyond.main(argv) == 0  # everything reused
    assert (out / "random" / "bpr-seed0" / "summary.json").stat().st_mtime_ns == before
