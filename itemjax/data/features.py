"""Side features of users and items (host side): which features each node has, with weights.

    --item-features genres          MovieLens genres (ml-100k ``u.item``, ml-1m ``movies.dat``)
    --user-features demographics    MovieLens age group, gender, occupation (``u.user`` / ``users.dat``)
    --item-features PATH            a file of ``id,feature[,value]`` lines (original ids; value 1 if absent)

A node's features become a row of a ``[n_nodes, n_features]`` matrix normalised to sum to 1
(so the model adds the weighted *mean* of its features' embeddings to the node's ID embedding,
:class:`itemjax.model.models.IdEmbeddings`); a node without features has an empty row. On the device
each side is a pair of padded arrays (:class:`NodeFeatures`): feature ids and weights
``[n_nodes, F]``, ``F`` the most features of any node, padding with weight 0.

The built-in MovieLens files are looked up in ``<data root>/<dataset>/``, or, for a user file
(e.g. ml-1m's ``user_movie_pairs.dat.gz``), in the folder that holds it.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import scipy.sparse as sp

from itemjax.errors import ConfigError, DataError

#: built-in feature sets: (kind, name) -> MovieLens file per dataset layout
BUILT_IN = {("item", "genres"): ("u.item", "movies.dat"), ("user", "demographics"): ("u.user", "users.dat")}

#: ml-1m's age groups (users.dat codes); ml-100k ages are binned the same way
AGE_GROUPS = (1, 18, 25, 35, 45, 50, 56)


@dataclasses.dataclass(frozen=True)
class NodeFeatures:
    """The features of one side (users or items), padded per node (numpy, host side).

    Attributes:
      ids: int32 ``[n_nodes, F]`` feature ids (padding: 0).
      weights: float32 ``[n_nodes, F]``, each row summing to 1 (0 for padding and for nodes
        without features).
      names: ``[n_features]`` feature names, ``names[f]`` for id ``f``.
    """

    ids: np.ndarray
    weights: np.ndarray
    names: tuple

    @property
    def n_features(self) -> int:
        return len(self.names)

    @classmethod
    def from_matrix(cls, matrix: sp.csr_matrix, names) -> "NodeFeatures":
        """From a ``[n_nodes, n_features]`` sparse matrix of non-negative weights (rows normalised here)."""
        matrix = sp.csr_matrix(matrix, dtype=np.float64)
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        if matrix.nnz and matrix.data.min() < 0:
            raise DataError("feature values must be >= 0 (they weight a mean)")
        counts = np.diff(matrix.indptr)
        width = max(int(counts.max(initial=0)), 1)
        ids = np.zeros((matrix.shape[0], width), np.int32)
        weights = np.zeros((matrix.shape[0], width), np.float32)
        rows = np.repeat(np.arange(matrix.shape[0]), counts)
        slots = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], counts)
        totals = np.asarray(matrix.sum(axis=1)).ravel()
        ids[rows, slots] = matrix.indices
        weights[rows, slots] = matrix.data / totals[rows]
        return cls(ids=ids, weights=weights, names=tuple(names))

    def pad_rows(self, n: int) -> "NodeFeatures":
        """The same features for ``n >= n_nodes`` rows: the extra nodes have none."""
        extra = n - self.ids.shape[0]
        return dataclasses.replace(self, ids=np.pad(self.ids, ((0, extra), (0, 0))),
                                   weights=np.pad(self.weights, ((0, extra), (0, 0))))


def _movielens_file(raw, data_dir, filenames) -> pathlib.Path:
    from itemjax.data.datasets import data_root

    folders = [data_root(data_dir) / raw.name] + [pathlib.Path(p).parent for p in raw.files]
    for folder in folders:
        for name in filenames:
            if (folder / name).is_file():
                return folder / name
    raise DataError(f"{raw.name}: no MovieLens {' or '.join(filenames)} in {', '.join(map(str, folders))}; the "
                    "built-in features are for ml-100k and ml-1m: give a feature file (id,feature[,value]) instead")


def _age_group(age: int) -> int:
    return max(g for g in AGE_GROUPS if age >= g) if age >= AGE_GROUPS[0] else AGE_GROUPS[0]


def _read_movielens(path: pathlib.Path, kind: str) -> list[tuple[str, str, float]]:
    """``(original id, feature, value)`` rows of a MovieLens item or user file."""
    text = path.read_bytes().decode("latin-1")
    rows = []
    if path.name == "u.item":  # id|title|date|video date|url|19 genre flags
        genres = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                  "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                  "War", "Western")
        for line in text.splitlines():
            fields = line.split("|")
            if len(fields) == 24:
                rows += [(fields[0], f"genre={g}", 1.0) for g, flag in zip(genres, fields[5:]) if flag.strip() == "1"]
    elif path.name == "movies.dat":  # id::title::Genre|Genre
        for line in text.splitlines():
            fields = line.split("::")
            if len(fields) == 3:
                rows += [(fields[0], f"genre={g}", 1.0) for g in fields[2].strip().split("|") if g]
    elif path.name == "u.user":  # id|age|gender|occupation|zip
        for line in text.splitlines():
            fields = line.split("|")
            if len(fields) == 5:
                rows += [(fields[0], f"age={_age_group(int(fields[1]))}", 1.0), (fields[0], f"gender={fields[2]}", 1.0),
                         (fields[0], f"occupation={fields[3]}", 1.0)]
    else:  # users.dat: id::gender::age group::occupation code::zip
        for line in text.splitlines():
            fields = line.split("::")
            if len(fields) == 5:
                rows += [(fields[0], f"age={fields[2]}", 1.0), (fields[0], f"gender={fields[1]}", 1.0),
                         (fields[0], f"occupation={fields[3]}", 1.0)]
    return rows


def _read_feature_file(path: pathlib.Path) -> list[tuple[str, str, float]]:
    """``id,feature[,value]`` lines (comma, tab or ``::``; an optional header naming ``feature``)."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        sep = "::" if "::" in line else ("\t" if "\t" in line else ",")
        fields = [f.strip() for f in line.split(sep)]
        if number == 1 and len(fields) >= 2 and fields[1].lower() in ("feature", "features", "tag", "genre"):
            continue  # header
        if len(fields) not in (2, 3) or not fields[0] or not fields[1]:
            raise DataError(f"{path}:{number}: expected id,feature[,value], got {line.strip()!r}")
        try:
            value = float(fields[2]) if len(fields) == 3 else 1.0
        except ValueError:
            raise DataError(f"{path}:{number}: feature value {fields[2]!r} is not a number") from None
        rows.append((fields[0], fields[1], value))
    if not rows:
        raise DataError(f"{path}: no feature lines; expected id,feature[,value]")
    return rows


