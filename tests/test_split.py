"""Tests for itemjax.data.split: per-user holdout against a loop reference, invariants, predefined splits."""

import os
import pathlib

import numpy as np
import pytest
import scipy.sparse

from itemjax.data.datasets import RawDataset, load_dataset
from itemjax.errors import ConfigError, DataError
from itemjax.data.split import Split, make_split


def _raw(users, items, n_users=None, n_items=None, test=None, n_duplicates=0, name="toy"):
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    n_users = int(users.max()) + 1 if n_users is None else n_users
    n_items = int(items.max()) + 1 if n_items is None else n_items
    return RawDataset(
        name=name,
        n_users=n_users,
        n_items=n_items,
        users=users,
        items=items,
        test_users=None if test is None else np.asarray(test[0], dtype=np.int64),
        test_items=None if test is None else np.asarray(test[1], dtype=np.int64),
        user_ids=np.arange(n_users) + 100,
        item_ids=np.arange(n_items) + 1000,
        files={"x": "0" * 64},
        n_duplicates=n_duplicates,
    )


def _random_raw(seed=0, n_users=60, n_items=90, n_edges=1500):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_edges)
    items = rng.integers(0, n_items, n_edges)
    return _raw(users, items, n_users, n_items)


def _pairs(matrix):
    coo = matrix.tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist()))


def _expected_held(n, frac):
    """Reference: Python's round, at least 1 when n >= 2, at most n - 1."""
    if n <= 1:
        return 0
    return min(max(round(frac * n), 1), n - 1)


def _assert_canonical(matrix, shape):
    assert isinstance(matrix, scipy.sparse.csr_matrix)
    assert matrix.shape == shape and matrix.dtype == np.float32
    assert matrix.has_sorted_indices
    copy = matrix.copy()
    copy.sum_duplicates()
    assert copy.nnz == matrix.nnz  # no duplicates
    np.testing.assert_array_equal(matrix.data, np.ones(matrix.nnz, np.float32))
    for row in range(shape[0]):  # sorted within each row, checked by a loop
        columns = matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]]
        assert all(a < b for a, b in zip(columns[:-1], columns[1:]))


@pytest.mark.parametrize("test_frac, valid_frac", [(0.2, 0.1), (0.5, 0.0), (0.1, 0.25)])
def test_random_holdout_partitions_with_per_user_counts(test_frac, valid_frac):
    raw = _random_raw()
    split = make_split(raw, test_frac=test_frac, valid_frac=valid_frac, seed=3)
    shape = (raw.n_users, raw.n_items)
    for matrix in (split.train, split.valid, split.test):
        _assert_canonical(matrix, shape)
    train, valid, test = _pairs(split.train), _pairs(split.valid), _pairs(split.test)
    all_pairs = set(zip(raw.users.tolist(), raw.items.tolist()))
    assert not train & valid and not train & test and not valid & test
    assert train | valid | test == all_pairs
    for user in range(raw.n_users):  # per-user fractions, by a plain loop
        n_all = sum(1 for u, _ in all_pairs if u == user)
        n_test = sum(1 for u, _ in test if u == user)
        n_valid = sum(1 for u, _ in valid if u == user)
        assert n_test == _expected_held(n_all, test_frac)
        assert n_valid == (_expected_held(n_all - n_test, valid_frac) if valid_frac > 0 else 0)
    if valid_frac == 0:
        assert split.valid.nnz == 0


def test_split_is_pure_function_of_data_fracs_and_seed():
    raw = _random_raw(seed=1)
    first, again = make_split(raw, seed=7), make_split(raw, seed=7)
    order = np.random.default_rng(0).permutation(raw.users.size)  # same set, other row order, duplicates
    shuffled = _raw(
        np.concatenate([raw.users[order], raw.users[:5]]), np.concatenate([raw.items[order], raw.items[:5]]),
        raw.n_users, raw.n_items,
    )
    permuted = make_split(shuffled, seed=7)
    for name in ("train", "valid", "test"):
        a, b, c = getattr(first, name), getattr(again, name), getattr(permuted, name)
        assert (a != b).nnz == 0 and (a != c).nnz == 0
    other = make_split(raw, seed=8)
    assert _pairs(other.test) != _pairs(first.test) and other.test.nnz == first.test.nnz
    assert _pairs(make_split(raw, seed=7, test_frac=0.3).test) != _pairs(first.test)


def test_small_users_keep_their_only_item_in_train():
    # user 0: 1 item, user 1: 2 items, user 2: 3 items, user 3: 10 items
    users = [0] + [1] * 2 + [2] * 3 + [3] * 10
    items = [0] + [0, 1] + [0, 1, 2] + list(range(10))
    split = make_split(_raw(users, items), test_frac=0.2, valid_frac=0.0, seed=0)
    per_user_test = np.diff(split.test.indptr).tolist()
    per_user_train = np.diff(split.train.indptr).tolist()
    assert per_user_test == [0, 1, 1, 2]
    assert per_user_train == [1, 1, 2, 8]
    assert _pairs(split.train) >= {(0, 0)}


