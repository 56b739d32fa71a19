"""itemjax paper-scale: equal tuning budgets per loss and selection on validation only."""

import json
import shlex

import pytest

from itemjax.commands import paper_scale
from itemjax.runio import options_slug


def test_each_loss_gets_the_same_number_of_variants_reaching_lr_1e_2():
    counts = {loss: len(v) for loss, v in paper_scale.VARIANTS.items()}
    assert len(set(counts.values())) == 1, counts
    for loss, variants in paper_scale.VARIANTS.items():
        lrs = [float(a[a.index("--lr") + 1]) for a in map(shlex.split, variants) if "--lr" in a]
        assert 1e-2 in lrs, (loss, variants)  # the issue: each grid reaches lr 1e-2
        assert len(set(map(options_slug, variants))) == len(variants)  # one folder per variant


def _run(folder, records):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_select_takes_the_best_validation_ndcg_and_ignores_test(tmp_path):
    variants = ("", "--lr 1e-2", "--lr 1e-2 --lr-schedule cosine")
    _run(tmp_path / "00-base", [{"split": "valid", "epoch": 5, "elapsed": 10.0, "ndcg@20": 0.20},
                                {"split": "test", "ndcg@20": 0.90}])
    _run(tmp_path / "01-lr_1e-2", [{"split": "valid", "epoch": 5, "elapsed": 9.0, "ndcg@20": 0.21},
                                   {"split": "valid", "epoch": 10, "elapsed": 19.0, "ndcg@20": 0.25},
                                   {"split": "valid", "epoch": 15, "elapsed": 29.0, "ndcg@20": 0.24}])
    _run(tmp_path / "02-lr_1e-2_lr-schedule_cosine", [{"split": "train", "loss": 1.0}])  # no evaluation yet
    chosen, rows = paper_scale.select(tmp_path, variants)
    assert chosen == "--lr 1e-2"
    assert [r["best_valid_ndcg@20"] for r in rows] == [0.20, 0.25, None]
    assert rows[1]["epoch"] == 10 and rows[1]["elapsed"] == 19.0


def test_select_raises_when_no_variant_was_evaluated(tmp_path):
    _run(tmp_path / "00-base", [{"split": "train", "loss": 1.0}])
    with pytest.raises(RuntimeError, match="no variant"):
        paper_scale.select(tmp_path, ("",))


def test_markdown_marks_the_selected_variant_and_keeps_published_rows_apart():
    result = {"dataset": "yelp2018", "model": "lightgcn", "seed": 0, "tune_budget": 240.0, "budget": 1500.0,
              "common_args": "--eval-every 1",
              "tuning": {"bpr": [{"variant": "", "best_valid_ndcg@20": 0.04, "elapsed": 200.0},
                                 {"variant": "--l2 1e-4", "best_valid_ndcg@20": None, "elapsed": None}]},
              "selected": {"bpr": ""}, "published": paper_scale.PUBLISHED["yelp2018"]}
    text = paper_scale.markdown(result, "COMPARISON")
    n = len(next(iter(paper_scale.VARIANTS.values())))
    assert f"Tuning: {n} variants per loss, 240 s each" in text
    assert "| `(defaults)` | 0.0400 | 200 | yes |" in text
    assert "| `--l2 1e-4` | – | – |  |" in text
    assert text.index("COMPARISON") < text.index("Published") < text.index("0.0649")