def load_features(spec: str | None, kind: str, raw, data_dir=None) -> NodeFeatures | None:
    """The ``kind`` (``"user"`` or ``"item"``) features named by ``spec`` for ``raw``'s nodes, or None.

    ``spec``: a built-in name (``genres`` for items, ``demographics`` for users) or a file path.
    Rows of ids that are not in the dataset are ignored; nodes without rows have no features.
    """
    if not spec:
        return None
    if (kind, spec) in BUILT_IN:
        files = BUILT_IN[(kind, spec)]
        rows = _read_movielens(_movielens_file(raw, data_dir, files), kind)
    elif pathlib.Path(spec).expanduser().is_file():
        rows = _read_feature_file(pathlib.Path(spec).expanduser())
    else:
        built = ", ".join(name for k, name in BUILT_IN if k == kind)
        raise ConfigError(f"--{kind}-features {spec!r} is neither a built-in set ({built}) nor an existing file "
                          "of id,feature[,value] lines")
    ids = raw.user_ids if kind == "user" else raw.item_ids
    dense = {str(v.item() if hasattr(v, "item") else v): n for n, v in enumerate(ids)}
    names = sorted({feature for _, feature, _ in rows})
    column = {name: j for j, name in enumerate(names)}
    kept = [(dense[i], column[f], v) for i, f, v in rows if i in dense]
    if not kept:
        raise DataError(f"--{kind}-features {spec}: no row names a {kind} id of {raw.name}; check the ids")
    r, c, v = (np.array(x) for x in zip(*kept))
    return NodeFeatures.from_matrix(sp.csr_matrix((v, (r, c)), shape=(len(ids), len(names))), names)
