"""itemjax headline: README's headline table written from comparison.json files."""

from __future__ import annotations

import json

import pytest

from test_compare import fake_run


def _comparison(tmp_path, name: str):
    """A comparison folder: BPR refit 0.22 / 0.11, ITEM 0.33 / 0.165 (+50%), ITEM at BPR's best in 0.25 of its time."""
    from itemjax.commands import compare

    bpr = fake_run(tmp_path / name / "bpr-seed0", "bpr", [(100, 0.1), (400, 0.3)], (0.2, 0.1), refit=(0.22, 0.11))
    item = fake_run(tmp_path / name / "item-seed0", "item", [(100, 0.31), (200, 0.33)], (0.3, 0.15),
                    refit=(0.33, 0.165))
    (tmp_path / name / "comparison.json").write_text(json.dumps(compare.summarise(tmp_path / name, [bpr, item])))


def test_rows_written_between_the_markers_of_the_readme(tmp_path, monkeypatch):
    from itemjax.commands import headline

    monkeypatch.chdir(tmp_path)
    _comparison(tmp_path, "yelp")
    spec = {"rows": [{"setting": "yelp2018, equal budgets", "comparison": "yelp", "command": "itemjax paper-scale",
                      "published": "yelp2018", "source": "docs/results.md#yelp"}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{headline.BEGIN}\n| old | table |\n{headline.END}\n\nafter\n")
    assert headline.main(["spec.json", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# title\n\n{headline.BEGIN}\n| setting | ITEM vs BPR | source |\n|---|---|---|\n")
    assert text.endswith(f"{headline.END}\n\nafter\n") and "| old | table |" not in text
    row = text.splitlines()[5]
    assert row == ("| yelp2018, equal budgets | refit Recall@20 0.3300 vs 0.2200 (+50.0%), NDCG@20 0.1650 vs 0.1100 "
                   "(+50.0%); ITEM at BPR's best validation NDCG@20 in 0.25 of BPR's time; published LightGCN + BPR, "
                   "converged (He et al., SIGIR 2020, Table 3): 0.0649 / 0.0530 | [results](docs/results.md#yelp) |")
    # rerunning rewrites the same block, nothing else
    assert headline.main(["spec.json", "--readme", str(readme)]) == 0 and readme.read_text() == text
    # a row whose wall times are not comparable leaves the time-to-best fraction out
    (tmp_path / "spec.json").write_text(json.dumps({"rows": [{**spec["rows"][0], "timed": False}]}))
    assert headline.main(["spec.json", "--readme", str(readme)]) == 0
    assert "of BPR's time" not in readme.read_text() and "(+50.0%); published" in readme.read_text()


def test_a_missing_comparison_names_the_command_and_missing_markers_are_refused(tmp_path, monkeypatch):
    from itemjax.commands import headline
    from itemjax.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    spec = {"rows": [{"setting": "s", "comparison": "nowhere", "command": "itemjax compare --out nowhere",
                      "source": "x"}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match=r"nowhere/comparison.json is missing; create it with: itemjax compare"):
        headline.main(["spec.json"])
    _comparison(tmp_path, "nowhere")
    (tmp_path / "README.md").write_text("no markers\n")
    with pytest.raises(ConfigError, match="lacks the headline markers"):
        headline.main(["spec.json", "--readme", "README.md"])


@pytest.mark.parametrize("text, message", [
    ("{bad", r"spec.json: unreadable \(JSONDecodeError"),
    ('{"rows": []}', r'spec.json: needs \{"rows": \[...\]\} with at least one row'),
    ('{"rows": [{"setting": "s", "comparison": "c", "source": "x"}]}', r"row 0 lacks 'command'"),
])
def test_a_malformed_spec_is_one_clear_error(tmp_path, monkeypatch, text, message):
    from itemjax.commands import headline
    from itemjax.errors import ItemjaxError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.json").write_text(text)
    with pytest.raises(ItemjaxError, match=message):
        headline.main(["spec.json"])
