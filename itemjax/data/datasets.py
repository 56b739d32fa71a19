"""Loading implicit-feedback interaction data (host side, numpy).

Two kinds of input end up in one :class:`RawDataset`:

* **Registry datasets** (``DATASETS``), read from ``data_root(data_dir)/<name>/``:

  - ``ml-100k``: ``u.data``, ``user<TAB>item<TAB>rating<TAB>timestamp``.
  - ``ml-1m``: ``ratings.dat``, ``UserID::MovieID::Rating::Timestamp``.
  - ``gowalla``, ``yelp2018``, ``amazon-book``: the LightGCN split, ``train.txt`` and
    ``test.txt`` with one line per user, ``user item item ...`` (a line holding only a
    user id is a user without items). ``n_users = 1 + max user id`` and
    ``n_items = 1 + max item id`` over both files; the test file is the predefined
    test split.

  Each file may also be stored gzipped (``<file>.gz``). Its *content* is checked
  against the published SHA-256 (or MD5) before use; a missing file is downloaded
  from the official source (GroupLens zips, the ``kuandeng/LightGCN`` repository)
  with :func:`itemjax.data.download.fetch`.

* **User data**: any existing file (``.gz`` accepted) with one interaction per line,
  ``user,item[,rating[,timestamp]]``. The separator (``::``, tab, comma, semicolon,
  else runs of spaces/tabs) is detected from the first non-blank line unless ``sep``
  is given. An optional header line names the columns (``user``/``user_id``/
  ``userId``/``uid``, ``item``/``item_id``/``itemId``/``movieId``/``movie_id``/``iid``,
  ``rating``, ``timestamp``; other columns are then ignored). Ids are arbitrary
  strings (surrounding blanks stripped), remapped to dense ints in order of first
  appearance. A parquet file (``.parquet``, read with pyarrow: the ``parquet`` extra) is read
  the same way, its column names playing the header's part.

Processing, in order: keep ``rating >= min_rating`` (if given); merge duplicate
``(user, item)`` rows (first kept, ``n_duplicates`` counts the rest); iteratively drop
users and items with fewer than ``kcore`` interactions; re-index densely with
``user_ids[dense] == original id``. For LightGCN sets the id space is kept as published
(``0..max``) unless ``kcore > 0``; the k-core is computed on the training part and test
rows of removed users/items are dropped. Every parsing step is vectorised (numpy
``StringDType`` ufuncs); Python loops run over users (LightGCN lines) or only on the
error path, to find the offending line.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import itertools
import os
import pathlib
import re
import zipfile
import zlib

import numpy as np

from itemjax.data.download import DownloadFailed, fetch
from itemjax.errors import ConfigError, DataError
from itemjax.runio import atomic_file

__all__ = ["DATASETS", "RawDataset", "data_root", "item_titles", "load_dataset"]

DATASETS = ("ml-100k", "ml-1m", "gowalla", "yelp2018", "amazon-book")

# Expected checksums of the (uncompressed) file contents: {(dataset, file): (sha256, md5)}.
_CHECKSUMS: dict[tuple[str, str], tuple[str | None, str | None]] = {
    ("ml-100k", "u.data"): ("06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490", None),
    ("ml-100k", "u.item"): ("553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701", None),
    ("ml-100k", "README"): ("4883b8cf340ed0059971b33f56ad3adc88a40792108ebca3d24aafc4c82e8b52", None),
    ("ml-1m", "ratings.dat"): ("506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f", None),
    ("ml-1m", "movies.dat"): ("0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9", None),
    ("ml-1m", "README"): ("2d5ddce86ccbd247207456165827b4b9ddf27282bca93807d4c763e28414f133", None),
    ("gowalla", "train.txt"): ("7244696fdeb23911319cf7b689f2e15a3c4c92549c873a5677b44e3f13cc3e62", None),
    ("gowalla", "test.txt"): ("099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3", None),
    ("yelp2018", "train.txt"): ("1e9568725a9e833d0ac3bae01c94cd95367f73b3bb6104fd26b5f65ea5054093", None),
    ("yelp2018", "test.txt"): ("9cd9b37926cd1447a06625ffa7914527573fb097c10cb0bbdb1d1b8ded3742fe", None),
    ("amazon-book", "train.txt"): (None, "c916ecac04ca72300a016228258b41ed"),
    ("amazon-book", "test.txt"): ("6250754994dd953b91b48dccdd77a73f318e0634b4757c2abfcc9d33a54ab0f5", None),
}

_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
# MovieLens: one zip per dataset (published md5), the files we extract from it.
_ZIP_SOURCES = {
    "ml-100k": (f"{_GROUPLENS}/ml-100k.zip", "0e33842e24a9c977be4e0107933c0723", ("u.data", "u.item", "README")),
    "ml-1m": (f"{_GROUPLENS}/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906", ("ratings.dat", "movies.dat", "README")),
}
_LIGHTGCN_URL = "https://raw.githubusercontent.com/kuandeng/LightGCN/master/Data/{name}/{file}"
_LIGHTGCN_SETS = ("gowalla", "yelp2018", "amazon-book")

_STRING = np.dtypes.StringDType()
_BLANKS = " \t\r\f\v"

# Header names, compared after lower-casing and dropping "_", "-", " " and quotes.
_HEADER_NAMES = {
    "user": ("user", "userid", "uid", "users", "customerid", "visitorid"),
    "item": ("item", "itemid", "iid", "items", "movie", "movieid", "product", "productid", "businessid"),
    "rating": ("rating", "ratings", "score", "stars"),
    "timestamp": ("timestamp", "time", "ts", "date", "datetime"),
}
_SEPARATOR_CANDIDATES = ("::", "\t", ",", ";")
_SEPARATOR_NAMES = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "space": " ", "whitespace": " "}


@dataclasses.dataclass(frozen=True)
class RawDataset:
    """Interactions as dense integer ids, before any train/test split.

    Attributes:
      name: registry name, or the file's stem (without ``.gz``) for user data.
      n_users, n_items: sizes of the dense id spaces.
      users, items: int64 ``[E]``; all interactions, or the predefined training part.
      test_users, test_items: int64 ``[E_test]`` predefined test split (LightGCN sets),
        else ``None``.
      user_ids, item_ids: ``[n_users]`` / ``[n_items]`` original ids (int64 for
        registry sets, ``str`` objects for user data); ``user_ids[u]`` is dense user u.
      files: ``{path: sha256 of the file as stored on disk}`` for every file read.
      n_duplicates: duplicate ``(user, item)`` rows merged (train and test together).
      timestamps: float64 ``[E]`` seconds (UNIX time, or ISO dates converted as UTC) of the
        interactions when the data have a timestamp column (ml-100k, ml-1m, user files with one),
        else ``None``; a merged duplicate keeps its first row's time.
    """

    name: str
    n_users: int
    n_items: int
    users: np.ndarray
    items: np.ndarray
    test_users: np.ndarray | None
    test_items: np.ndarray | None
    user_ids: np.ndarray
    item_ids: np.ndarray
    files: dict
    n_duplicates: int
    timestamps: np.ndarray | None = None


def data_root(data_dir=None) -> pathlib.Path:
    """The data folder: ``data_dir`` (``--data-dir``), else ``$ITEMJAX_DATA``, else ``~/.cache/itemjax``."""
    if data_dir:
        return pathlib.Path(data_dir).expanduser()
    env = os.environ.get("ITEMJAX_DATA")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path("~/.cache/itemjax").expanduser()


# --------------------------------------------------------------------------- file reading


def _read_content(path: pathlib.Path) -> tuple[bytes, str]:
    """(decompressed bytes, sha256 of the bytes on disk); gzip detected by magic number."""
    try:
        stored = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    disk_sha256 = hashlib.sha256(stored).hexdigest()
    if stored[:2] == b"\x1f\x8b":
        try:
            content = gzip.decompress(stored)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: corrupt or truncated gzip file ({err}); re-create or re-download it") from err
    elif path.suffix == ".gz":
        raise DataError(f"{path}: named .gz but is not gzip-compressed; rename it or compress it with gzip")
    else:
        content = stored
    return content, disk_sha256


def _decode(content: bytes, path: pathlib.Path) -> str:
    """Text of a data file; rejects empty and binary files. UTF-8, else Latin-1 (MovieLens)."""
    if not content.strip():
        raise DataError(f"{path}: file is empty (no data lines); give a file with one interaction per line")
    hint = ""
    if content[:4] == b"PAR1":
        hint = " (a parquet file: name it .parquet)"
    elif content[:4] == b"PK\x03\x04":
        hint = " (a zip archive: extract it first)"
    nul_at = content.find(b"\x00")
    if hint or nul_at >= 0:
        line = content.count(b"\n", 0, max(nul_at, 0)) + 1
        raise DataError(f"{path}:{line}: binary data, not a text file{hint}; give a CSV/TSV text file")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        text = content.decode("latin-1")
    return text[1:] if text.startswith("\ufeff") else text


def _verify(path: pathlib.Path, content: bytes, dataset: str, filename: str) -> None:
    """Compare the decompressed content with the published checksum of ``dataset/filename``."""
    sha256, md5 = _CHECKSUMS.get((dataset, filename), (None, None))
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is None:
            continue
        actual = hashlib.new(algorithm, content).hexdigest()
        if actual != expected:
            what = " (of the decompressed content)" if path.name.endswith(".gz") else ""
            raise DataError(
                f"checksum mismatch for {path}: expected {algorithm} {expected}, got {actual}{what}; "
                f"this is not the original {dataset} {filename}: delete it to re-download"
            )


def _first_failing(values: list, convert) -> int:
    """Index of the first value that ``convert`` rejects (error path only)."""
    for index, value in enumerate(values):
        try:
            convert(value)
        except (ValueError, OverflowError):
            return index
    return -1


def _to_int64(column: np.ndarray, lines: np.ndarray, path, what: str) -> np.ndarray:
    """Parse a StringDType column as non-negative int64 ids; DataError names the line."""
    try:
        values = column.astype(np.int64)
    except (ValueError, OverflowError):
        bad = _first_failing(column.tolist(), lambda v: np.int64(int(v)))
        raise DataError(
            f"{path}:{lines[bad]}: {what} {column[bad]!r} is not a non-negative integer; this format needs numeric ids"
        ) from None
    negative = np.flatnonzero(values < 0)
    if negative.size:
        bad = negative[0]
        raise DataError(f"{path}:{lines[bad]}: negative {what} {values[bad]}; ids must be >= 0")
    return values


def _to_seconds(column: np.ndarray, lines: np.ndarray, path) -> np.ndarray:
    """Timestamps as float64 seconds: numbers (UNIX time) as they are, else ISO 8601 dates or
    date-times (``2024-03-01``, ``2024-03-01T12:30:00``) read as UTC."""
    try:
        return column.astype(np.float64)
    except (ValueError, OverflowError):
        pass
    try:
        return np.array(column.tolist(), dtype="datetime64[s]").astype(np.int64).astype(np.float64)
    except ValueError:
        bad = _first_failing(column.tolist(), lambda v: np.datetime64(v, "s"))
        raise DataError(
            f"{path}:{lines[bad]}: timestamp {column[bad]!r} is neither a number (UNIX seconds) nor an ISO date "
            "(YYYY-MM-DD[THH:MM:SS]); fix the line"
        ) from None


def _to_float64(column: np.ndarray, lines: np.ndarray, path) -> np.ndarray:
    try:
        return column.astype(np.float64)
    except (ValueError, OverflowError):
        bad = _first_failing(column.tolist(), float)
        raise DataError(
            f"{path}:{lines[bad]}: rating {column[bad]!r} is not a number; fix the line or drop --min-rating"
        ) from None


# --------------------------------------------------------------------------- delimited tables


def _normalise_header_name(field: str) -> str:
    return re.sub(r"[\s_\-\"']", "", field).lower()


def _header_roles(fields: list[str]) -> dict[str, int] | None:
    """{role: column} if ``fields`` look like a header line (any known column name), else None."""
    roles: dict[str, int] = {}
    for column, field in enumerate(fields):
        name = _normalise_header_name(field)
        for role, aliases in _HEADER_NAMES.items():
            if name in aliases and role not in roles:
                roles[role] = column
    return roles or None


def _resolve_sep(sep: str | None, first_line: str) -> str:
    """The column separator; ``" "`` stands for runs of spaces/tabs."""
    if sep is not None:
        if not isinstance(sep, str) or sep == "":
            raise ConfigError(f"sep must be a non-empty string, got {sep!r}")
        sep = _SEPARATOR_NAMES.get(sep.lower(), sep)
        if "\n" in sep:
            raise ConfigError("sep cannot contain a newline")
        return " " if sep.strip(" ") == "" else sep
    for candidate in _SEPARATOR_CANDIDATES:
        if candidate in first_line:
            return candidate
    return " "


@dataclasses.dataclass(frozen=True)
class _Table:
    """Columns of a delimited file: StringDType arrays ``[n_rows]`` by role, 1-based line numbers."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray | None
    lines: np.ndarray
    sep: str
    timestamp: np.ndarray | None = None


