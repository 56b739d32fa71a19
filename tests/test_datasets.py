"""Tests for itemjax.data.datasets: registry formats, user files, options and every bad-input message.

Tests on the real benchmark files locate them via $ITEMJAX_DATA and skip when it is unset.
"""

import gzip
import hashlib
import itertools
import os
import pathlib
import urllib.error
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from itemjax.data import datasets
from itemjax.data import download
from itemjax.data.datasets import DATASETS, RawDataset, data_root, item_titles, load_dataset
from itemjax.errors import ConfigError, DataError


def _shared_folder(name):
    root = os.environ.get("ITEMJAX_DATA")
    if not root or not (pathlib.Path(root) / name).is_dir():
        pytest.skip(f"benchmark data {name} not available (set ITEMJAX_DATA)")
    return pathlib.Path(root)


def _write(path, text, compress=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _pairs(raw, test=False):
    """Set of (original user id, original item id) of the train (or test) part."""
    users, items = (raw.test_users, raw.test_items) if test else (raw.users, raw.items)
    return set(zip(raw.user_ids[users].tolist(), raw.item_ids[items].tolist()))


def _error(callable_, *args, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        callable_(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message  # one line
    return message


@pytest.fixture
def no_checksums(monkeypatch):
    """Synthetic registry files cannot match the published checksums: switch them off."""
    monkeypatch.setattr(datasets, "_CHECKSUMS", {})


# --------------------------------------------------------------------------- data_root


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ITEMJAX_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "flag") == tmp_path / "flag"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("ITEMJAX_DATA")
    assert data_root() == pathlib.Path.home() / ".cache" / "itemjax"


# --------------------------------------------------------------------------- real benchmark files


def test_ml100k_exact_counts_and_reference():
    root = _shared_folder("ml-100k")
    raw = load_dataset("ml-100k", data_dir=root, progress=False)
    assert (raw.n_users, raw.n_items, raw.users.size) == (943, 1682, 100000)
    assert raw.test_users is None and raw.n_duplicates == 0
    assert raw.users.dtype == np.int64 and raw.items.dtype == np.int64
    np.testing.assert_array_equal(raw.user_ids, np.arange(1, 944))
    path = root / "ml-100k" / "u.data"
    assert raw.files == {str(path): "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"}
    reference = set()
    for line in path.read_text().splitlines():  # plain-loop reference parse
        user, item, _, _ = line.split("\t")
        reference.add((int(user), int(item)))
    assert _pairs(raw) == reference
    # Ratings 4 and 5 occur 34174 + 21201 times (README).
    assert load_dataset("ml-100k", data_dir=root, min_rating=4).users.size == 34174 + 21201


def test_ml100k_item_titles():
    root = _shared_folder("ml-100k")
    raw = load_dataset("ml-100k", data_dir=root)
    titles = item_titles(raw, data_dir=root)
    assert len(titles) == 1682
    assert titles[0] == "Toy Story (1995)" and titles[1] == "GoldenEye (1995)"
    kept = load_dataset("ml-100k", data_dir=root, kcore=50)  # fewer items: titles follow the re-indexing
    kept_titles = item_titles(kept, data_dir=root)
    assert len(kept_titles) == kept.n_items < 1682
    assert all(kept_titles[d] == titles[int(orig) - 1] for d, orig in enumerate(kept.item_ids))
    assert item_titles(kept, data_dir=root / "nowhere") is None


def test_gowalla_exact_counts_and_degrees():
    root = _shared_folder("gowalla")
    raw = load_dataset("gowalla", data_dir=root, progress=False)
    assert (raw.n_users, raw.n_items) == (29858, 40981)
    assert (raw.users.size, raw.test_users.size) == (810128, 217242)
    degrees = [len(line.split()) - 1 for line in (root / "gowalla" / "train.txt").read_text().splitlines()]
    np.testing.assert_array_equal(np.bincount(raw.users, minlength=raw.n_users), degrees)
    assert not _pairs(raw) & _pairs(raw, test=True)


def test_yelp2018_gz_train_verified_against_decompressed_checksum():
    root = _shared_folder("yelp2018")
    raw = load_dataset("yelp2018", data_dir=root, progress=False)
    assert (raw.n_users, raw.n_items, raw.users.size, raw.test_users.size) == (31668, 38048, 1237259, 324147)
    gz = root / "yelp2018" / "train.txt.gz"
    assert raw.files[str(gz)] == "9b69e51c511d3552ba88a05023f6fcfdf7c1a2d4ab64d3b67cea126d6d398572"


def test_user_file_ml1m_pairs():
    root = _shared_folder("ml-1m")
    path = root / "ml-1m" / "user_movie_pairs.dat.gz"
    raw = load_dataset(str(path))
    assert raw.name == "user_movie_pairs"
    assert (raw.users.size, raw.n_users, raw.n_items, raw.n_duplicates) == (1000209, 6040, 3706, 0)
    assert raw.test_users is None
    assert raw.user_ids[0] == "1" and raw.item_ids[:3].tolist() == ["1193", "661", "914"]  # first appearance
    assert raw.users[0] == 0 and raw.items[:3].tolist() == [0, 1, 2]
    assert np.bincount(raw.users).min() == 20 and np.bincount(raw.users).max() == 2314


# --------------------------------------------------------------------------- registry format parsing (synthetic)


def test_lightgcn_format_itemless_users_gz_and_duplicates(tmp_path, no_checksums):
    folder = tmp_path / "gowalla"
    _write(folder / "train.txt.gz", "0 3 1 1\n1\n\n2 0 5 \n", compress=True)  # user 1 has no items
    _write(folder / "test.txt", "0 2\n4 0\n")  # user 4 only in test, item 5 only in train
    raw = load_dataset("gowalla", data_dir=tmp_path, download=False)
    assert (raw.n_users, raw.n_items, raw.n_duplicates) == (5, 6, 1)
    assert _pairs(raw) == {(0, 3), (0, 1), (2, 0), (2, 5)}
    assert _pairs(raw, test=True) == {(0, 2), (4, 0)}
    assert set(raw.files) == {str(folder / "train.txt.gz"), str(folder / "test.txt")}


def test_lightgcn_kcore_filters_test_rows(tmp_path, no_checksums):
    folder = tmp_path / "gowalla"
    _write(folder / "train.txt", "0 0 1\n1 0 1\n2 0 7\n")
    _write(folder / "test.txt", "0 2\n2 1\n3 0\n")
    raw = load_dataset("gowalla", data_dir=tmp_path, kcore=2, download=False)
    assert _pairs(raw) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert _pairs(raw, test=True) == set()  # item 2, user 2 and user 3 are outside the 2-core
    assert (raw.n_users, raw.n_items) == (2, 2)


def test_ml1m_ratings_dat_format_and_latin1_titles(tmp_path, no_checksums):
    _write(tmp_path / "ml-1m" / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::1\n")
    _write(tmp_path / "ml-1m" / "movies.dat", "1193::Nest (1975)::Drama\n661::Café (1996)::Comedy\n".encode("latin-1"))
    raw = load_dataset("ml-1m", data_dir=tmp_path, download=False)
    assert _pairs(raw) == {(1, 1193), (1, 661), (2, 1193)}
    assert raw.user_ids.tolist() == [1, 2] and raw.item_ids.tolist() == [661, 1193]  # numeric ids: sorted
    assert item_titles(raw, data_dir=tmp_path) == {0: "Café (1996)", 1: "Nest (1975)"}
    high = load_dataset("ml-1m", data_dir=tmp_path, min_rating=4, download=False)
    assert _pairs(high) == {(1, 1193), (2, 1193)} and high.item_ids.tolist() == [1193]


def test_checksum_mismatch_names_file_expected_and_actual(tmp_path):
    bad = _write(tmp_path / "ml-100k" / "u.data", "1\t1\t5\t0\n")
    message = _error(load_dataset, "ml-100k", data_dir=tmp_path, download=False)
    assert str(bad) in message
    assert "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490" in message
    assert hashlib.sha256(bad.read_bytes()).hexdigest() in message


def test_registry_non_numeric_and_negative_ids(tmp_path, no_checksums):
    data = tmp_path / "ml-100k" / "u.data"
    _write(data, "1\t2\t5\t9\n1\tx7\t3\t9\n")
    message = _error(load_dataset, "ml-100k", data_dir=tmp_path)
    assert f"{data}:2:" in message and "'x7'" in message
    _write(data, "1\t2\t5\t9\n\n-3\t2\t3\t9\n")
    assert f"{data}:3:" in _error(load_dataset, "ml-100k", data_dir=tmp_path)
    _write(data, "1\t2\t5\t9\n1\t3\t5\n")
    message = _error(load_dataset, "ml-100k", data_dir=tmp_path)
    assert f"{data}:2:" in message and "expected 4 columns" in message
    train = tmp_path / "gowalla" / "train.txt"
    _write(train, "0 1 2\n1 2 -4\n")
    _write(tmp_path / "gowalla" / "test.txt", "0 3\n")
    message = _error(load_dataset, "gowalla", data_dir=tmp_path)
    assert f"{train}:2:" in message and "negative" in message
    _write(train, "0 1 2\n1 2 3.5\n")
    assert f"{train}:2:" in _error(load_dataset, "gowalla", data_dir=tmp_path)


def test_lightgcn_min_rating_is_an_error(tmp_path, no_checksums):
    _write(tmp_path / "yelp2018" / "train.txt", "0 1\n")
    _write(tmp_path / "yelp2018" / "test.txt", "0 0\n")
    assert "min_rating" in _error(load_dataset, "yelp2018", data_dir=tmp_path, min_rating=3)


# --------------------------------------------------------------------------- missing files and downloads


def _assert_missing_message(message, folder, filename, url):
    assert filename in message and url in message and str(folder) in message
    assert "--data-dir" in message and "ITEMJAX_DATA" in message


@pytest.mark.parametrize(
    "name, filename, url",
    [
        ("ml-1m", "ratings.dat", "https://files.grouplens.org/datasets/movielens/ml-1m.zip"),
        ("ml-100k", "u.data", "https://files.grouplens.org/datasets/movielens/ml-100k.zip"),
        ("amazon-book", "train.txt", "https://raw.githubusercontent.com/kuandeng/LightGCN/master/Data/amazon-book/train.txt"),
    ],
)
def test_missing_file_offline_and_download_false(tmp_path, monkeypatch, name, filename, url):
    calls = []

    def offline(url_, timeout):
        calls.append(url_)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    folder = tmp_path / name
    _write(folder / f".{filename}.x1y2.part", "1\t1\t5\t0\n")  # debris of a crashed download: ignored
    message = _error(load_dataset, name, data_dir=tmp_path, download=False)
    _assert_missing_message(message, folder, filename, url)
    assert "download=False" in message and calls == []
    message = _error(load_dataset, name, data_dir=tmp_path, progress=False)
    _assert_missing_message(message, folder, filename, url)
    assert "Name or service not known" in message and calls == [url]
    assert sorted(p.name for p in folder.iterdir()) == [f".{filename}.x1y2.part"]


def test_lightgcn_download_from_file_url(tmp_path, monkeypatch):
    server = tmp_path / "server" / "gowalla"
    train = _write(server / "train.txt", "0 1 2\n1 0\n")
    test = _write(server / "test.txt", "0 0\n1 2\n")
    monkeypatch.setattr(datasets, "_LIGHTGCN_URL", (tmp_path / "server").as_uri() + "/{name}/{file}")
    monkeypatch.setattr(
        datasets,
        "_CHECKSUMS",
        {("gowalla", "train.txt"): (download.sha256_file(train), None), ("gowalla", "test.txt"): (None, download.md5_file(test))},
    )
    raw = load_dataset("gowalla", data_dir=tmp_path / "cache", progress=False)
    assert _pairs(raw) == {(0, 1), (0, 2), (1, 0)} and _pairs(raw, test=True) == {(0, 0), (1, 2)}
    assert (tmp_path / "cache" / "gowalla" / "test.txt").read_bytes() == test.read_bytes()
    # A source whose hash differs is refused and nothing is stored.
    _write(server / "test.txt", "0 0\n1 1\n")
    (tmp_path / "cache" / "gowalla" / "test.txt").unlink()
    message = _error(load_dataset, "gowalla", data_dir=tmp_path / "cache", progress=False)
    assert download.md5_file(test) in message
    assert sorted(p.name for p in (tmp_path / "cache" / "gowalla").iterdir()) == ["train.txt"]


def _serve_zip(tmp_path, monkeypatch, name, members):
    archive = tmp_path / "server" / f"{name}.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zipped:
        for filename, content in members.items():
            zipped.writestr(f"{name}/{filename}", content)
    url, _, wanted = datasets._ZIP_SOURCES[name]
    monkeypatch.setitem(datasets._ZIP_SOURCES, name, (archive.as_uri(), download.md5_file(archive), wanted))


def test_zip_download_extracts_and_verifies(tmp_path, monkeypatch):
    u_data = b"7\t30\t4\t0\n7\t10\t2\t0\n9\t30\t5\t0\n"
    u_item = "10|Alpha (1990)|x\n30|Beta (1991)|y\n".encode("latin-1")
    _serve_zip(tmp_path, monkeypatch, "ml-100k", {"u.data": u_data, "u.item": u_item, "README": b"terms"})
    monkeypatch.setattr(
        datasets,
        "_CHECKSUMS",
        {("ml-100k", "u.data"): (hashlib.sha256(u_data).hexdigest(), None), ("ml-100k", "u.item"): (hashlib.sha256(u_item).hexdigest(), None)},
    )
    cache = tmp_path / "cache"
    raw = load_dataset("ml-100k", data_dir=cache, progress=False)
    assert _pairs(raw) == {(7, 30), (7, 10), (9, 30)}
    assert sorted(p.name for p in (cache / "ml-100k").iterdir()) == ["README", "u.data", "u.item"]  # zip removed
    assert item_titles(raw, data_dir=cache) == {0: "Alpha (1990)", 1: "Beta (1991)"}
    # A zip whose member does not match its checksum: DataError, and that member is not kept.
    for path in (cache / "ml-100k").iterdir():
        path.unlink()
    _serve_zip(tmp_path, monkeypatch, "ml-100k", {"u.data": b"1\t1\t1\t1\n", "u.item": u_item, "README": b"t"})
    message = _error(load_dataset, "ml-100k", data_dir=cache, progress=False)
    assert hashlib.sha256(u_data).hexdigest() in message
    assert not (cache / "ml-100k" / "u.data").exists() and not (cache / "ml-100k" / "ml-100k.zip").exists()


def test_zip_download_of_real_ml100k_members(tmp_path, monkeypatch):
    root = _shared_folder("ml-100k")
    members = {f: (root / "ml-100k" / f).read_bytes() for f in ("u.data", "u.item", "README")}
    _serve_zip(tmp_path, monkeypatch, "ml-100k", members)
    raw = load_dataset("ml-100k", data_dir=tmp_path / "cache", progress=False)  # real published checksums
    assert (raw.n_users, raw.n_items, raw.users.size) == (943, 1682, 100000)


def test_unknown_name_lists_registry():
    message = _error(load_dataset, "ml-10m")
    assert all(name in message for name in DATASETS) and "exist" in message


# --------------------------------------------------------------------------- user files


ROWS = [("u1", "i1", "5", "100"), ("u2", "i1", "3", "101"), ("u1", "i2", "1", "102"), ("u3", "i3", "4", "103")]


@pytest.mark.parametrize("sep", [",", "\t", "::", ";", " ", "  \t "])
def test_separator_detection(tmp_path, sep):
    path = _write(tmp_path / "data.txt", "".join(sep.join(row) + "\n" for row in ROWS))
    for given_sep in (None, sep):
        raw = load_dataset(str(path), sep=given_sep)
        assert _pairs(raw) == {row[:2] for row in ROWS}
        assert raw.user_ids.tolist() == ["u1", "u2", "u3"] and raw.item_ids.tolist() == ["i1", "i2", "i3"]
        assert raw.users.tolist() == [0, 1, 0, 2] and raw.items.tolist() == [0, 0, 1, 2]
        assert raw.name == "data" and raw.files == {str(path): download.sha256_file(path)}


def test_whitespace_separated_with_padding_crlf_blank_lines_and_gz(tmp_path):
    path = _write(tmp_path / "data.tsv.gz", "  a   x 1\r\n\r\n\tb\t y  2 \r\n", compress=True)
    raw = load_dataset(str(path), min_rating=2)
    assert _pairs(raw) == {("b", "y")} and raw.name == "data"
    comma = _write(tmp_path / "c.csv", "John Smith , Book A\nJohn Smith,Book B\n")
    assert _pairs(load_dataset(str(comma))) == {("John Smith", "Book A"), ("John Smith", "Book B")}


@pytest.mark.parametrize(
    "header, columns",
    [
        ("userId,movieId,rating,timestamp", (0, 1, 2)),
        ("item_id,user_id", (1, 0, None)),
        ("UID , IID , Rating , extra", (0, 1, 2)),
        ('"user","movie_id","timestamp"', (0, 1, None)),
    ],
)
def test_header_names_and_column_order(tmp_path, header, columns):
    n_fields = len(header.split(","))
    # column j holds row[j] (prefixed "a"/"b" for the two id columns): user and item are
    # picked by their header position, whatever order the header lists them in
    lines = [header] + [",".join(("ab"[j] if j < 2 else "") + row[j] for j in range(n_fields)) for row in ROWS]
    path = _write(tmp_path / "h.csv", "\n".join(lines) + "\n")
    user_col, item_col, rating_col = columns
    raw = load_dataset(str(path))
    expected = {("ab"[user_col] + row[user_col], "ab"[item_col] + row[item_col]) for row in ROWS}
    assert _pairs(raw) == expected
    if rating_col is not None:
        kept = load_dataset(str(path), min_rating=4)
        assert len(_pairs(kept)) == sum(float(row[rating_col]) >= 4 for row in ROWS)
    else:
        assert "rating column" in _error(load_dataset, str(path), min_rating=4)


def test_min_rating_against_loop_reference(tmp_path):
    rng = np.random.default_rng(3)
    rows = [(f"u{rng.integers(20)}", f"i{rng.integers(30)}", f"{rng.integers(1, 6) / 1.0}") for _ in range(300)]
    path = _write(tmp_path / "r.csv", "".join(",".join(r) + "\n" for r in rows))
    raw = load_dataset(str(path), min_rating=3.5)
    assert _pairs(raw) == {(u, i) for u, i, r in rows if float(r) >= 3.5}
    kept_rows = [(u, i) for u, i, r in rows if float(r) >= 3.5]
    assert raw.n_duplicates == len(kept_rows) - len(set(kept_rows))
    assert raw.user_ids.tolist() == list(dict.fromkeys(u for u, _ in kept_rows))  # first appearance among kept


def _kcore_reference(pairs, k):
    pairs = set(pairs)
    while True:
        user_degree, item_degree = {}, {}
        for user, item in pairs:
            user_degree[user] = user_degree.get(user, 0) + 1
            item_degree[item] = item_degree.get(item, 0) + 1
        kept = {(u, i) for u, i in pairs if user_degree[u] >= k and item_degree[i] >= k}
        if kept == pairs:
            return kept
        pairs = kept


@pytest.mark.parametrize("k", [2, 3, 5])
def test_kcore_against_plain_loop(tmp_path, k):
    rng = np.random.default_rng(k)
    rows = [(f"u{int(rng.zipf(1.6)) % 60}", f"i{int(rng.zipf(1.4)) % 80}") for _ in range(700)]
    path = _write(tmp_path / "k.csv", "".join(f"{u},{i}\n" for u, i in rows))
    raw = load_dataset(str(path), kcore=k)
    expected = _kcore_reference(rows, k)
    assert 0 < len(expected) < len(set(rows))  # the test data exercises the pruning
    assert _pairs(raw) == expected and raw.users.size == len(expected)
    assert raw.n_users == len({u for u, _ in expected}) and raw.n_items == len({i for _, i in expected})
    assert np.bincount(raw.users).min() >= k and np.bincount(raw.items).min() >= k
    assert raw.n_duplicates == len(rows) - len(set(rows))
    assert "kcore" in _error(load_dataset, str(path), kcore=10_000)


def test_bad_options(tmp_path):
    path = _write(tmp_path / "x.csv", "a,b\n")
    with pytest.raises(ConfigError):
        load_dataset(str(path), kcore=-1)
    with pytest.raises(ConfigError):
        load_dataset(str(path), min_rating="high")
    with pytest.raises(ConfigError):
        load_dataset(str(path), sep="")


# --------------------------------------------------------------------------- bad user input: one message each


@pytest.mark.parametrize(
    "content, line, fragment, kwargs",
    [
        ("a,b\nc,d,e,f,g\n", 2, "expected 2 columns", {}),
        ("a,b,c,d,e\n", 1, "2 to 4 columns", {}),
        ("a\n", 1, "2 to 4 columns", {}),
        ("a,b,5\n\nc,d,five\n", 3, "'five' is not a number", {"min_rating": 3}),
        ("a,b\n,d\n", 2, "empty user id", {}),
        ("user,sku\n1,2\n", 1, "no item column", {}),
        ("sku;movieId\n1;2\n", 1, "no user column", {}),
        ("userId,itemId\n\n", None, "only a header", {}),
        ("", None, "empty", {}),
        ("\n \n\t\n", None, "empty", {}),
        (b"a,b\nc,\x00\x01\x02d\n", 2, "binary", {}),
        (b"PAR1\x15\x04\x15\x80", 1, "parquet", {}),
    ],
)
def test_bad_user_input_messages(tmp_path, content, line, fragment, kwargs):
    path = _write(tmp_path / "bad.csv", content)
    message = _error(load_dataset, str(path), **kwargs)
    assert str(path) in message and fragment in message
    if line is not None:
        assert f"{path}:{line}:" in message


def test_bad_gzip_and_folder(tmp_path):
    fake = _write(tmp_path / "data.csv.gz", "a,b\n")
    assert "gzip" in _error(load_dataset, str(fake))
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(gzip.compress(b"a,b\n" * 1000)[:40])
    assert str(truncated) in _error(load_dataset, str(truncated))
    assert "folder" in _error(load_dataset, str(tmp_path))


def test_non_numeric_rating_ignored_without_min_rating(tmp_path):
    path = _write(tmp_path / "r.csv", "a,b,good\nc,d,bad\n")
    assert _pairs(load_dataset(str(path))) == {("a", "b"), ("c", "d")}


# --------------------------------------------------------------------------- property tests of the user-file parser

_ID = st.text(alphabet="abcXYZ0123456789-_.@é", min_size=1, max_size=6)
_SEPARATORS = [",", "\t", "::", ";", " "]


def _reference_parse(lines, sep):
    users, items = {}, {}
    pairs = []
    for line in lines:
        line = line.strip(" \t\r\f\v")
        fields = line.split() if sep == " " else [f.strip(" \t\r\f\v") for f in line.split(sep)]
        pairs.append((fields[0], fields[1]))
        users.setdefault(fields[0], len(users))
        items.setdefault(fields[1], len(items))
    return pairs, list(users), list(items)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(_ID, _ID, st.integers(0, 5)), min_size=1, max_size=30),
    sep=st.sampled_from(_SEPARATORS),
    with_rating=st.booleans(),
    padding=st.sampled_from(["", " ", "\t "]),
)
def test_property_valid_rows_parse_like_reference(tmp_path_factory, rows, sep, with_rating, padding):
    assume(datasets._header_roles(list(rows[0][:2])) is None)
    path = tmp_path_factory.mktemp("prop") / "rows.txt"
    lines = [padding + sep.join([u, i] + ([str(r)] if with_rating else [])) + padding for u, i, r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    raw = load_dataset(str(path))
    pairs, user_order, item_order = _reference_parse(lines, sep)
    assert _pairs(raw) == set(pairs)
    assert raw.user_ids.tolist() == user_order and raw.item_ids.tolist() == item_order
    assert raw.n_duplicates == len(pairs) - len(set(pairs))
    assert raw.users.size == len(set(pairs)) and raw.users.max() < raw.n_users and raw.items.max() < raw.n_items


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.lists(
            st.sampled_from(list("ab1:,;\t \r\n\x00\x0bé\u2028\"'#-.") + ["user", "item", "rating", "::", "-1", "nan"]),
            max_size=60,
        ).map("".join),
    ),
    options=st.sampled_from([{}, {"min_rating": 2.0}, {"kcore": 2}, {"sep": ","}, {"sep": " "}, {"sep": "::"}]),
    compress=st.booleans(),
)
def test_property_garbage_parses_or_raises_data_error(tmp_path_factory, content, options, compress):
    data = content.encode("utf-8") if isinstance(content, str) else content
    path = tmp_path_factory.mktemp("garbage") / ("junk.csv.gz" if compress else "junk.csv")
    path.write_bytes(gzip.compress(data) if compress else data)
    try:
        raw = load_dataset(str(path), **options)
    except DataError as err:
        assert "\n" not in str(err) and str(path) in str(err) or "kcore" in str(err)
        return
    assert isinstance(raw, RawDataset)
    assert raw.users.size == raw.items.size > 0
    assert 0 <= raw.users.min() and raw.users.max() < raw.n_users == raw.user_ids.size
    assert 0 <= raw.items.min() and raw.items.max() < raw.n_items == raw.item_ids.size
    assert len(set(zip(raw.users.tolist(), raw.items.tolist()))) == raw.users.size


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(_ID, _ID), min_size=2, max_size=25),
    sep=st.sampled_from([",", "\t", "::", ";"]),
    data=st.data(),
)
def test_property_one_corrupt_row_is_reported_at_its_line(tmp_path_factory, rows, sep, data):
    assume(datasets._header_roles(list(rows[0])) is None)
    lines = [sep.join(row) for row in rows]
    bad = data.draw(st.integers(1, len(lines) - 1), label="corrupt line index")
    corruption = data.draw(st.sampled_from(["extra", "missing"]), label="corruption")
    lines[bad] = lines[bad] + sep + "x" + sep + "y" + sep + "z" if corruption == "extra" else rows[bad][0]
    path = tmp_path_factory.mktemp("corrupt") / "rows.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    message = _error(load_dataset, str(path))
    assert f"{path}:{bad + 1}:" in message and "columns" in message


