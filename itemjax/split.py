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
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse

from itemjax.errors import ConfigError, DataError

__all__ = ["Split", "holdout_mask", "make_split"]


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


def holdout_mask(users: np.ndarray, n_users: int, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``[E]``: which interactions each user holds out (see module docstring for n_held).

    Args:
      users: int ``[E]`` user of each interaction, sorted ascending (canonical order).
      n_users: number of users.
      frac: fraction held out per user.
      rng: source of the ``E`` uniform keys (exactly one ``rng.random(E)`` draw).
    """
    n_per_user = np.bincount(users, minlength=n_users)
    n_held = np.rint(frac * n_per_user).astype(np.int64)
    n_held = np.maximum(n_held, (n_per_user >= 2).astype(np.int64))
    n_held = np.minimum(n_held, np.maximum(n_per_user - 1, 0))
    keys = rng.random(users.size)
    order = np.lexsort((keys, users))  # by user, then by key
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


def make_split(raw, *, test_frac=0.2, valid_frac=0.1, seed=0) -> Split:
    """Split a :class:`itemjax.datasets.RawDataset` into train / valid / test.

    Uses the predefined test part when ``raw.test_users`` is set (``test_frac`` unused;
    test pairs also present in training are dropped),
    else a per-user random holdout of ``test_frac``; validation is drawn from the training
    part with ``valid_frac``. Deterministic in (interaction set, fractions, seed).

    Raises:
      ConfigError: fractions outside [0, 1).
      DataError: too few users/items/interactions for the requested split.
    """
    if not 0.0 < float(test_frac) < 1.0:
        raise ConfigError(f"test_frac must be in (0, 1), got {test_frac!r}")
    if not 0.0 <= float(valid_frac) < 1.0:
        raise ConfigError(f"valid_frac must be in [0, 1), got {valid_frac!r}")
    n_users, n_items = int(raw.n_users), int(raw.n_items)
    if n_users < 2 or n_items < 2:
        raise DataError(
            f"{raw.name}: {n_users} users and {n_items} items; a split needs at least 2 of each, give more data"
        )
    rng = np.random.default_rng(seed)
    users, items = _canonical_pairs(raw.users, raw.items, n_items)
    if raw.test_users is not None:
        test_users, test_items = _canonical_pairs(raw.test_users, raw.test_items, n_items)
        in_train = _contains(users * n_items + items, test_users * n_items + test_items)
        test_users, test_items = test_users[~in_train], test_items[~in_train]  # keep parts disjoint
        if test_users.size == 0:
            raise DataError(f"{raw.name}: the predefined test split is empty; give a test file with interactions")
    else:
        held = holdout_mask(users, n_users, test_frac, rng)
        if not held.any():
            raise DataError(
                f"{raw.name}: no user has 2 or more interactions, so nothing can be held out for testing; "
                "give more interactions per user"
            )
        test_users, test_items = users[held], items[held]
        users, items = users[~held], items[~held]
    valid_users = valid_items = np.zeros(0, dtype=np.int64)
    if valid_frac > 0:
        held = holdout_mask(users, n_users, valid_frac, rng)
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
    )