def _read_table(
    text: str, path, *, sep: str | None, fixed_columns: int | None = None, allow_header: bool = True
) -> _Table:
    """Split ``text`` into user/item/rating columns (vectorised; loops only on errors).

    ``fixed_columns`` (registry formats) demands exactly that many columns
    ``user, item, rating, timestamp`` and no header.
    """
    first = re.search(r"[^ \t\r\f\v\n][^\n]*", text)  # first non-blank line
    if first is None:
        raise DataError(f"{path}: file is empty (only blank lines); give one interaction per line")
    sep = _resolve_sep(sep, first.group().strip(_BLANKS))
    if sep == " ":
        text = re.sub(r"[ \t\r\f\v]+", " ", text)
    raw_lines = np.array(text.split("\n"), dtype=_STRING)
    stripped = np.strings.strip(raw_lines, _BLANKS)
    keep = np.strings.str_len(stripped) > 0
    line_numbers = np.flatnonzero(keep) + 1
    rows = stripped[keep]
    n_columns = np.strings.count(rows, sep) + 1
    shown_sep = {"\t": "tab", " ": "whitespace"}.get(sep, repr(sep))

    first_fields = str(rows[0]).split(sep)
    roles = _header_roles(first_fields) if allow_header else None
    if roles is not None:
        for role in ("user", "item"):
            if role not in roles:
                names = ", ".join(_HEADER_NAMES[role][:6])
                raise DataError(
                    f"{path}:{line_numbers[0]}: header line {str(rows[0]).strip()!r} has no {role} column "
                    f"(expected one of: {names}); rename the column or remove the header"
                )
        expected = len(first_fields)
        rows, line_numbers, n_columns = rows[1:], line_numbers[1:], n_columns[1:]
        if rows.size == 0:
            raise DataError(f"{path}: only a header line, no data lines; add interactions below the header")
    else:
        expected = fixed_columns if fixed_columns is not None else int(n_columns[0])
        if fixed_columns is None and not 2 <= expected <= 4:
            raise DataError(
                f"{path}:{line_numbers[0]}: expected 2 to 4 columns (user, item[, rating[, timestamp]]) "
                f"separated by {shown_sep}, found {expected}; pass --sep or fix the file"
            )
        roles = {role: column for column, role in enumerate(("user", "item", "rating", "timestamp")[:expected])}
    wrong = np.flatnonzero(n_columns != expected)
    if wrong.size:
        bad = wrong[0]
        raise DataError(
            f"{path}:{line_numbers[bad]}: expected {expected} columns separated by {shown_sep}, "
            f"found {n_columns[bad]}; fix the line (or pass --sep)"
        )
    columns = []
    rest = rows
    sep_array = np.array(sep, dtype=_STRING)
    for _ in range(expected - 1):
        field, _, rest = np.strings.partition(rest, sep_array)
        columns.append(field)
    columns.append(rest)
    columns = [np.strings.strip(column, _BLANKS) for column in columns]
    for role in ("user", "item"):
        empty = np.flatnonzero(np.strings.str_len(columns[roles[role]]) == 0)
        if empty.size:
            raise DataError(f"{path}:{line_numbers[empty[0]]}: empty {role} id; every line needs a user and an item")
    rating = columns[roles["rating"]] if "rating" in roles else None
    timestamp = columns[roles["timestamp"]] if "timestamp" in roles else None
    return _Table(columns[roles["user"]], columns[roles["item"]], rating, line_numbers, sep, timestamp)