def test_loading_is_deterministic_in_file_content(tmp_path):
    rows = list(itertools.product(["b", "a", "c"], ["y", "x"]))
    path = _write(tmp_path / "d.csv", "".join(f"{u},{i}\n" for u, i in rows))
    first, second = load_dataset(str(path)), load_dataset(str(path))
    np.testing.assert_array_equal(first.users, second.users)
    np.testing.assert_array_equal(first.items, second.items)
    assert first.user_ids.tolist() == ["b", "a", "c"] and first.item_ids.tolist() == ["y", "x"]


def test_parquet_file_reads_like_the_same_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    users = ["u1", "u2", "u1", "u3", "u2", "u1"]
    items = [10, 11, 12, 10, 10, 10]  # the last row repeats (u1, 10): merged as in a CSV
    ratings = [5.0, 3.0, 4.0, 1.0, 2.0, 4.5]
    pq.write_table(pa.table({"user_id": users, "movieId": items, "rating": ratings}), tmp_path / "r.parquet")
    (tmp_path / "r.csv").write_text("user_id,movieId,rating\n" + "".join(
        f"{u},{i},{r}\n" for u, i, r in zip(users, items, ratings)))
    got, want = load_dataset(tmp_path / "r.parquet"), load_dataset(tmp_path / "r.csv")
    assert got.name == want.name == "r"
    assert list(got.user_ids) == list(want.user_ids) == ["u1", "u2", "u3"]
    assert list(got.item_ids) == list(want.item_ids) == ["10", "11", "12"]
    assert (got.users.tolist(), got.items.tolist()) == (want.users.tolist(), want.items.tolist())
    assert got.n_duplicates == want.n_duplicates == 1
    kept = load_dataset(tmp_path / "r.parquet", min_rating=3.5)
    assert sorted(zip(kept.user_ids[kept.users], kept.item_ids[kept.items])) == [("u1", "10"), ("u1", "12")]
    pq.write_table(pa.table({"user_id": users, "what": items}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: no item column among \['user_id', 'what'\]"):
        load_dataset(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"user": ["a", None], "item": ["x", "y"]}), tmp_path / "null.parquet")
    with pytest.raises(DataError, match="row 2: empty user"):
        load_dataset(tmp_path / "null.parquet")
