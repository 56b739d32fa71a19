"""``itemjax methods``: equal tuning budget per method, selection on validation, seeds, popularity floor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from itemjax.commands import methods
from itemjax.runio import best_validation

pytestmark = pytest.mark.integration  # trains runs


def test_methods_table_selects_on_validation_and_reuses_the_tuning_run(tiny_csv, tmp_path):
    # softmax: a variant that is a single flag (--logq-correction) must reach sweep as one variant
    out = tmp_path / "m"
    assert methods.main(["--dataset", str(tiny_csv), "--methods", "item,softmax,bpr+mixgcf", "--seeds", "0,1",
                         "--common-args", "--epochs 2 --eval-every 1 --dim 8 --layers 1", "--out", str(out)]) == 0
    result = json.loads((out / "methods.json").read_text())
    for name, row in result["methods"].items():
        tuned = {t["variant"]: t["best_valid_ndcg@20"] for t in row["tuning"]}
        assert len(tuned) == 3 and row["selected"] == max(tuned, key=tuned.get)  # the first of tied variants
        seed0, seed1 = row["runs"]
        assert "tune-" in seed0["run"] and "final" in seed1["run"]  # seed 0 is the tuning run itself
        assert best_validation(seed0["run"], "ndcg@20")["ndcg@20"] == row["best_valid_ndcg@20"]
        config = json.loads(open(seed1["run"] + "/config.json").read())["config"]
        assert config["seed"] == 1 and config["loss"] == name.split("+")[0]
        assert (config["neg_sampler"] == "mixgcf") == (name == "bpr+mixgcf")
    # ITEM paired with each other method, seed by seed, on the same test users: ITEM minus the method
    from itemjax.commands.compare import _per_user
    assert set(result["paired"]) == {"softmax", "bpr+mixgcf"}
    for name, per_metric in result["paired"].items():
        assert [t["seed"] for t in per_metric["ndcg@20"]] == [0, 1]
        for t, ours, theirs in zip(per_metric["ndcg@20"], result["methods"]["item"]["runs"],
                                   result["methods"][name]["runs"]):
            a, b = _per_user(ours["run"]), _per_user(theirs["run"])
            want = np.mean(a["ndcg@20"][np.argsort(a["user"])] - b["ndcg@20"][np.argsort(b["user"])])
            np.testing.assert_allclose(t["mean_diff"], want, rtol=1e-12, atol=1e-15)
            assert t["n_users"] == len(a["user"]) and t["ci95"][0] <= t["mean_diff"] <= t["ci95"][1]
    pop = result["popularity"]["ndcg@20"]
    assert 0 < pop["mean"] < 1 and np.isfinite(pop["std"])
    text = (out / "methods.md").read_text()
    assert "| bpr+mixgcf |" in text and "| popularity |" in text and "| item minus |" in text
    # --table-only trains nothing: an untuned method is listed as unfinished, a missing seed left out
    assert methods.main(["--dataset", str(tiny_csv), "--methods", "item,bce", "--seeds", "0,1,2", "--table-only",
                         "--common-args", "--epochs 2 --eval-every 1 --dim 8 --layers 1", "--out", str(out)]) == 0
    table = json.loads((out / "methods.json").read_text())
    assert [r["seed"] for r in table["methods"]["item"]["runs"]] == [0, 1]
    assert "bce" not in table["methods"] and not any(t["finished"] for t in table["unfinished"]["bce"])
    assert not (out / "tune-bce").exists() and not (out / "final" / "item-seed2").exists()
    assert "bce: tuning not finished" in (out / "methods.md").read_text()