def _read_parquet(content: bytes, path) -> _Table:
    """The user/item/rating columns of a parquet file, found by their names as a header's are
    (:data:`_HEADER_NAMES`), as string columns; ``lines`` are 1-based row numbers."""
    import io

    from itemjax.errors import require_extra

    pq = require_extra("pyarrow.parquet", extra="parquet", feature=f"reading {path.name}")
    try:
        table = pq.read_table(io.BytesIO(content))
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable parquet file ({err}); re-create it") from err
    roles = _header_roles(table.column_names) or {}
    for role in ("user", "item"):
        if role not in roles:
            names = ", ".join(_HEADER_NAMES[role][:6])
            raise DataError(f"{path}: no {role} column among {table.column_names} (expected one of: {names}); "
                            "rename the column")
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows; give one interaction per row")

    def column(role):
        values = table.column(roles[role]).to_pylist()
        missing = next((i for i, v in enumerate(values) if v is None), None)
        if missing is not None:
            raise DataError(f"{path}: row {missing + 1}: empty {role}; every row needs a user and an item")
        return np.strings.strip(np.array([str(v) for v in values], dtype=_STRING), _BLANKS)

    rating = column("rating") if "rating" in roles else None
    timestamp = column("timestamp") if "timestamp" in roles else None
    return _Table(column("user"), column("item"), rating, np.arange(1, table.num_rows + 1), ",", timestamp)


