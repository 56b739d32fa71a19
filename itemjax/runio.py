"""Run-directory files written so that a crash never leaves a half-written file behind."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import tempfile


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def append_jsonl(path, record: dict) -> None:
    """Append one JSON object as a line and flush it to disk."""
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True, default=_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path) -> list[dict]:
    """Every complete JSON line of ``path`` (a torn last line from a crash is ignored)."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def best_validation(run, metric: str = "ndcg@20") -> dict:
    """The ``split == "valid"`` record of ``<run>/metrics.jsonl`` with the highest ``metric``.

    The earliest such record wins a tie (the epoch early stopping selects); ``{}`` when the run
    has no validation record yet.
    """
    valid = [r for r in read_jsonl(pathlib.Path(run) / "metrics.jsonl")
             if r.get("split") == "valid" and not math.isnan(r.get(metric, math.nan))]
    return max(valid, key=lambda r: r[metric]) if valid else {}


def options_slug(text: str) -> str:
    """A folder-name form of train.py options: ``"--tau 0.3 --l2 1e-3"`` -> ``"tau_0.3_l2_1e-3"``."""
    return re.sub(r"[^A-Za-z0-9.,=-]+", "_", text.replace("--", "")).strip("_")[:60] or "base"


def rewrite_jsonl(path, records: list[dict]) -> None:
    """Replace ``path`` atomically with ``records``, one per line."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True, default=_default) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
