"""Files written so that a crash never leaves a half-written file behind (run directories,
downloads, caches, plots): everything goes through :func:`atomic_file`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import re
import tempfile


@contextlib.contextmanager
def atomic_file(path, mode: str = "w", *, suffix: str = ".tmp"):
    """Open a temporary file beside ``path``; on a clean exit fsync it and ``os.replace`` it onto
    ``path``; on any exception (raised by the caller's block too, e.g. a failed checksum) delete it.

    Readers see the old file or the whole new one, never a torn one::

        with atomic_file(path, "wb") as f:
            f.write(data)
    """
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_default)
        f.write("\n")


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
    with atomic_file(path) as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True, default=_default) + "\n")


def _default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