# --------------------------------------------------------------------------- id handling


def _factorize_first_seen(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dense int64 codes [E], object array of the distinct values in order of first appearance).

    A hash factorisation done by C-level iteration (``dict.fromkeys`` and ``map``), no
    Python-level loop body; faster than sorting strings.
    """
    as_list = values.tolist()
    distinct = list(dict.fromkeys(as_list))
    code_of = dict(zip(distinct, range(len(distinct))))
    codes = np.fromiter(map(code_of.__getitem__, as_list), dtype=np.int64, count=len(as_list))
    ids = np.empty(len(distinct), dtype=object)
    ids[:] = distinct
    return codes, ids


def _factorize_sorted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dense int64 codes, sorted unique values)."""
    unique, inverse = np.unique(values, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), unique


def _first_occurrence(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted indices of the first occurrence of each distinct (user, item) pair."""
    keys = users.astype(np.int64) * max(n_items, 1) + items
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def _kcore_mask(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, k: int) -> np.ndarray:
    """Edges kept by the k-core: repeat {drop edges whose user or item has < k edges} to a fixed point."""
    keep = np.ones(users.shape[0], dtype=bool)
    while True:
        user_degree = np.bincount(users[keep], minlength=n_users)
        item_degree = np.bincount(items[keep], minlength=n_items)
        new_keep = keep & (user_degree[users] >= k) & (item_degree[items] >= k)
        if new_keep.sum() == keep.sum():
            return keep
        keep = new_keep


def _compact(ids: np.ndarray, used: tuple[np.ndarray, ...], *arrays: np.ndarray):
    """Re-index so only ``used`` dense ids remain (order kept); returns (new ids table, remapped arrays...)."""
    present = np.zeros(ids.shape[0], dtype=bool)
    for array in used:
        present[array] = True
    new_code = np.cumsum(present) - 1
    return (ids[present], *(new_code[array] for array in arrays))


# --------------------------------------------------------------------------- registry files


def _locate(folder: pathlib.Path, filename: str) -> pathlib.Path | None:
    for candidate in (folder / filename, folder / f"{filename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing_message(name: str, filename: str, folder: pathlib.Path, url: str, reason: str) -> str:
    fetch_step = f"download {url} and extract {filename} into {folder}" if url.endswith(".zip") else (
        f"download {url} into {folder}"
    )
    return (
        f"{name}: {filename} not found in {folder} and {reason}; {fetch_step} "
        f"(or point --data-dir / ITEMJAX_DATA at a folder holding {name}/{filename})"
    )


def _extract_from_zip(archive: pathlib.Path, name: str, folder: pathlib.Path, wanted: tuple[str, ...]) -> None:
    """Extract the missing ``wanted`` files of ``name`` from its zip, verified and atomically."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = {pathlib.PurePosixPath(m).name: m for m in zipped.namelist() if not m.endswith("/")}
            for filename in wanted:
                if _locate(folder, filename) is not None or filename not in members:
                    continue
                with atomic_file(folder / filename, "wb", suffix=".part") as out:
                    content = zipped.read(members[filename])
                    _verify(archive / filename, content, name, filename)  # a mismatch discards the file
                    out.write(content)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive}: corrupt zip archive ({err}); delete it and retry") from err


