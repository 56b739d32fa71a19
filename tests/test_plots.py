"""Learning-curve PNGs (itemjax.evaluation.plots) and the markdown report (experiments/report.py).

Run directories are written by hand here (config.json, metrics.jsonl, summary.json as
``itemjax.train.run.fit`` writes them), so no training is needed.
"""

from __future__ import annotations

import json
import pathlib
import struct

import numpy as np
import pytest
from matplotlib.image import imread

from itemjax.cli import run_main
from itemjax.errors import DataError
from itemjax.evaluation.plots import plot_comparison, plot_run
from itemjax.runio import append_jsonl, write_json_atomic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load_report():
    from itemjax.commands import report

    return report


report = _load_report()


def make_run(path: pathlib.Path, *, model="lightgcn", loss="bpr", epochs=6, scale=1.0, finished=True, seed=0):
    """A run directory with one evaluation per epoch and (if ``finished``) a summary."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    write_json_atomic(path / "config.json", {"config": {"model": model, "loss": loss, "dataset": "toy"},
                                             "environment": {}, "dataset": {"files": {}}})
    for epoch in range(1, epochs + 1):
        ndcg = scale * (0.3 - 0.2 / epoch) + 0.001 * rng.random()
        append_jsonl(path / "metrics.jsonl", {
            "epoch": epoch, "split": "valid", "loss": 0.7 / epoch, "step": 10 * epoch,
            "train_seconds": 0.5 * epoch, "elapsed": 0.6 * epoch,
            "ndcg@20": ndcg, "recall@20": 1.2 * ndcg, "ndcg@10": 0.9 * ndcg, "recall@10": ndcg})
    if finished:
        write_json_atomic(path / "summary.json", {
            "recall@20": 0.34567891 * scale, "ndcg@20": 0.41234567 * scale, "recall@10": 0.2, "ndcg@10": 0.3,
            "split": "test", "protocol": "transductive", "selected_epoch": epochs - 1, "epochs": epochs,
            "steps": 10 * epochs, "train_seconds": 12.345 * scale, "eval_seconds": 1.0, "dataset": "toy",
            "model": model, "loss": loss})
    return path


def png_size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_run_writes_a_valid_nonblank_png(tmp_path):
    run = make_run(tmp_path / "run")
    path = plot_run(run)
    assert path == run / "learning_curve.png"
    width, height = png_size(path)
    assert width >= 600 and height >= 400
    pixels = imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05  # axes, curves and text, not a blank canvas
    assert not list(run.glob(".learning_curve.png.*"))  # the temporary file was renamed


def test_plot_run_draws_the_data(tmp_path):
    """Other metric values give another image (the curves come from metrics.jsonl)."""
    a = imread(plot_run(make_run(tmp_path / "a", scale=1.0)))
    b = imread(plot_run(make_run(tmp_path / "b", scale=0.5)))
    assert a.shape == b.shape and np.abs(a - b).max() > 0


def test_plot_run_of_a_run_without_evaluations_is_a_data_error(tmp_path):
    run = make_run(tmp_path / "run", finished=False)
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(DataError, match="metrics.jsonl is empty"):
        plot_run(run)
    with pytest.raises(DataError, match="no such run directory"):
        plot_run(tmp_path / "absent")


def test_plot_comparison_png(tmp_path):
    runs = [make_run(tmp_path / "mf", model="mf"), make_run(tmp_path / "gcn", scale=1.2)]
    path = plot_comparison(runs, tmp_path / "compare.png")
    width, height = png_size(path)
    assert width > 0 and height > 0 and path.stat().st_size > 1000


def run_report(argv, capsys):
    try:
        status = run_main(report.main, argv)
    except SystemExit as e:
        status = e.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def parse_table(markdown: str) -> list[dict]:
    lines = [line for line in markdown.strip().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").replace("-", "").replace(":", "")) <= {""}
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_report_table_numbers_equal_summary_values(tmp_path, capsys):
    runs = [make_run(tmp_path / "mf-bpr", model="mf", epochs=5),
            make_run(tmp_path / "lightgcn-bpr", scale=1.1, epochs=7)]
    out_md, plot = tmp_path / "report.md", tmp_path / "compare.png"
    status, stdout, err = run_report([*map(str, runs), "--out", str(out_md), "--plot", str(plot)], capsys)
    assert status == 0, err
    assert out_md.read_text() == stdout
    rows = parse_table(stdout)
    assert [r["run"] for r in rows] == ["mf-bpr", "lightgcn-bpr"]
    assert list(rows[0]) == ["run", "dataset", "model", "loss", "protocol", "Recall@20", "NDCG@20", "epochs",
                             "selected epoch", "train time (s)"]
    for row, run in zip(rows, runs):
        summary = json.loads((run / "summary.json").read_text())
        assert float(row["Recall@20"]) == pytest.approx(summary["recall@20"], abs=5e-5)
        assert float(row["NDCG@20"]) == pytest.approx(summary["ndcg@20"], abs=5e-5)
        assert row["Recall@20"] == f"{summary['recall@20']:.4f}"
        assert int(row["epochs"]) == summary["epochs"]
        assert int(row["selected epoch"]) == summary["selected_epoch"]
        assert float(row["train time (s)"]) == pytest.approx(summary["train_seconds"], abs=0.05)
        assert (row["dataset"], row["model"], row["loss"], row["protocol"]) == (
            "toy", summary["model"], "bpr", "transductive")
    assert png_size(plot)[0] > 0 and plot.stat().st_size > 1000


def test_report_adds_the_refit_columns_when_a_run_was_refit(tmp_path, capsys):
    plain, refit = make_run(tmp_path / "plain"), make_run(tmp_path / "refit", scale=1.1)
    summary = json.loads((refit / "summary.json").read_text())
    summary.update({"refit/recall@20": 0.36123456, "refit/ndcg@20": 0.43987654, "refit_train_seconds": 20.06,
                    "refit_steps": 50})
    write_json_atomic(refit / "summary.json", summary)
    status, stdout, err = run_report([str(plain), str(refit)], capsys)
    assert status == 0, err
    rows = parse_table(stdout)
    assert list(rows[0])[-3:] == ["refit Recall@20", "refit NDCG@20", "refit train time (s)"]
    assert [rows[0][c] for c in list(rows[0])[-3:]] == ["–", "–", "–"]
    assert [rows[1][c] for c in list(rows[1])[-3:]] == ["0.3612", "0.4399", "20.1"]
    assert rows[1]["Recall@20"] == f"{summary['recall@20']:.4f}"  # the carve-out's test metrics stay beside them
    status, stdout, _ = run_report([str(plain)], capsys)  # no refit anywhere: no refit columns
    assert status == 0 and "refit" not in stdout


def test_report_other_k(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    status, stdout, _ = run_report([str(run), "--k", "10"], capsys)
    assert status == 0
    (row,) = parse_table(stdout)
    assert row["NDCG@10"] == "0.3000" and row["Recall@10"] == "0.2000"


@pytest.mark.parametrize("case", ["missing dir", "not a run", "unfinished", "no such K"])
def test_report_bad_run_dirs_exit_2(tmp_path, capsys, case):
    good = make_run(tmp_path / "good")
    if case == "missing dir":
        bad, words = tmp_path / "absent", "no such run directory"
    elif case == "not a run":
        bad, words = tmp_path, "config.json is missing: not a run directory"
    elif case == "unfinished":
        bad, words = make_run(tmp_path / "unfinished", finished=False), "summary.json is missing: the run has not finished"
    argv = [str(good), str(bad)] if case != "no such K" else [str(good), "--k", "50"]
    status, stdout, err = run_report(argv + ["--out", str(tmp_path / "r.md")], capsys)
    assert status == 2
    if case == "no such K":
        words = "has no recall@50"
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and words in line, line
    assert stdout == "" and not (tmp_path / "r.md").exists()  # nothing written when any dir is bad
