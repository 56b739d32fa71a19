"""Train / validation / test splits of a RawDataset (host side, numpy + scipy.sparse).

Per-user random holdout, applied to the canonical interaction list (sorted by user,
then item, duplicates merged), so the split is a pure function of the interaction
*set*, the fractions and the seed: for a user with n interactions,

    n_held(n) = min(max(round(frac * n), 1 if n >= 2 else 0), n - 1)   (0 when n <= 1)

(``round`` = round half to even, as Python's) interactions are held out, chosen
uniformly by sorting i.i.d. ``U(0, 1)`` keys drawn from ``np.random.default_rng(seed)``
within each user. The test part is drawn first (``test_frac``) unless the dataset has a
predefined test split; validation is then carved the same way out of each user's
remaining training interactions (``valid_frac``, 0 disables it).

Splits that respect time (``method``, for data with timestamps):

* ``"temporal"``: the same ``n_held(n)`` per user, but the user's *latest* interactions
  (ties broken by the seeded keys) are held out: test first, then validation from the latest
  of what remains. No test interaction of a user precedes any of its training interactions.
* ``"time-cut"``: one global cut time ``cut_time``: interactions at or after it are the test
  part, the rest train (validation: each user's latest ``valid_frac`` before the cut, as in
  ``"temporal"``). Test interactions of users or items with no training interaction left are
  dropped (a model cannot rank them), and counted in :attr:`Split.dropped_test`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse

from itemjax.config import SPLIT_METHODS
from itemjax.errors import ConfigError, DataError

__all__ = ["SPLIT_METHODS", "Split", "holdout_mask", "make_split", "split_of"]


@dataclasses.dataclass(frozen=True)
class Split:
    """Disjoint train / valid / test interaction matrices over one id space.

    Attributes:
      name: dataset name.
      n_users, n_items: matrix shape.
      train, valid, test: ``[n_users, n_items]`` float32 CSR matrices of ones, canonical
        (sorted indices, no duplicates), pairwise disjoint; ``valid.nnz == 0`` when
        ``valid_frac == 0``.
      user_ids, item_ids: original ids, ``user_ids[u]`` for dense user u.
      n_duplicates: duplicate rows merged while loading.
      files: ``{path: sha256}`` of the files the data came from.
    """

    name: str
    n_users: int
    n_items: int
    train: scipy.sparse.csr_matrix
    valid: scipy.sparse.csr_matrix
    test: scipy.sparse.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    n_duplicates: int = 0
    files: dict = dataclasses.field(default_factory=dict)
    method: str = "random"
    dropped_test: int = 0

    def stats(self) -> dict:
        """Sizes: users, items, train/valid/test interactions, density, duplicates merged."""
        train, valid, test = int(self.train.nnz), int(self.valid.nnz), int(self.test.nnz)
        total = train + valid + test
        return {
            "name": self.name,
            "users": int(self.n_users),
            "items": int(self.n_items),
            "train": train,
            "valid": valid,
            "test": test,
            "interactions": total,
            "density": total / max(self.n_users * self.n_items, 1),
            "test_users": int(np.count_nonzero(np.diff(self.test.indptr))),
            "duplicates_merged": int(self.n_duplicates),
            **({"split": self.method, "dropped_test": int(self.dropped_test)} if self.method != "random" else {}),
        }

    def describe(self) -> str:
        """One printable line of :meth:`stats`."""
        s = self.stats()
        return (
            f"{s['name']}: {s['users']} users, {s['items']} items, {s['interactions']} interactions "
            f"(train {s['train']}, valid {s['valid']}, test {s['test']} over {s['test_users']} users), "
            f"density {100 * s['density']:.3f}%, {s['duplicates_merged']} duplicates merged"
        )


def _canonical_pairs(users: np.ndarray, items: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs sorted by user, then item (key = user * n_items + item)."""
    width = max(n_items, 1)
    keys = np.sort(np.asarray(users, dtype=np.int64) * width + np.asarray(items, dtype=np.int64))
    keys = keys[np.concatenate((np.ones(min(keys.size, 1), dtype=bool), keys[1:] != keys[:-1]))]
    return keys // width, keys % width


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean [len(keys)]: keys present in the ascending array ``sorted_keys``."""
    if sorted_keys.size == 0:
        return np.zeros(keys.size, dtype=bool)
    position = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[position] == keys


def holdout_mask(users: np.ndarray, n_users: int, frac: float, rng: np.random.Generator,
                 times: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``[E]``: which interactions each user holds out (see module docstring for n_held).

    Args:
      users: int ``[E]`` user of each interaction, sorted ascending (canonical order).
      n_users: number of users.
      frac: fraction held out per user.
      rng: source of the ``E`` uniform keys (exactly one ``rng.random(E)`` draw).
      times: optional ``[E]`` timestamps: hold out each user's latest interactions (the keys
        break ties) instead of uniformly chosen ones.
    """
    n_per_user = np.bincount(users, minlength=n_users)
    n_held = np.rint(frac * n_per_user).astype(np.int64)
    n_held = np.maximum(n_held, (n_per_user >= 2).astype(np.int64))
    n_held = np.minimum(n_held, np.maximum(n_per_user - 1, 0))
    keys = rng.random(users.size)
    if times is None:
        order = np.lexsort((keys, users))  # by user, then by key
    else:
        order = np.lexsort((keys, -np.asarray(times, np.float64), users))  # by user, latest first
    user_start = np.concatenate(([0], np.cumsum(n_per_user)[:-1]))
    sorted_users = users[order]
    rank_in_user = np.arange(users.size) - user_start[sorted_users]
    held = np.zeros(users.size, dtype=bool)
    held[order] = rank_in_user < n_held[sorted_users]
    return held