def _registry_file(name: str, filename: str, root: pathlib.Path, *, download: bool, progress: bool) -> pathlib.Path:
    """Path of ``root/name/filename`` (or ``.gz``), downloading it when missing."""
    folder = root / name
    path = _locate(folder, filename)
    if path is not None:
        return path
    if name in _ZIP_SOURCES:
        url, zip_md5, members = _ZIP_SOURCES[name]
    else:
        url, zip_md5, members = _LIGHTGCN_URL.format(name=name, file=filename), None, ()
    if not download:
        raise DataError(_missing_message(name, filename, folder, url, "downloading is off (download=False)"))
    try:
        if name in _ZIP_SOURCES:
            archive = fetch(url, folder / f"{name}.zip", md5=zip_md5, progress=progress)
            try:
                _extract_from_zip(archive, name, folder, members)
            finally:
                archive.unlink(missing_ok=True)
        else:
            sha256, md5 = _CHECKSUMS.get((name, filename), (None, None))
            fetch(url, folder / filename, sha256=sha256, md5=md5, progress=progress)
    except DownloadFailed as err:
        raise DataError(_missing_message(name, filename, folder, url, f"the download failed ({err})")) from err
    path = _locate(folder, filename)
    if path is None:
        raise DataError(_missing_message(name, filename, folder, url, "the downloaded archive does not contain it"))
    return path


