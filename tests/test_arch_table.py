"""experiments/arch_table.py: the markdown table built from run directories (no training)."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from itemjax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script():
    from itemjax.commands import arch_table

    return arch_table


arch_table = _load_script()


def _fake_run(path: pathlib.Path, **summary) -> pathlib.Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def _cells_of_table(text: str) -> list:
    """Rows of the markdown table as lists of stripped cells (header and rule excluded)."""
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows]


def test_table_numbers_come_from_summary_json(tmp_path):
    bpr = _fake_run(tmp_path / "gat-bpr-inductive", **{
        "recall@20": 0.123449, "ndcg@20": 0.30001, "train_seconds": 12.6, "selected_epoch": 35, "epochs": 75,
        "popularity/recall@20": 0.1538, "popularity/ndcg@20": 0.33176})
    item = _fake_run(tmp_path / "gat-item-inductive", **{
        "recall@20": 0.2, "ndcg@20": 0.35, "train_seconds": 99.4, "selected_epoch": 60, "epochs": 100,
        "popularity/recall@20": 0.1538, "popularity/ndcg@20": 0.33176})
    cells = [arch_table.Cell("gat", "bpr", "inductive", bpr), arch_table.Cell("gat", "item", "inductive", item)]
    text = arch_table.markdown(arch_table.read_rows(cells))
    assert _cells_of_table(text) == [
        ["gat", "BPR", "inductive", "0.1234", "0.3000", "13", "35 of 75", "0.1538", "0.3318"],
        ["gat", "ITEM", "inductive", "0.2000", "0.3500", "99", "60 of 100", "0.1538", "0.3318"],
    ]
    # (0.35 - 0.30001) / 0.30001 = +16.66 %
    assert "- gat: ITEM >= BPR on NDCG@20: inductive yes (0.3500 vs 0.3000, +16.7%)" in text.splitlines()


def test_transductive_rows_have_no_popularity_and_a_loss_is_reported(tmp_path):
    bpr = _fake_run(tmp_path / "a", **{"recall@20": 0.25, "ndcg@20": 0.24, "train_seconds": 3.0,
                                       "selected_epoch": 5, "epochs": 10})
    item = _fake_run(tmp_path / "b", **{"recall@20": 0.22, "ndcg@20": 0.18, "train_seconds": 4.0,
                                        "selected_epoch": 10, "epochs": 10})
    missing = tmp_path / "c"  # not finished: no summary.json
    cells = [arch_table.Cell("mf", "bpr", "transductive", bpr), arch_table.Cell("mf", "item", "transductive", item),
             arch_table.Cell("sage", "bpr", "transductive", missing)]
    text = arch_table.markdown(arch_table.read_rows(cells), header="my header")
    rows = _cells_of_table(text)
    assert rows[0] == ["mf", "BPR", "transductive", "0.2500", "0.2400", "3", "5 of 10", "—", "—"]
    assert rows[1][3:5] == ["0.2200", "0.1800"]
    assert rows[2][:4] == ["sage", "BPR", "transductive", "not finished"]
    assert text.startswith("my header\n")
    assert "- mf: ITEM >= BPR on NDCG@20: transductive NO (0.1800 vs 0.2400, -25.0%)" in text.splitlines()
    assert not any(line.startswith("- sage") for line in text.splitlines())  # no finished pair


def test_cells_skip_inductive_mf_and_keep_loss_defaults(tmp_path):
    args = arch_table.parser().parse_args(
        ["--models", "mf,lightgcn", "--epochs", "7", "--extra", "--eval-every 5 --patience 8", "--out", str(tmp_path)])
    cells = arch_table.cell_configs(args)
    keys = [(c.model, c.protocol, c.loss) for c, _ in cells]
    assert keys == [("mf", "transductive", "bpr"), ("mf", "transductive", "item"),
                    ("lightgcn", "transductive", "bpr"), ("lightgcn", "transductive", "item"),
                    ("lightgcn", "inductive", "bpr"), ("lightgcn", "inductive", "item")]
    for cell, (config,) in cells:  # untuned: the defaults run only
        assert (config.model, config.loss, config.protocol) == (cell.model, cell.loss, cell.protocol)
        assert (config.epochs, config.eval_every, config.patience) == (7, 5, 8)
        assert pathlib.Path(config.out) == tmp_path / f"{cell.model}-{cell.loss}-{cell.protocol}"
        from itemjax.config import MODEL_LOSS_DEFAULTS

        expected = {**arch_table.LOSS_DEFAULTS[cell.loss], **MODEL_LOSS_DEFAULTS.get((cell.model, cell.loss), {})}
        for k, v in expected.items():  # mf's own defaults over the loss's
            assert getattr(config, k) == v
        if cell.model == "mf":
            assert config.l2 == (1e-2 if cell.loss == "bpr" else 1e-3)


def test_extra_inductive_reaches_only_the_inductive_cells(tmp_path):
    args = arch_table.parser().parse_args(["--models", "lightgcn", "--losses", "bpr", "--epochs", "7",
                                           "--extra-inductive", "--user-dropout 0.2", "--out", str(tmp_path)])
    dropout = {cell.protocol: config.user_dropout for cell, (config,) in arch_table.cell_configs(args)}
    assert dropout == {"transductive": 0.0, "inductive": 0.2}
    assert "(inductive cells also `--user-dropout 0.2`)" in arch_table.header_text(args)


def test_reuse_refuses_a_run_made_with_other_options(tmp_path):
    from itemjax.train.run import check_reusable

    args = arch_table.parser().parse_args(["--models", "lightgcn", "--losses", "bpr", "--protocols", "transductive",
                                           "--epochs", "7", "--out", str(tmp_path)])
    (cell, (config,)), = arch_table.cell_configs(args)
    cell.run.mkdir(parents=True)
    saved = json.loads(json.dumps(config.to_dict()))
    (cell.run / "config.json").write_text(json.dumps({"config": {**saved, "progress": not saved["progress"]}}))
    check_reusable(config, cell.run)  # progress/out/resume may differ
    (cell.run / "config.json").write_text(json.dumps({"config": {**saved, "epochs": 9}}))
    with pytest.raises(ConfigError, match="epochs=9, not 7"):
        check_reusable(config, cell.run)


def test_table_only_rebuilds_from_finished_cells_without_training(tmp_path, capsys):
    argv = ["--models", "mf,lightgcn", "--losses", "bpr", "--protocols", "transductive", "--epochs", "7",
            "--table-only", "--out", str(tmp_path)]
    cells = arch_table.cell_configs(arch_table.parser().parse_args(argv))
    (cell, (config,)) = cells[1]  # lightgcn finished; mf never started
    _fake_run(cell.run, **{"recall@20": 0.3314, "ndcg@20": 0.3976, "train_seconds": 84.0, "selected_epoch": 200,
                           "epochs": 200})
    (cell.run / "config.json").write_text(json.dumps({"config": config.to_dict()}))
    assert arch_table.main(argv) == 0
    rows = _cells_of_table((tmp_path / "arch_table.md").read_text())
    assert rows == [["mf", "BPR", "transductive", "not finished", "", "", "", "", ""],
                    ["lightgcn", "BPR", "transductive", "0.3314", "0.3976", "84", "200 of 200", "—", "—"]]
    assert not (tmp_path / "mf-bpr-transductive").exists()  # nothing trained
    assert "| lightgcn | BPR | transductive | 0.3314 |" in capsys.readouterr().out


def _valid_curve(run: pathlib.Path, ndcgs: list) -> None:
    """A metrics.jsonl with one validation record per value (epochs 5, 10, ...) and a test-split decoy."""
    lines = [json.dumps({"split": "valid", "epoch": 5 * (i + 1), "ndcg@20": v}) for i, v in enumerate(ndcgs)]
    lines.append(json.dumps({"split": "test", "epoch": 99, "ndcg@20": 0.99}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_tuned_cells_get_each_variant_of_their_loss_in_its_own_folder(tmp_path):
    """(GAT: a model without its own defaults in MODEL_LOSS_DEFAULTS.)"""
    args = arch_table.parser().parse_args(
        ["--models", "mf,gat", "--protocols", "transductive", "--epochs", "7", "--extra", "--patience 8",
         "--tune-models", "gat", "--tune-bpr", "--l2 1e-2", "--tune-item", "--tau 0.3 --l2 1e-3",
         "--out", str(tmp_path)])
    cells = {(c.model, c.loss): (c, configs) for c, configs in arch_table.cell_configs(args)}
    assert [len(configs) for _, configs in cells.values()] == [1, 1, 2, 2]  # mf untuned
    cell, (default, variant) = cells[("gat", "item")]
    assert cell.candidates() == (("", tmp_path / "gat-item-transductive"),
                                 ("--tau 0.3 --l2 1e-3", tmp_path / "gat-item-transductive--tau_0.3_l2_1e-3"))
    assert (default.tau, default.l2, variant.tau, variant.l2) == (0.1, 1e-4, 0.3, 1e-3)
    assert pathlib.Path(variant.out) == cell.candidates()[1][1] and variant.patience == 8
    _, (bpr_default, bpr_variant) = cells[("gat", "bpr")]
    assert (bpr_default.l2, bpr_variant.l2, bpr_variant.tau) == (1e-3, 1e-2, 0.1)
    header = arch_table.header_text(args)
    assert "Tuned on validation NDCG@20 for gat, each loss with 1 variant(s) besides its defaults: " \
           "BPR `--l2 1e-2`; ITEM `--tau 0.3 --l2 1e-3`." in header


@pytest.mark.parametrize("extra, message", [
    (["--tune-models", "sage", "--tune-bpr", "--l2 1e-2", "--tune-item", "--tau 0.3", "--tune-item", "--tau 0.5"],
     "same number of tuning variants .*1 for bpr, 2 for item"),
    (["--tune-models", "gat", "--tune-bpr", "--l2 1e-2", "--tune-item", "--tau 0.3"], "'gat', which is not in --models"),
    (["--tune-bpr", "--l2 1e-2", "--tune-item", "--tau 0.3"], "without --tune-models"),
    (["--tune-models", "sage"], "needs variants"),
    (["--tune-models", "sage", "--tune-bpr=--l2", "--tune-item", "--tau 0.3"], "bpr tuning variant '--l2'"),
])
def test_bad_tuning_options_name_the_problem(tmp_path, extra, message):
    args = arch_table.parser().parse_args(["--models", "sage", "--epochs", "7", "--out", str(tmp_path)] + extra)
    with pytest.raises(ConfigError, match=message):
        arch_table.cell_configs(args)


def test_selection_is_on_validation_defaults_win_ties_and_test_never_chooses(tmp_path):
    summary = {"recall@20": 0.3, "train_seconds": 10.0, "selected_epoch": 10, "epochs": 25}
    default = _fake_run(tmp_path / "sage-item-transductive", **summary, **{"ndcg@20": 0.40})
    tied = _fake_run(tmp_path / "sage-item-transductive--tau_0.5", **summary, **{"ndcg@20": 0.45})
    better = _fake_run(tmp_path / "sage-item-transductive--tau_0.3", **summary, **{"ndcg@20": 0.38})
    _valid_curve(default, [0.10, 0.21, 0.20])
    _valid_curve(tied, [0.21, 0.15])  # same best validation as the defaults, better test: not chosen
    _valid_curve(better, [0.12, 0.22, 0.19])
    cell = arch_table.Cell("sage", "item", "transductive", default, (("--tau 0.5", tied), ("--tau 0.3", better)))
    assert arch_table.select_candidate(cell) == ("--tau 0.3", better)
    assert arch_table.select_candidate(dataclasses.replace(cell, tuned=cell.tuned[:1])) == ("", default)
    bpr = _fake_run(tmp_path / "sage-bpr-transductive", **summary, **{"ndcg@20": 0.36})
    _valid_curve(bpr, [0.2])
    unfinished = arch_table.Cell("sage", "bpr", "transductive", bpr, (("--l2 1e-2", tmp_path / "missing"),))
    rows = arch_table.read_rows([cell, unfinished])
    assert not rows[1]["finished"]  # a candidate without summary.json: nothing selected yet
    table = _cells_of_table(arch_table.markdown(rows))
    assert table[0] == ["sage", "ITEM", "transductive", "0.3000", "0.3800", "10", "10 of 25", "—", "—",
                        "`--tau 0.3`, best of 3", "30"]
    assert table[1][3] == "not finished" and len(table[1]) == 11