def test_predefined_test_split_is_used_and_kept_disjoint():
    train = ([0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 0, 3, 1, 2, 3])
    test = ([0, 1, 2, 2], [3, 1, 0, 1])  # (2, 1) is also in train: dropped from test
    raw = _raw(*train, n_users=4, n_items=5, test=test)
    split = make_split(raw, test_frac=0.9, valid_frac=0.0, seed=0)
    assert _pairs(split.test) == {(0, 3), (1, 1), (2, 0)}
    assert _pairs(split.train) == set(zip(*train))
    assert split.train.shape == (4, 5)
    with_valid = make_split(raw, valid_frac=0.34, seed=0)
    assert _pairs(with_valid.test) == _pairs(split.test)
    assert np.diff(with_valid.valid.indptr).tolist() == [1, 1, 1, 0]
    assert _pairs(with_valid.train) | _pairs(with_valid.valid) == set(zip(*train))
    assert not _pairs(with_valid.train) & _pairs(with_valid.valid)


def test_too_small_datasets_and_bad_fractions():
    with pytest.raises(DataError, match="at least 2"):
        make_split(_raw([0, 0], [0, 1]))
    with pytest.raises(DataError, match="2 or more interactions"):
        make_split(_raw([0, 1, 2], [0, 1, 1]))
    with pytest.raises(DataError, match="validation"):
        make_split(_raw([0, 0, 1, 1], [0, 1, 0, 1]), test_frac=0.5, valid_frac=0.1)
    assert make_split(_raw([0, 0, 1, 1], [0, 1, 0, 1]), test_frac=0.5, valid_frac=0.0).test.nnz == 2
    with pytest.raises(DataError, match="empty"):
        make_split(_raw([0, 1], [0, 1], test=([], [])))
    for kwargs in ({"test_frac": 0.0}, {"test_frac": 1.0}, {"valid_frac": -0.1}, {"valid_frac": 1.0}):
        with pytest.raises(ConfigError):
            make_split(_random_raw(), **kwargs)


def test_stats_and_describe():
    raw = _raw([0, 0, 0, 0, 1, 1, 1, 2], [0, 1, 2, 3, 0, 1, 2, 0], n_users=3, n_items=5, n_duplicates=4, name="tiny")
    split = make_split(raw, test_frac=0.25, valid_frac=0.0, seed=0)
    stats = split.stats()
    assert stats == {
        "name": "tiny",
        "users": 3,
        "items": 5,
        "train": 6,
        "valid": 0,
        "test": 2,
        "interactions": 8,
        "density": 8 / 15,
        "test_users": 2,
        "duplicates_merged": 4,
    }
    text = split.describe()
    assert "tiny" in text and "3 users" in text and "test 2" in text and "4 duplicates" in text
    assert isinstance(split, Split) and split.files == {"x": "0" * 64}
    np.testing.assert_array_equal(split.user_ids, [100, 101, 102])


def _shared(name):
    root = os.environ.get("ITEMJAX_DATA")
    if not root or not (pathlib.Path(root) / name).is_dir():
        pytest.skip(f"benchmark data {name} not available (set ITEMJAX_DATA)")
    return pathlib.Path(root)


def test_gowalla_predefined_split_counts():
    raw = load_dataset("gowalla", data_dir=_shared("gowalla"), progress=False)
    split = make_split(raw, valid_frac=0.1, seed=0)
    assert (split.n_users, split.n_items) == (29858, 40981)
    assert split.test.nnz == 217242 and split.train.nnz + split.valid.nnz == 810128
    degrees = np.bincount(raw.users, minlength=raw.n_users)
    expected_valid = sum(_expected_held(int(n), 0.1) for n in degrees)
    assert split.valid.nnz == expected_valid


def test_ml100k_random_split_counts():
    raw = load_dataset("ml-100k", data_dir=_shared("ml-100k"), progress=False)
    split = make_split(raw, test_frac=0.2, valid_frac=0.1, seed=0)
    degrees = np.bincount(raw.users)
    expected_test = [_expected_held(int(n), 0.2) for n in degrees]
    assert np.diff(split.test.indptr).tolist() == expected_test
    assert split.train.nnz + split.valid.nnz + split.test.nnz == 100000


# ----------------------------------------------------------------------------- splits in time