def _parse_adjacency(text: str, path) -> tuple[np.ndarray, np.ndarray, int]:
    """LightGCN ``user item item ...`` lines -> (users [E], items [E], largest user id incl. item-less users).

    One Python loop over lines (= users); the id conversion is one vectorised cast.
    """
    line_tokens = [line.split() for line in text.split("\n")]
    counts = np.fromiter(map(len, line_tokens), dtype=np.int64, count=len(line_tokens))
    flat = list(itertools.chain.from_iterable(line_tokens))
    token_line = np.repeat(np.arange(1, counts.size + 1), counts)
    if not flat:
        raise DataError(f"{path}: file is empty (no user lines); expected 'user item item ...' per line")
    values = _to_int64(np.array(flat, dtype=_STRING), token_line, path, "id")
    is_user = np.zeros(values.size, dtype=bool)
    is_user[np.cumsum(counts[counts > 0]) - counts[counts > 0]] = True
    line_users = values[is_user]
    users = np.repeat(line_users, counts[counts > 0] - 1)
    items = values[~is_user]
    return users, items, int(line_users.max())


def _load_registry(name, root, *, min_rating, kcore, download, progress) -> RawDataset:
    files: dict[str, str] = {}

    def read(filename: str) -> tuple[pathlib.Path, str]:
        path = _registry_file(name, filename, root, download=download, progress=progress)
        content, disk_sha256 = _read_content(path)
        _verify(path, content, name, filename)
        files[str(path)] = disk_sha256
        return path, _decode(content, path)

    if name in _LIGHTGCN_SETS:
        if min_rating is not None:
            raise DataError(f"{name}: min_rating needs a rating column, but the LightGCN split has none; drop --min-rating")
        (train_path, train_text), (test_path, test_text) = read("train.txt"), read("test.txt")
        users, items, max_train_user = _parse_adjacency(train_text, train_path)
        test_users, test_items, max_test_user = _parse_adjacency(test_text, test_path)
        n_users = max(max_train_user, max_test_user) + 1
        n_items = int(max(items.max(initial=-1), test_items.max(initial=-1))) + 1
        return _finish(
            name, users, items, n_users, n_items, np.arange(n_users), np.arange(n_items),
            files, kcore=kcore, test=(test_users, test_items), compact=kcore > 0,
        )

    filename, sep = ("u.data", "\t") if name == "ml-100k" else ("ratings.dat", "::")
    path, text = read(filename)
    table = _read_table(text, path, sep=sep, fixed_columns=4, allow_header=False)
    user_codes = _to_int64(table.user, table.lines, path, "user id")
    item_codes = _to_int64(table.item, table.lines, path, "item id")
    keep = _rating_mask(table, path, min_rating)
    times = _to_seconds(table.timestamp, table.lines, path)[keep]
    user_codes, item_codes = user_codes[keep], item_codes[keep]
    users, user_ids = _factorize_sorted(user_codes)
    items, item_ids = _factorize_sorted(item_codes)
    return _finish(name, users, items, user_ids.size, item_ids.size, user_ids, item_ids, files, kcore=kcore,
                   times=times)


