"""Top-K recommendations from a finished run directory, for a known user or a new one.

    recommender = load_run("runs/ml-100k-lightgcn-bpr-...")
    recommender.for_user(196, k=10)              # a user of the dataset, ORIGINAL id
    recommender.for_new_user([50, 172, 181])     # a new user from a list of ORIGINAL item ids
    # -> [(item_id, score, title or None), ...], best first

:func:`load_run` rebuilds what the run trained on from its ``config.json`` (dataset, split,
inductive hold-out, graph, model) and restores the ``best`` checkpoint's parameters (else
``latest``); the dataset statistics recorded in ``config.json`` must match the rebuilt split.

* **known user** (:meth:`Recommender.for_user`): its final embedding over the training graph;
  its training items (its edges in the graph) are excluded. A user that an inductive run held
  out of training has no edges: it is answered like a new user from its revealed items, over
  the evaluation graph (training edges + every held-out user's revealed edges) with the
  held-out users' ID embeddings zero, its revealed items excluded.
* **new user** (:meth:`Recommender.for_new_user`): the inductive path of
  :mod:`itemjax.evaluation.inductive` with no gradient step. One user node is appended (id ``n_users``)
  whose own ID embedding is zero and whose edges go to the given items; the model propagates
  over the training graph plus these edges (degrees, so ``A_hat``, renormalised), the new
  node's final embedding is scored against every item, and the given items are excluded.

Scores are ``<e_u, e_i>``; ties go to the lower dense item id (as in
:func:`itemjax.evaluation.evaluate.evaluate`). Titles come from :func:`itemjax.data.datasets.item_titles`
(MovieLens), else None.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterable

import numpy as np
import scipy.sparse

from itemjax.config import TrainConfig
from itemjax.errors import CheckpointError, ConfigError, DataError
from itemjax.runio import read_table

__all__ = ["ExportedRecommender", "Recommender", "load_export", "load_run", "top_k_items"]

#: the file that marks an export folder (``itemjax export``)
EXPORT_MANIFEST = "export.json"


def top_k_items(scores: np.ndarray, exclude: Iterable[int], k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores`` [n_items], ``exclude`` left out, best first.

    Ties go to the lower index (stable sort of ``-scores``). Fewer than ``k`` indices come
    back when fewer items remain.
    """
    scores = np.asarray(scores, dtype=np.float64).copy()
    exclude = np.asarray(list(exclude), dtype=np.int64)
    allowed = np.ones(scores.shape[0], dtype=bool)
    allowed[exclude] = False
    order = np.argsort(-scores, kind="stable")
    return order[allowed[order]][:k]