def _csr(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> scipy.sparse.csr_matrix:
    """CSR of ones from distinct pairs sorted by (user, item): canonical by construction."""
    indptr = np.concatenate(([0], np.cumsum(np.bincount(users, minlength=n_users))))
    matrix = scipy.sparse.csr_matrix(
        (np.ones(users.size, dtype=np.float32), items.astype(np.int32), indptr.astype(np.int64)),
        shape=(n_users, n_items),
    )
    matrix.has_canonical_format = True  # sorted and distinct: guaranteed by _canonical_pairs
    return matrix


def split_of(raw, config) -> Split:
    """:func:`make_split` with a run's options (``test_frac``, ``valid_frac``, ``seed``, ``split``,
    ``cut_date``: any object with these attributes, e.g. a TrainConfig)."""
    return make_split(raw, test_frac=config.test_frac, valid_frac=config.valid_frac, seed=config.seed,
                      method=config.split, cut_time=parse_time(config.cut_date) if config.cut_date else None)


def parse_time(value) -> float:
    """Seconds (UTC) of a ``--cut-date``: a number (UNIX seconds) or an ISO date / date-time."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        return float(np.datetime64(str(value), "s").astype(np.int64))
    except ValueError:
        raise ConfigError(f"--cut-date {value!r} is neither UNIX seconds nor an ISO date (YYYY-MM-DD[THH:MM:SS])") from None


def _timed_pairs(raw, n_items: int):
    """Canonical ``(users, items, times)``: distinct pairs sorted by (user, item), first row's time."""
    if raw.timestamps is None:
        raise DataError(f"{raw.name}: the data have no timestamp column, so a split that respects time is "
                        "impossible; give a file with user,item,rating,timestamp (or a header naming a "
                        "timestamp column), or use --split random")
    keys = np.asarray(raw.users, np.int64) * max(n_items, 1) + np.asarray(raw.items, np.int64)
    distinct, first = np.unique(keys, return_index=True)
    return distinct // max(n_items, 1), distinct % max(n_items, 1), np.asarray(raw.timestamps, np.float64)[first]


def make_split(raw, *, test_frac=0.2, valid_frac=0.1, seed=0, method: str = "random", cut_time=None) -> Split:
    """Split a :class:`itemjax.data.datasets.RawDataset` into train / valid / test.

    Uses the predefined test part when ``raw.test_users`` is set (``test_frac`` unused;
    test pairs also present in training are dropped),
    else a per-user random holdout of ``test_frac``; validation is drawn from the training
    part with ``valid_frac``. ``method="temporal"`` / ``"time-cut"`` (with ``cut_time``,
    seconds) respect the timestamps (module docstring). Deterministic in (interaction set,
    fractions, seed).

    Raises:
      ConfigError: fractions outside [0, 1), an unknown method, time-cut without a cut.
      DataError: too few users/items/interactions for the requested split; no timestamps for a
        split that needs them; a cut that leaves no training or no test interaction.
    """
    if not 0.0 < float(test_frac) < 1.0:
        raise ConfigError(f"test_frac must be in (0, 1), got {test_frac!r}")
    if not 0.0 <= float(valid_frac) < 1.0:
        raise ConfigError(f"valid_frac must be in [0, 1), got {valid_frac!r}")
    if method not in SPLIT_METHODS:
        raise ConfigError(f"unknown split {method!r}; choose one of {', '.join(SPLIT_METHODS)}")
    if method == "time-cut" and cut_time is None:
        raise ConfigError("--split time-cut needs --cut-date (a date or UNIX seconds)")
    n_users, n_items = int(raw.n_users), int(raw.n_items)
    if n_users < 2 or n_items < 2:
        raise DataError(
            f"{raw.name}: {n_users} users and {n_items} items; a split needs at least 2 of each, give more data"
        )
    rng = np.random.default_rng(seed)
    times = None
    dropped = 0
    if method != "random":
        if raw.test_users is not None:
            raise DataError(f"{raw.name} has a predefined test split; --split {method} is for data with timestamps "
                            "split here (ml-100k, ml-1m ratings, your own file)")
        users, items, times = _timed_pairs(raw, n_items)
    else:
        users, items = _canonical_pairs(raw.users, raw.items, n_items)
    if method == "time-cut":
        after = times >= float(cut_time)
        if after.all() or not after.any():
            raise DataError(f"{raw.name}: the cut at {cut_time:g} s leaves {'no training' if after.all() else 'no test'} "
                            f"interaction (times span {times.min():g} to {times.max():g}); choose a --cut-date inside it")
        test_users, test_items = users[after], items[after]
        users, items, times = users[~after], items[~after], times[~after]
        known = (np.bincount(users, minlength=n_users)[test_users] > 0) & \
            (np.bincount(items, minlength=n_items)[test_items] > 0)
        dropped = int((~known).sum())
        test_users, test_items = test_users[known], test_items[known]
    elif raw.test_users is not None:
        test_users, test_items = _canonical_pairs(raw.test_users, raw.test_items, n_items)
        in_train = _contains(users * n_items + items, test_users * n_items + test_items)
        test_users, test_items = test_users[~in_train], test_items[~in_train]  # keep parts disjoint
        if test_users.size == 0:
            raise DataError(f"{raw.name}: the predefined test split is empty; give a test file with interactions")
    else:
        held = holdout_mask(users, n_users, test_frac, rng, times)
        if not held.any():
            raise DataError(
                f"{raw.name}: no user has 2 or more interactions, so nothing can be held out for testing; "
                "give more interactions per user"
            )
        test_users, test_items = users[held], items[held]
        users, items = users[~held], items[~held]
        times = None if times is None else times[~held]
    valid_users = valid_items = np.zeros(0, dtype=np.int64)
    if valid_frac > 0:
        held = holdout_mask(users, n_users, valid_frac, rng, times)
        if not held.any():
            raise DataError(
                f"{raw.name}: no user has 2 or more training interactions, so nothing can be held out for "
                "validation; use --valid-frac 0 or give more interactions per user"
            )
        valid_users, valid_items = users[held], items[held]
        users, items = users[~held], items[~held]
    return Split(
        name=raw.name,
        n_users=n_users,
        n_items=n_items,
        train=_csr(users, items, n_users, n_items),
        valid=_csr(valid_users, valid_items, n_users, n_items),
        test=_csr(test_users, test_items, n_users, n_items),
        user_ids=raw.user_ids,
        item_ids=raw.item_ids,
        n_duplicates=int(raw.n_duplicates),
        files=dict(raw.files),
        method=method,
        dropped_test=dropped,
    )