def _rating_mask(table: _Table, path, min_rating) -> np.ndarray:
    if min_rating is None:
        return np.ones(table.user.size, dtype=bool)
    if table.rating is None:
        raise DataError(f"{path}: min_rating needs a rating column (user, item, rating), but the file has none; drop --min-rating")
    return _to_float64(table.rating, table.lines, path) >= min_rating


def _finish(name, users, items, n_users, n_items, user_ids, item_ids, files, *, kcore, test=None, compact=True,
            times=None):
    """Merge duplicates, apply the k-core, re-index densely and build the RawDataset."""
    first = _first_occurrence(users, items, n_items)
    n_duplicates = users.size - first.size
    users, items = users[first], items[first]
    times = None if times is None else times[first]
    if test is not None:
        test_first = _first_occurrence(test[0], test[1], n_items)
        n_duplicates += test[0].size - test_first.size
        test = (test[0][test_first], test[1][test_first])
    if kcore > 1:
        keep = _kcore_mask(users, items, n_users, n_items, kcore)
        users, items = users[keep], items[keep]
        times = None if times is None else times[keep]
        if test is not None:
            survivors_u = np.bincount(users, minlength=n_users) > 0
            survivors_i = np.bincount(items, minlength=n_items) > 0
            test_keep = survivors_u[test[0]] & survivors_i[test[1]]
            test = (test[0][test_keep], test[1][test_keep])
    if users.size == 0:
        raise DataError(
            f"{name}: no interactions left (after the min_rating / kcore={kcore} filters, if any); "
            "give more data or lower kcore / min_rating"
        )
    if compact:
        used_users = (users,) if test is None else (users, test[0])
        used_items = (items,) if test is None else (items, test[1])
        if test is None:
            user_ids, users = _compact(user_ids, used_users, users)
            item_ids, items = _compact(item_ids, used_items, items)
        else:
            user_ids, users, test_u = _compact(user_ids, used_users, users, test[0])
            item_ids, items, test_i = _compact(item_ids, used_items, items, test[1])
            test = (test_u, test_i)
        n_users, n_items = user_ids.size, item_ids.size
    return RawDataset(
        name=name,
        n_users=int(n_users),
        n_items=int(n_items),
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        test_users=None if test is None else test[0].astype(np.int64),
        test_items=None if test is None else test[1].astype(np.int64),
        user_ids=user_ids,
        item_ids=item_ids,
        files=files,
        n_duplicates=int(n_duplicates),
        timestamps=times,
    )