def _python(value):
    """numpy scalar -> Python int / str (original ids as the dataset spells them)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclasses.dataclass(eq=False)
class Recommender:
    """A trained model with the data it was trained on, ready to answer top-K requests.

    Attributes:
      config: the run's :class:`~itemjax.config.TrainConfig`.
      model: the Flax module (``n_users``, ``n_items`` of the split).
      params: restored parameters.
      split: the training split (for an inductive run: the held-out users' rows empty).
      inductive: the :class:`~itemjax.evaluation.inductive.InductiveSplit` (or :class:`~itemjax.evaluation.inductive.ColdItemSplit`) of an inductive run, else None.
      titles: dense item id -> title, or None.
      checkpoint: ``"best"`` or ``"latest"``: the slot the parameters came from.
      run_dir: the run directory.
    """

    config: TrainConfig
    model: object
    params: object
    split: object
    inductive: object
    titles: dict | None
    checkpoint: str
    run_dir: pathlib.Path
    features: tuple = (None, None)  # (user, item) side features of the run (itemjax.data.features)
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ ids

    @property
    def user_ids(self) -> np.ndarray:
        """Original user ids, ``user_ids[u]`` for dense user ``u`` (every user of the dataset)."""
        return self.split.user_ids

    @property
    def item_ids(self) -> np.ndarray:
        """Original item ids, ``item_ids[i]`` for dense item ``i``."""
        return self.split.item_ids

    def _lookup(self, kind: str):
        if kind not in self._cache:
            ids = self.user_ids if kind == "user" else self.item_ids
            self._cache[kind] = {str(_python(v)): dense for dense, v in enumerate(ids)}
        return self._cache[kind]

    def dense_user(self, user_id) -> int:
        """Dense index of an original user id (int or str). Raises DataError if unknown."""
        dense = self._lookup("user").get(str(user_id).strip())
        if dense is None:
            raise DataError(
                f"user id {user_id!r} is not in {self.split.name} ({self.split.n_users} users); list the valid ids "
                f"with `python experiments/recommend.py {self.run_dir} --list-users` (or Recommender.user_ids)"
            )
        return dense

    def dense_items(self, item_ids) -> np.ndarray:
        """Dense indices (int64, duplicates dropped, order kept) of original item ids. DataError if unknown."""
        lookup = self._lookup("item")
        dense = []
        for item_id in item_ids:
            index = lookup.get(str(item_id).strip())
            if index is None:
                raise DataError(
                    f"item id {item_id!r} is not in {self.split.name} ({self.split.n_items} items); list the valid "
                    f"ids with `python experiments/recommend.py {self.run_dir} --list-items` (or Recommender.item_ids)"
                )
            if index not in dense:
                dense.append(index)
        return np.asarray(dense, dtype=np.int64)

    # ------------------------------------------------------------------ embeddings

    def embeddings(self, which: str = "train"):
        """Cached final ``(user_emb [n_users, d], item_emb [n_items, d])`` float64 numpy arrays, the model applied to
        the ``"train"`` graph or, for an inductive run, the ``"inductive"`` one (held-out users linked to their
        known items); ``user_emb @ item_emb.T`` are the scores the evaluation ranks."""
        if which not in self._cache:
            from itemjax.evaluation.inductive import inductive_embeddings

            if which == "train":
                interactions, unseen = self.split.train, np.zeros(0, np.int64)
            else:
                interactions, unseen = self.inductive.graph_interactions(), self.inductive.holdout_users
            cold_items = getattr(self.inductive, "holdout_items", ())  # cold-start items: features only
            users, items = inductive_embeddings(self.model, self.params, interactions, unseen,
                                                backend=self.config.backend, features=self.features,
                                                unseen_items=cold_items)
            self._cache[which] = (np.asarray(users, np.float64), np.asarray(items, np.float64))
        return self._cache[which]

    def new_user_embedding(self, dense_items: np.ndarray):
        """``(e_new [d], item_emb [n_items, d])`` for a new user node linked to ``dense_items``.

        The model is applied to ``n_users + 1`` users: the training interactions plus one row
        with the given items; the new user's ID embedding row is zero (appended to the table).
        """
        import jax.numpy as jnp

        from itemjax.evaluation.inductive import inductive_embeddings

        n_users, n_items = self.split.n_users, self.split.n_items
        row = scipy.sparse.csr_matrix(
            (np.ones(len(dense_items), np.float32), (np.zeros(len(dense_items), np.int64), dense_items)),
            shape=(1, n_items))
        interactions = scipy.sparse.vstack([self.split.train, row], format="csr")
        ids = self.params["ids"]
        table = jnp.concatenate([jnp.asarray(ids["user_embedding"]), jnp.zeros((1, ids["user_embedding"].shape[1]),
                                                                                 ids["user_embedding"].dtype)])
        params = {**self.params, "ids": {**ids, "user_embedding": table}}
        model = self.model.clone(n_users=n_users + 1)
        users, items = inductive_embeddings(model, params, interactions, np.array([n_users]),
                                            backend=self.config.backend, features=self.features)
        return np.asarray(users[n_users], np.float64), np.asarray(items, np.float64)

    # ------------------------------------------------------------------ requests

    def _answer(self, user_vector, item_emb, exclude, k: int) -> list[tuple]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        scores = item_emb @ user_vector
        top = top_k_items(scores, exclude, int(k))
        titles = self.titles or {}
        return [(_python(self.item_ids[i]), float(scores[i]), titles.get(int(i))) for i in top]

    def for_user(self, user_id, k: int = 10) -> list[tuple]:
        """Top-``k`` ``(item_id, score, title or None)`` for a user of the dataset (original id).

        Training items are excluded; a user held out by an inductive run is embedded from its
        revealed items (which are excluded). Raises DataError for an unknown id.
        """
        user = self.dense_user(user_id)
        held_out_users = getattr(self.inductive, "holdout_users", np.zeros(0, np.int64))
        if user in set(held_out_users.tolist()):
            user_emb, item_emb = self.embeddings("inductive")
            known = self.inductive.revealed
        else:
            user_emb, item_emb = self.embeddings("train")
            known = self.split.train
        exclude = known.indices[known.indptr[user]:known.indptr[user + 1]]
        return self._answer(user_emb[user], item_emb, exclude, k)

    def for_new_user(self, item_ids, k: int = 10) -> list[tuple]:
        """Top-``k`` ``(item_id, score, title or None)`` for a new user who interacted with ``item_ids``.

        ``item_ids`` are original item ids (duplicates ignored); they are excluded from the answer.
        Raises DataError for an unknown id or an empty list.
        """
        item_ids = list(item_ids)
        if not item_ids:
            raise DataError("a new user needs at least one item id; pass the items it interacted with")
        dense = self.dense_items(item_ids)
        user_vector, item_emb = self.new_user_embedding(dense)
        return self._answer(user_vector, item_emb, dense, k)

    def describe(self) -> str:
        c = self.config
        return (f"{self.split.name}, {c.model}+{c.loss} ({c.protocol}), {self.checkpoint} checkpoint of "
                f"{self.run_dir}")


# ----------------------------------------------------------------------------- loading


def load_run(run_dir, *, data_dir=None, checkpoint: str | None = None) -> Recommender:
    """Rebuild a run's data and model from ``run_dir`` and restore its parameters; or, for a
    folder written by ``itemjax export``, read its files (:func:`load_export`, known users only).

    Args:
      run_dir: a directory written by ``experiments/train.py`` (config.json, checkpoints/).
      data_dir: data root, overriding the run's ``--data-dir`` (default: the run's, else
        ``$ITEMJAX_DATA``, else ``~/.cache/itemjax``).
      checkpoint: ``"best"`` or ``"latest"``; default the best checkpoint, else the latest.

    Raises:
      DataError: not a run directory, or the rebuilt data differ from what the run recorded.
      CheckpointError: no checkpoint, or one that does not fit the model.
    """
    import jax

    from itemjax.train.checkpoint import RunCheckpoints
    from itemjax.data.datasets import item_titles, load_dataset
    from itemjax.objective.sampling import make_train_data
    from itemjax.data.split import split_of
    from itemjax.evaluation.inductive import protocol_split
    from itemjax.train.run import node_features
    from itemjax.train.step import create_state, make_model
    from itemjax.graph.propagation import to_device
    from itemjax.graph.bipartite import build_graph

    run_dir = pathlib.Path(run_dir)
    if (run_dir / EXPORT_MANIFEST).is_file():  # an `itemjax export` folder: no data, no model needed
        return load_export(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise DataError(f"{run_dir} has no config.json; pass a run directory written by experiments/train.py --out")
    try:
        saved = json.loads(config_path.read_text())
        config = TrainConfig.from_dict(saved["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{config_path} is not a readable run configuration ({type(e).__name__}: {e}); "
                        "pass a run directory written by experiments/train.py") from None
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=str(data_dir))
    if checkpoint not in (None, "best", "latest"):
        raise ConfigError(f"checkpoint must be 'best' or 'latest', got {checkpoint!r}")
    if not (run_dir / "checkpoints").is_dir():
        raise CheckpointError(f"{run_dir} has no checkpoints/ directory; the run saved nothing yet (train it longer)")

    raw = load_dataset(config.dataset, data_dir=config.data_dir, min_rating=config.min_rating, kcore=config.kcore,
                       sep=config.sep, progress=False)
    split = split_of(raw, config)
    inductive, split = protocol_split(split, config)
    recorded = saved.get("dataset", {}).get("stats")
    if recorded is not None and json.loads(json.dumps(split.stats())) != recorded:
        raise DataError(
            f"the data rebuilt from {config_path} differ from what the run trained on (split statistics "
            f"{split.stats()} vs {recorded}); give the run's data files (--data-dir) unchanged"
        )

    features = node_features(config, raw)
    model = make_model(config, split.n_users, split.n_items, *(0 if f is None else f.n_features for f in features))
    graph = to_device(build_graph(split.train), config.backend, *features)
    state = create_state(config, model, graph, make_train_data(split.train), jax.random.PRNGKey(0))
    like = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    ckpts = RunCheckpoints(run_dir)
    try:
        slot = checkpoint or ("best" if ckpts.latest_step("best") is not None else "latest")
        restored, _ = ckpts.restore(slot, like)
    finally:
        ckpts.close()
    return Recommender(config=config, model=model, params=restored["params"], split=split, inductive=inductive,
                       titles=item_titles(raw, config.data_dir), checkpoint=slot, run_dir=run_dir, features=features)


@dataclasses.dataclass(eq=False)
class ExportedRecommender:
    """Top-K answers from an export folder (``itemjax export``, :func:`load_run` on its folder): known users only."""

    user_emb: np.ndarray
    item_emb: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    seen: scipy.sparse.csr_matrix
    manifest: dict
    root: pathlib.Path

    def dense_user(self, user_id) -> int:
        matches = np.flatnonzero(np.asarray([str(u) for u in self.user_ids]) == str(user_id).strip())
        if not matches.size:
            raise DataError(f"user id {user_id!r} is not in the export {self.root} ({len(self.user_ids)} users)")
        return int(matches[0])

    titles = None  # an export carries no titles

    def for_user(self, user_id, k: int = 10) -> list[tuple]:
        """Top-``k`` ``(item_id, score, None)`` of a known user (original id), its seen items excluded."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        user = self.dense_user(user_id)
        scores = self.item_emb.astype(np.float64) @ self.user_emb[user].astype(np.float64)
        exclude = self.seen.indices[self.seen.indptr[user]:self.seen.indptr[user + 1]]
        return [(_python(self.item_ids[i]), float(scores[i]), None) for i in top_k_items(scores, exclude, int(k))]

    def dense_items(self, item_ids):
        raise ConfigError(f"{self.root} is an export: it answers known users only; a new user needs the model, "
                          f"so pass the run directory {self.manifest.get('run')}")

    for_new_user = dense_items

    def describe(self) -> str:
        return f"{self.manifest.get('dataset')} export of {self.manifest.get('run')} in {self.root}"


def load_export(path) -> ExportedRecommender:
    """Read an export folder written by :func:`itemjax.serve.export.export_run` (no raw data, no model)."""
    root = pathlib.Path(path)
    if not (root / EXPORT_MANIFEST).is_file():
        raise DataError(f"{root} has no {EXPORT_MANIFEST}; pass a folder written by `itemjax export`")
    manifest = json.loads((root / EXPORT_MANIFEST).read_text())
    users, items = read_table(root / "users"), read_table(root / "items")
    return ExportedRecommender(
        user_emb=np.load(root / "user_embeddings.npy"), item_emb=np.load(root / "item_embeddings.npy"),
        user_ids=np.asarray(users["user_id"])[np.argsort(users["user"])],
        item_ids=np.asarray(items["item_id"])[np.argsort(items["item"])],
        seen=scipy.sparse.load_npz(root / "seen.npz").tocsr(), manifest=manifest, root=root)
