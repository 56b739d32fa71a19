"""Around a run: TensorBoard scalars read back from the event file, per-user test metrics whose
mean is summary.json's, tables with and without pyarrow, and compare.py's paired test against
scipy-free references."""

from __future__ import annotations

import json
import math
import struct
import sys

import numpy as np
import pytest

from itemjax.commands.compare import paired_test
from itemjax.config import TrainConfig
from itemjax.errors import ConfigError, require_extra
from itemjax.train.run import fit
from itemjax.runio import read_jsonl, read_table, write_table


def read_scalars(logdir) -> dict:
    """``{tag: [(step, value), ...]}`` of every tensorboard event file under ``logdir``, parsed
    from the TFRecord framing (u64 length, u32 crc, payload, u32 crc) with tensorboardX's protos."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at: at + 8])
            payload = data[at + 12: at + 12 + length]
            at += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.mark.integration
def test_tensorboard_scalars_and_per_user_metrics(tiny_csv, tmp_path):
    out = tmp_path / "run"
    summary = fit(TrainConfig(dataset=str(tiny_csv), out=str(out), progress=False, dim=8, layers=2, loss="bpr",
                              epochs=4, eval_every=2, tensorboard=True))
    records = read_jsonl(out / "metrics.jsonl")
    scalars = read_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["train/loss"]] == sorted(s for s, _ in scalars["train/loss"])
    assert len(scalars["train/loss"]) == 4 and len(scalars["train/lr"]) == 4
    # each validation evaluation, at its step, with the value metrics.jsonl recorded
    assert [(r["step"], pytest.approx(r["ndcg@20"], rel=1e-6)) for r in records] == scalars["valid/ndcg_at_20"]
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in scalars["train/loss"] if s in {r["step"] for r in records}] \
        == [(r["step"], r["loss"]) for r in records]
    assert scalars["test/recall_at_20"][0][1] == pytest.approx(summary["recall@20"], rel=1e-6)
    # per-user test metrics: their mean over users with targets is the summary's value, exactly
    table = read_table(out / "per_user_test")
    assert set(table) >= {"user", "user_id", "n_relevant", "ndcg@20", "recall@20"}
    valid = table["n_relevant"] > 0
    assert valid.sum() == summary["n_users"]
    for metric in ("ndcg@20", "recall@20", "precision@10"):
        assert float(np.mean(table[metric][valid])) == summary[metric]
    assert all(str(u).startswith("u") for u in table["user_id"])  # original ids of the CSV


def test_tables_round_trip_with_and_without_pyarrow(tmp_path, monkeypatch):
    columns = {"user": np.array([3, 1, 2]), "user_id": np.array(["a", "b", "c"], dtype=object),
               "ndcg@20": np.array([0.5, 0.25, 1.0])}
    written = write_table(tmp_path / "t", columns)
    assert written.suffix == ".parquet"
    back = read_table(tmp_path / "t")
    assert list(back["user"]) == [3, 1, 2] and list(back["user_id"]) == ["a", "b", "c"]
    np.testing.assert_array_equal(back["ndcg@20"], columns["ndcg@20"])
    # without pyarrow (an import of it fails): CSV, read back the same
    for name in ("pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)
    written = write_table(tmp_path / "c", columns)
    assert written.suffix == ".csv"
    back = read_table(tmp_path / "c")
    assert list(back["user"]) == [3, 1, 2] and list(back["user_id"]) == ["a", "b", "c"]
    np.testing.assert_array_equal(back["ndcg@20"], columns["ndcg@20"])
    with pytest.raises(ConfigError, match=r"pip install 'itemjax\[parquet\]'"):
        read_table(tmp_path / "t.parquet")
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ConfigError, match=r"--tensorboard needs the tensorboardX package: pip install 'itemjax\[tracking\]'"):
        require_extra("tensorboardX", extra="tracking", feature="--tensorboard")


def ref_wilcoxon_p(diff) -> float:
    """Two-sided Wilcoxon signed-rank p-value, exact by enumeration of the 2^n sign patterns
    (zeros dropped, no ties among |d|): the share of patterns whose W+ is at least as extreme."""
    d = np.asarray([x for x in diff if x != 0], float)
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    w_plus = ranks[d > 0].sum()
    n = len(d)
    total = n * (n + 1) / 2
    all_w = [sum(r for r, bit in zip(ranks, range(n)) if pattern >> bit & 1) for pattern in range(2 ** n)]
    observed = min(w_plus, total - w_plus)
    return sum(1 for w in all_w if min(w, total - w) <= observed) / 2 ** n


def test_paired_test_matches_references():
    rng = np.random.default_rng(0)
    a = rng.random(12)
    b = a + rng.normal(0.08, 0.1, 12)
    t = paired_test(a, b, n_resamples=2000)
    diff = b - a
    assert t["mean_diff"] == pytest.approx(diff.mean()) and t["n_users"] == 12
    assert t["p_wilcoxon"] == pytest.approx(ref_wilcoxon_p(diff), rel=1e-9)  # small n: scipy is exact too
    # the bootstrap interval: close to the percentiles of resampled means, and around the mean
    means = np.array([rng.choice(diff, diff.size).mean() for _ in range(20000)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert t["ci95"][0] < diff.mean() < t["ci95"][1]
    assert t["ci95"][0] == pytest.approx(lo, abs=0.02) and t["ci95"][1] == pytest.approx(hi, abs=0.02)
    # identical runs: no difference, no p-value
    same = paired_test(a, a, n_resamples=200)
    assert same["mean_diff"] == 0 and same["p_wilcoxon"] is None
    assert not math.isnan(same["ci95"][0])
    assert json.dumps(same)  # JSON-serialisable for comparison.json