# --------------------------------------------------------------------------- public entry points


def load_dataset(
    name_or_path: str,
    *,
    data_dir=None,
    min_rating=None,
    kcore=0,
    sep=None,
    download=True,
    progress=True,
) -> RawDataset:
    """Load a registry dataset (``DATASETS``) or a user interaction file into a :class:`RawDataset`.

    Args:
      name_or_path: a name in ``DATASETS`` or the path of an existing CSV/TSV file.
      data_dir: data folder for registry sets (see :func:`data_root`).
      min_rating: keep only rows with ``rating >= min_rating`` (needs a rating column).
      kcore: if > 1, keep the k-core: every remaining user and item has >= kcore interactions.
      sep: separator of a user file (``","``, ``"\\t"``/``"tab"``, ``"::"``, ``";"``,
        ``" "`` for runs of blanks); detected when None.
      download: fetch missing registry files from the official source.
      progress: show download progress bars.

    Raises:
      DataError: unknown name, missing/unverifiable/malformed file (with file:line).
      ConfigError: invalid option values.
    """
    if isinstance(kcore, bool) or not isinstance(kcore, (int, np.integer)) or kcore < 0:
        raise ConfigError(f"kcore must be an integer >= 0, got {kcore!r}")
    if min_rating is not None:
        try:
            min_rating = float(min_rating)
        except (TypeError, ValueError):
            raise ConfigError(f"min_rating must be a number, got {min_rating!r}") from None
    name_or_path = os.fspath(name_or_path)
    if name_or_path in DATASETS:
        return _load_registry(
            name_or_path, data_root(data_dir), min_rating=min_rating, kcore=int(kcore), download=download, progress=progress
        )
    path = pathlib.Path(name_or_path).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "is neither a known dataset nor an existing file"
        raise DataError(
            f"{name_or_path!r} {what}; use one of {', '.join(DATASETS)} or the path of an existing "
            "interaction file (user,item[,rating[,timestamp]])"
        )
    content, disk_sha256 = _read_content(path)
    if path.suffix == ".parquet":
        table = _read_parquet(content, path)
    else:
        table = _read_table(_decode(content, path), path, sep=sep)
    keep = _rating_mask(table, path, min_rating)
    times = None if table.timestamp is None else _to_seconds(table.timestamp, table.lines, path)[keep]
    users, user_ids = _factorize_first_seen(table.user[keep])
    items, item_ids = _factorize_first_seen(table.item[keep])
    stem = path.name[: -len(".gz")] if path.name.endswith(".gz") else path.name
    return _finish(
        pathlib.Path(stem).stem, users, items, user_ids.size, item_ids.size,
        user_ids, item_ids, {str(path): disk_sha256}, kcore=int(kcore), times=times,
    )


def item_titles(raw: RawDataset, data_dir=None) -> dict[int, str] | None:
    """Dense item id -> title for MovieLens sets (``u.item`` / ``movies.dat``); None if unavailable.

    Reads ``data_root(data_dir)/<name>/`` without downloading; a file present but not
    matching its published checksum is a DataError.
    """
    if raw.name not in ("ml-100k", "ml-1m"):
        return None
    filename, sep = ("u.item", "|") if raw.name == "ml-100k" else ("movies.dat", "::")
    path = _locate(data_root(data_dir) / raw.name, filename)
    if path is None:
        return None
    content, _ = _read_content(path)
    _verify(path, content, raw.name, filename)
    title_by_id: dict[int, str] = {}
    for line in content.decode("latin-1").split("\n"):
        fields = line.split(sep)
        if len(fields) >= 2 and fields[0].strip().isdigit():
            title_by_id[int(fields[0])] = fields[1].strip()
    titles = {}
    for dense, original in enumerate(raw.item_ids.tolist()):
        try:
            title = title_by_id.get(int(original))
        except (TypeError, ValueError):
            title = None
        if title is not None:
            titles[dense] = title
    return titles