def _timed_raw(seed=0, n_users=40, n_items=60, n_edges=900):
    """Distinct pairs with integer times drawn from a small range (ties happen)."""
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, n_users * n_items, n_edges))
    rng.shuffle(keys)
    raw = _raw(keys // n_items, keys % n_items, n_users, n_items)
    import dataclasses

    return dataclasses.replace(raw, timestamps=rng.integers(0, 200, keys.size).astype(np.float64))


def _time_of(raw):
    return {(int(u), int(i)): t for u, i, t in zip(raw.users, raw.items, raw.timestamps)}


def test_temporal_split_holds_out_each_users_latest_interactions():
    raw = _timed_raw()
    split = make_split(raw, test_frac=0.2, valid_frac=0.1, seed=3, method="temporal")
    times = _time_of(raw)
    parts = {name: _pairs(getattr(split, name)) for name in ("train", "valid", "test")}
    assert set().union(*parts.values()) == set(times) and sum(map(len, parts.values())) == len(times)
    per_user = {}
    for u, i in times:
        per_user.setdefault(u, []).append(i)
    for u, its in per_user.items():
        n = len(its)
        part_times = {name: [times[(u, i)] for i in its if (u, i) in parts[name]] for name in parts}
        assert len(part_times["test"]) == _expected_held(n, 0.2)  # the random split's counts
        # no test interaction precedes a training (or validation) one of the same user; validation after train
        if part_times["test"]:
            assert min(part_times["test"]) >= max(part_times["train"] + part_times["valid"])
        if part_times["valid"]:
            assert min(part_times["valid"]) >= max(part_times["train"])
    assert split.stats()["split"] == "temporal"
    assert make_split(raw, test_frac=0.2, valid_frac=0.1, seed=3, method="temporal").test.nnz == split.test.nnz


def test_time_cut_split_and_its_dropped_test_rows():
    raw = _timed_raw(1)
    cut = 150.0
    split = make_split(raw, test_frac=0.2, valid_frac=0.1, seed=0, method="time-cut", cut_time=cut)
    times = _time_of(raw)
    train, valid, test = (_pairs(getattr(split, n)) for n in ("train", "valid", "test"))
    assert all(times[p] < cut for p in train | valid) and all(times[p] >= cut for p in test)
    before = {p for p, t in times.items() if t < cut}
    assert train | valid == before
    known_users = {u for u, _ in train}
    known_items = {i for _, i in train}
    after = [p for p, t in times.items() if t >= cut]
    kept = {p for p in after if p[0] in known_users and p[1] in known_items}
    assert test == kept and split.dropped_test == len(after) - len(kept)


def test_time_splits_name_their_problems():
    with pytest.raises(DataError, match="no timestamp column"):
        make_split(_random_raw(), method="temporal")
    with pytest.raises(ConfigError, match="needs --cut-date"):
        make_split(_timed_raw(), method="time-cut")
    with pytest.raises(DataError, match="leaves no test"):
        make_split(_timed_raw(), method="time-cut", cut_time=1e9)
    with pytest.raises(ConfigError, match="unknown split"):
        make_split(_timed_raw(), method="later")


def test_loader_keeps_timestamps_numbers_and_iso_dates(tmp_path):
    from itemjax.data.split import parse_time

    (tmp_path / "a.csv").write_text("user,item,timestamp\nx,p,2020-01-02\ny,q,2020-01-01T12:00:00\nx,p,2021-01-01\n")
    raw = load_dataset(tmp_path / "a.csv")
    assert raw.timestamps.tolist() == [parse_time("2020-01-02"), parse_time("2020-01-01T12:00:00")]  # duplicate: first
    assert parse_time("2020-01-02") == 1577923200.0 and parse_time("86400") == 86400.0
    (tmp_path / "b.csv").write_text("user,item,timestamp\nx,p,yesterday\n")
    with pytest.raises(DataError, match="b.csv:2: timestamp 'yesterday'"):
        load_dataset(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("u,i\n1,2\n")
    assert load_dataset(tmp_path / "c.csv").timestamps is None


@pytest.mark.skipif(not os.environ.get("ITEMJAX_DATA"), reason="needs ITEMJAX_DATA")
def test_ml100k_temporal_split_respects_time():
    raw = load_dataset("ml-100k", data_dir=os.environ["ITEMJAX_DATA"], download=False, progress=False)
    assert raw.timestamps is not None and raw.timestamps.size == raw.users.size == 100000
    split = make_split(raw, method="temporal")
    times = dict(zip(zip(raw.users.tolist(), raw.items.tolist()), raw.timestamps.tolist()))
    train, test = split.train.tocsr(), split.test.tocsr()
    for u in range(split.n_users):
        t_train = [times[(u, i)] for i in train.indices[train.indptr[u]:train.indptr[u + 1]]]
        t_test = [times[(u, i)] for i in test.indices[test.indptr[u]:test.indptr[u + 1]]]
        if t_test:
            assert min(t_test) >= max(t_train)
