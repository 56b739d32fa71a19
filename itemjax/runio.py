"""The run directory's files: written so that a crash never leaves a half-written file behind
(run directories, downloads, caches, plots: everything goes through :func:`atomic_file`),
JSON lines, tables (parquet or CSV), and the provenance recorded in config.json
(:func:`environment`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import re
import sys
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


@contextlib.contextmanager
def run_lock(out):
    """Holds an exclusive lock on the run folder ``out`` (``out/.lock``, ``fcntl.flock``) while the
    block runs, so that two processes never train into the same folder (two commands continuing
    the same run would interleave its checkpoints and metrics). The lock is the operating
    system's: it goes when the process ends, however it ends, so a killed run leaves none behind.
    Raises ConfigError naming the other process if the folder is held; a no-op where ``fcntl``
    does not exist (Windows).
    """
    from itemjax.errors import ConfigError

    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = pathlib.Path(out) / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"{out} is in use: {holder} is training into it. Wait for it to finish, stop it "
                              "(its run continues with --resume), or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {platform_node()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def platform_node() -> str:
    """This machine's network name (``platform.node()``), for messages."""
    import platform

    return platform.node() or "this machine"


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


def read_json(path, what: str, *, damaged: str = ""):
    """The JSON in ``path``; :class:`~itemjax.errors.DataError` naming the file when it is missing
    (``what``: why it should be there and how to get it) or unreadable (``damaged``: what that means)."""
    from itemjax.errors import DataError

    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} is missing: {what}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})" + (f"; {damaged}" if damaged else "")) from None


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


def write_table(path, columns: dict) -> pathlib.Path:
    """Write equal-length ``columns`` (name -> 1-D array) as ``<path>.parquet`` with pyarrow (the
    ``parquet`` extra), or as ``<path>.csv`` when pyarrow is not installed; atomically. ``path``
    has no suffix; returns the file written."""
    path = pathlib.Path(path)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        import csv

        target = path.with_suffix(".csv")
        names = list(columns)
        with atomic_file(target, "w", suffix=".tmp") as f:
            writer = csv.writer(f)
            writer.writerow(names)
            writer.writerows(zip(*(_plain(columns[n]) for n in names)))
        return target
    target = path.with_suffix(".parquet")
    table = pa.table({name: _plain(values) for name, values in columns.items()})
    with atomic_file(target, "wb") as f:
        pq.write_table(table, f)
    return target


def read_table(path) -> dict:
    """The columns (name -> numpy array) of a :func:`write_table` file: ``path`` with its suffix,
    or without one (``.parquet`` is tried first, then ``.csv``)."""
    import numpy as np

    path = pathlib.Path(path)
    if path.suffix not in (".parquet", ".csv"):
        path = next((p for p in (path.with_suffix(".parquet"), path.with_suffix(".csv")) if p.exists()),
                    path.with_suffix(".parquet"))
    if path.suffix == ".parquet":
        from itemjax.errors import require_extra

        pq = require_extra("pyarrow.parquet", extra="parquet", feature=f"reading {path.name}")
        table = pq.read_table(path)
        return {name: table.column(name).to_numpy() for name in table.column_names}
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    names, body = rows[0], rows[1:]
    columns = {}
    for j, name in enumerate(names):
        values = [r[j] for r in body]
        try:
            columns[name] = np.array([float(v) for v in values])
        except ValueError:
            columns[name] = np.array(values, dtype=object)
    return columns


def _plain(values) -> list:
    """A column as a list of Python scalars (numpy ints/floats/strings -> int/float/str)."""
    return [v.item() if hasattr(v, "item") else v for v in values]


# ----------------------------------------------------------------------------- provenance of a run


def environment() -> dict:
    """Package versions, JAX backend and devices, JAX/XLA/itemjax environment variables and GLIBC_TUNABLES
    (glibc's malloc settings, which change CPU step times), the itemjax git commit: recorded in
    config.json so that a run can be reproduced from its directory."""
    import importlib.metadata
    import platform

    import jax

    import itemjax

    versions = {"itemjax": itemjax.__version__}
    for dist in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "jraph", "numpy", "scipy", "tqdm",
                 "matplotlib"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "itemjax_git": _git_commit(pathlib.Path(itemjax.__file__).parent),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("JAX_", "XLA_", "ITEMJAX_", "GLIBC_TUNABLES"))},
    }


def _git_commit(package_dir: pathlib.Path):
    """``<commit>`` (``+dirty`` when files differ) of a git checkout holding itemjax, else None."""
    import subprocess

    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()

        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def default_out(config) -> pathlib.Path:
    """``runs/<dataset>-<model>-<loss>-<time>``: where a run without ``--out`` goes."""
    import time

    name = pathlib.Path(config.dataset).stem if pathlib.Path(config.dataset).exists() else config.dataset
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return pathlib.Path("runs") / f"{name}-{config.model}-{config.loss}-{stamp}"


def log(msg: str) -> None:
    """One progress line on stderr (stdout stays for results)."""
    print(msg, file=sys.stderr, flush=True)
