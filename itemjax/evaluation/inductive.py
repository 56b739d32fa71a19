"""The inductive protocols: users never seen in training, and cold-start items (host side + one forward).

Cold-start items (``--protocol inductive-items``) are at :class:`ColdItemSplit`; what follows is
the user-centric protocol (``--protocol inductive``).

Split (:func:`make_inductive_split`, numpy only). From a transductive
:class:`~itemjax.data.split.Split`, a seeded fraction ``holdout`` of the users is held out of
training entirely: every one of their train / valid / test interactions leaves the training
split. Ids are KEPT, not re-indexed: a held-out user is still node ``u`` of the graph, with no
edge, so every shape (``n_users``, the ID tables, the padded graph's node count) is the same as
in the transductive run. Such an isolated node has a zero row in ``A_hat`` and is never drawn by
the samplers (they draw training interactions / users with training items), so it takes no
part in training. For each held-out user with ``n`` interactions (all of them: train, valid and
test of the original split)::

    n_target(n)   = min(max(round((1 - reveal) * n), 1), n - 1)      (round half to even)
    n_revealed(n) = n - n_target(n)                                  (so 1 <= n_revealed <= n - 1)

interactions, drawn uniformly (:func:`itemjax.data.split.holdout_mask`), are the targets and the
others are revealed. Only users with ``n >= 2`` can be held out (the others stay in training);
``n_holdout = min(max(round(holdout * n_users), 1), n_eligible)`` users are drawn uniformly
among those that can. Randomness: ``np.random.default_rng([seed, 4])`` (a stream of its own,
independent of :func:`~itemjax.data.split.make_split`'s ``default_rng(seed)``): first the held-out
users, then the reveal keys.

Evaluation (:func:`evaluate_inductive`). The augmented graph is the training graph plus the
revealed edges (``A_hat`` renormalised with the new degrees). The trained parameters are used
as they are, with NO gradient step; **an unseen user's own ID embedding is zero** (its row of
``user_embedding`` is set to 0). With LightGCN, ``e_u = 1/(K+1) sum_k (A_hat^k x^0)_u`` with
``x^0_u = 0``, so the held-out user's embedding comes only from the item embeddings propagated
from its revealed items (``K >= 1`` needed; ``K = 0`` gives zero scores). Full ranking over
every item, the revealed items excluded, metrics averaged over the held-out users
(:func:`itemjax.evaluation.evaluate.evaluate`). The popularity baseline (:func:`evaluate_popularity`)
ranks items by their training degree through the same evaluator, revealed items excluded.

Models that concatenate their ego layer (NGCF, GAT, SAGE: ``e = [e^0 || ...]``) learn to lean
on the ID block, which is zero for an unseen user; training with ``--user-dropout p`` (each step
zeroes each training user's ID row with probability ``p``, :func:`itemjax.objective.objectives._forward`)
teaches the layers to score users from their items alone. On ml-100k NGCF + BPR went from
NDCG@20 0.2623 on the held-out users (below popularity, 0.3318) to 0.3835 with ``p = 0.2``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse

from itemjax.errors import ConfigError, DataError
from itemjax.data.split import Split, holdout_mask

__all__ = [
    "InductiveSplit",
    "make_inductive_split",
    "augmented_graph",
    "zero_id_rows",
    "zero_user_embeddings",
    "ColdItemSplit",
    "make_cold_item_split",
    "evaluate_cold_items",
    "inductive_embeddings",
    "evaluate_inductive",
    "evaluate_popularity",
    "inductive_report",
    "report_line",
    "protocol_split",
    "cold_item_report",
    "feature_popularity_scores",
    "content_embeddings",
]

#: Second entropy word of the protocol's generator, ``default_rng([seed, _STREAM])``.
_STREAM = 4


@dataclasses.dataclass(frozen=True)
class InductiveSplit:
    """Training split without the held-out users, and their revealed / target interactions.

    Attributes:
      train_split: the original :class:`~itemjax.data.split.Split` with the held-out users' rows of
        ``train``, ``valid`` and ``test`` emptied (same ``n_users``, ``n_items``, ids).
      holdout_users: int64 ``[H]`` dense ids of the held-out users, ascending.
      revealed: ``[n_users, n_items]`` float32 canonical CSR of ones; only the rows of
        ``holdout_users`` are non-empty (each has >= 1 entry): the edges added at evaluation.
      targets: same layout, disjoint from ``revealed``; ``revealed + targets`` is each held-out
        user's full interaction set (each row has >= 1 target).
      holdout, reveal, seed: the options that produced the split.
    """

    train_split: Split
    holdout_users: np.ndarray
    revealed: scipy.sparse.csr_matrix
    targets: scipy.sparse.csr_matrix
    holdout: float
    reveal: float
    seed: int

    target_name = "held-out users' targets"

    def graph_interactions(self) -> scipy.sparse.csr_matrix:
        """``[n_users, n_items]`` interactions of the augmented graph: training edges + revealed."""
        return _canonical(self.train_split.train + self.revealed)

    def stats(self) -> dict:
        return {
            "holdout_users": int(self.holdout_users.size),
            "revealed": int(self.revealed.nnz),
            "targets": int(self.targets.nnz),
            "holdout": float(self.holdout),
            "reveal": float(self.reveal),
        }

    def describe(self) -> str:
        s = self.stats()
        return (
            f"inductive: {s['holdout_users']} held-out users (out of training), {s['revealed']} revealed "
            f"interactions as edges at evaluation, {s['targets']} targets"
        )


def _canonical(matrix) -> scipy.sparse.csr_matrix:
    """Float32 CSR of ones, sorted indices, no duplicates (the layout of :class:`Split`)."""
    matrix = scipy.sparse.csr_matrix(matrix, dtype=np.float32, copy=True)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.data[:] = 1.0
    return matrix


def _pairs_csr(users, items, shape) -> scipy.sparse.csr_matrix:
    ones = np.ones(len(users), dtype=np.float32)
    return _canonical(scipy.sparse.csr_matrix((ones, (users, items)), shape=shape))


def _without_rows(matrix, drop_row: np.ndarray) -> scipy.sparse.csr_matrix:
    """``matrix`` with the rows where ``drop_row`` [n_rows] is True emptied (shape kept)."""
    coo = matrix.tocoo()
    keep = ~drop_row[coo.row]
    return _pairs_csr(coo.row[keep], coo.col[keep], matrix.shape)


def make_inductive_split(split: Split, *, holdout: float = 0.2, reveal: float = 0.5, seed: int = 0) -> InductiveSplit:
    """Hold a seeded fraction of users out of ``split`` (see the module docstring for the counts).

    Args:
      split: a transductive split; its train, valid and test parts are disjoint.
      holdout: fraction of all users held out, in (0, 1).
      reveal: fraction of a held-out user's interactions revealed as edges, in (0, 1).
      seed: seed of ``np.random.default_rng([seed, 4])``.

    Raises:
      ConfigError: a fraction outside (0, 1).
      DataError: no user has 2 interactions, or no user would be left for training.
    """
    if not 0.0 < float(holdout) < 1.0:
        raise ConfigError(f"--holdout-users must be in (0, 1), got {holdout!r}")
    if not 0.0 < float(reveal) < 1.0:
        raise ConfigError(f"--reveal must be in (0, 1), got {reveal!r}")
    n_users, n_items = int(split.n_users), int(split.n_items)
    everything = _canonical(split.train + split.valid + split.test)  # the parts are disjoint
    n_per_user = np.diff(everything.indptr)
    eligible = np.flatnonzero(n_per_user >= 2)
    if eligible.size == 0:
        raise DataError(
            f"{split.name}: no user has 2 or more interactions, so none can be held out for the inductive "
            "protocol; use --protocol transductive or give more interactions per user"
        )
    n_holdout = min(max(int(round(holdout * n_users)), 1), eligible.size)
    rng = np.random.default_rng([int(seed), _STREAM])
    holdout_users = np.sort(rng.choice(eligible, size=n_holdout, replace=False)).astype(np.int64)
    is_holdout = np.zeros(n_users, dtype=bool)
    is_holdout[holdout_users] = True
    if not np.any(np.diff(split.train.indptr)[~is_holdout] > 0):
        raise DataError(
            f"{split.name}: holding out {n_holdout} of {n_users} users leaves no training interaction; "
            "lower --holdout-users or give more users"
        )

    coo = everything.tocoo()  # canonical: sorted by user, then item
    mine = is_holdout[coo.row]
    users, items = coo.row[mine].astype(np.int64), coo.col[mine].astype(np.int64)
    is_target = holdout_mask(users, n_users, 1.0 - float(reveal), rng)
    shape = (n_users, n_items)
    train_split = dataclasses.replace(
        split,
        train=_without_rows(split.train, is_holdout),
        valid=_without_rows(split.valid, is_holdout),
        test=_without_rows(split.test, is_holdout),
    )
    return InductiveSplit(
        train_split=train_split,
        holdout_users=holdout_users,
        revealed=_pairs_csr(users[~is_target], items[~is_target], shape),
        targets=_pairs_csr(users[is_target], items[is_target], shape),
        holdout=float(holdout),
        reveal=float(reveal),
        seed=int(seed),
    )


# ----------------------------------------------------------------------------- evaluation


def augmented_graph(inductive: InductiveSplit):
    """Host :class:`~itemjax.graph.bipartite.Graph` of the training edges plus the revealed edges."""
    from itemjax.graph.bipartite import build_graph

    return build_graph(inductive.graph_interactions())


def zero_id_rows(params, users=(), items=()):
    """``params`` with the rows ``users`` of ``params["ids"]["user_embedding"]`` and ``items`` of
    ``params["ids"]["item_embedding"]`` set to 0.

    The convention for nodes unseen in training (new users, cold-start items): their own ID
    embedding is zero, so every representation they get comes from message passing and side
    features. Returns a new tree (``params`` is not modified); other leaves are shared.
    """
    import jax.numpy as jnp

    ids = dict(params["ids"])
    for name, rows in (("user_embedding", users), ("item_embedding", items)):
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size:
            ids[name] = jnp.asarray(ids[name]).at[rows].set(0.0)
    return {**params, "ids": ids}


def zero_user_embeddings(params, users):
    """:func:`zero_id_rows` of the users only (new users of the inductive protocol)."""
    return zero_id_rows(params, users=users)


def inductive_embeddings(model, params, interactions, unseen_users, *, backend: str = "auto", features=(None, None),
                         unseen_items=()):
    """Final ``(user_emb [n_users, d], item_emb [n_items, d])`` over the graph of ``interactions``.

    No gradient step: ``model`` (``model.n_users`` = rows of ``interactions``) is applied in
    inference mode with ``params`` whose ``unseen_users`` rows of the user ID table are zero
    (and ``unseen_items`` rows of the item ID table, :func:`zero_id_rows`). The graph is :func:`~itemjax.graph.bipartite.build_graph` of
    ``interactions`` ``[n_users, n_items]`` on the ``backend`` of
    :func:`~itemjax.graph.propagation.to_device`, with the nodes' side ``features`` (user, item
    :class:`~itemjax.data.features.NodeFeatures` or None; rows beyond theirs have none).
    """
    from itemjax.graph.bipartite import build_graph
    from itemjax.graph.propagation import to_device
    from itemjax.model.models import embed

    if interactions.shape != (model.n_users, model.n_items):
        raise DataError(
            f"the graph's interactions have shape {interactions.shape} but the model has "
            f"(n_users, n_items) = ({model.n_users}, {model.n_items}); build both from the same split"
        )
    graph = to_device(build_graph(interactions), backend, *features)
    return embed(model.apply, zero_id_rows(params, unseen_users, unseen_items), graph)


def evaluate_inductive(model, params, inductive: InductiveSplit, *, backend: str = "auto", ks=(20,),
                       chunk_size: int = 1024, features=(None, None)) -> dict:
    """Full-ranking metrics of the held-out users on their targets (revealed items excluded).

    Embeddings from :func:`inductive_embeddings` over the augmented graph
    (:meth:`InductiveSplit.graph_interactions`) with the held-out users' ID embeddings zero.
    Returns :func:`itemjax.evaluation.evaluate.evaluate`'s dict (``"recall@k"``, ..., ``"n_users"``).
    """
    from itemjax.evaluation.evaluate import evaluate

    user_emb, item_emb = inductive_embeddings(
        model, params, inductive.graph_interactions(), inductive.holdout_users, backend=backend, features=features)
    return evaluate(user_emb, item_emb, inductive.revealed, inductive.targets, ks=ks,
                    users=inductive.holdout_users, chunk_size=chunk_size)


def evaluate_popularity(inductive: InductiveSplit, *, ks=(20,), chunk_size: int = 1024) -> dict:
    """The most-popular-items baseline on the held-out users, through the same evaluator.

    Items are ranked by their degree in the training split (``train_split.train``; ties to the
    lower item id), each held-out user's revealed items excluded.
    """
    from itemjax.evaluation.evaluate import evaluate, popularity_embeddings

    user_emb, item_emb = popularity_embeddings(inductive.train_split.train)
    return evaluate(user_emb, item_emb, inductive.revealed, inductive.targets, ks=ks,
                    users=inductive.holdout_users, chunk_size=chunk_size)


def inductive_report(model, params, inductive: InductiveSplit, transductive_test: dict, *,
                     backend: str = "auto", ks=(20,), chunk_size: int = 1024, features=(None, None)) -> dict:
    """The metric part of an inductive run's summary.json (flat dict of floats / ints).

    ``"recall@k"``, ``"ndcg@k"``, ... and ``"n_users"``: the held-out users
    (:func:`evaluate_inductive`); ``"popularity/<metric>"``: the popularity baseline on the same
    users (:func:`evaluate_popularity`); ``"transductive/<metric>"``: ``transductive_test``, the
    test metrics of the training users; ``"inductive/holdout_users"``, ``"inductive/revealed"``,
    ``"inductive/targets"``, ``"inductive/holdout"``, ``"inductive/reveal"``: the split.
    """
    if isinstance(inductive, ColdItemSplit):
        return cold_item_report(model, params, inductive, transductive_test, backend=backend, ks=ks,
                                chunk_size=chunk_size, features=features)
    held_out = evaluate_inductive(model, params, inductive, backend=backend, ks=ks, chunk_size=chunk_size,
                                  features=features)
    popular = evaluate_popularity(inductive, ks=ks, chunk_size=chunk_size)
    return {
        **held_out,
        **{f"popularity/{name}": value for name, value in popular.items()},
        **{f"transductive/{name}": value for name, value in transductive_test.items()},
        **{f"inductive/{name}": value for name, value in inductive.stats().items()},
    }


def report_line(report: dict) -> str:
    """One printable line of :func:`inductive_report`: held-out nodes' and the baselines' metrics."""
    cutoffs = [name for name in report if "@" in name and "/" not in name and name.split("@")[0] in ("recall", "ndcg")]

    def line(prefix):
        return ", ".join(f"{name}={report[prefix + name]:.4f}" for name in cutoffs)

    if "cold/holdout_items" in report:
        return (f"cold-start items ({int(report['cold/holdout_items'])} items, {report['n_users']} users): "
                f"{line('')}; feature popularity: {line('popularity/')}; features only: {line('features_only/')}")
    return f"inductive ({report['n_users']} held-out users): {line('')}; popularity baseline: {line('popularity/')}"


# ----------------------------------------------------------------------------- cold-start items

#: Second entropy word of the cold-start items' generator, ``default_rng([seed, _ITEM_STREAM])``.
_ITEM_STREAM = 5


@dataclasses.dataclass(frozen=True)
class ColdItemSplit:
    """Training split without the held-out (cold-start) items, and their interactions.

    ``n_holdout = min(max(round(holdout * n_items), 1), n_eligible)`` items are drawn uniformly
    (``default_rng([seed, 5])``) among the items with at least one interaction. Every interaction
    with them (train, valid and test of the original split) leaves the split and becomes a target;
    ids are kept, so a held-out item is an isolated node of the training graph.

    Evaluation (:func:`evaluate_cold_items`) ranks, for each user with at least one target, the
    held-out items only (the usual cold-start protocol: new items are recommended among new
    items), each embedded by the trained model from its side features with its ID embedding
    zero (:func:`zero_id_rows`; ``--item-dropout`` trains for this).

    Attributes:
      train_split: the original split with the held-out items' columns emptied.
      holdout_items: int64 ``[H]`` dense ids of the held-out items, ascending.
      targets: ``[n_users, n_items]`` float32 canonical CSR of ones: every interaction with a
        held-out item.
      holdout, seed: the options that produced the split.
    """

    train_split: Split
    holdout_items: np.ndarray
    targets: scipy.sparse.csr_matrix
    holdout: float
    seed: int

    target_name = "cold-start items' interactions"

    @property
    def users(self) -> np.ndarray:
        """int64 ``[U]``: the users with at least one interaction with a held-out item."""
        return np.flatnonzero(np.diff(self.targets.indptr) > 0).astype(np.int64)

    def candidate_targets(self) -> scipy.sparse.csr_matrix:
        """``[n_users, H]``: the targets over the held-out items only (column h is ``holdout_items[h]``)."""
        return _canonical(self.targets[:, self.holdout_items])

    def stats(self) -> dict:
        return {"holdout_items": int(self.holdout_items.size), "targets": int(self.targets.nnz),
                "users": int(self.users.size), "holdout": float(self.holdout)}

    def describe(self) -> str:
        s = self.stats()
        return (f"cold-start items: {s['holdout_items']} items held out of training, ranked for {s['users']} users "
                f"against their {s['targets']} interactions")


def make_cold_item_split(split: Split, *, holdout: float = 0.1, seed: int = 0) -> ColdItemSplit:
    """Hold a seeded fraction of the items out of ``split`` (see :class:`ColdItemSplit`).

    Raises:
      ConfigError: ``holdout`` outside (0, 1).
      DataError: no item has an interaction, or no training interaction would be left.
    """
    if not 0.0 < float(holdout) < 1.0:
        raise ConfigError(f"--holdout-items must be in (0, 1), got {holdout!r}")
    n_users, n_items = int(split.n_users), int(split.n_items)
    everything = _canonical(split.train + split.valid + split.test)
    eligible = np.flatnonzero(np.diff(everything.tocsc().indptr) > 0)
    if eligible.size == 0:
        raise DataError(f"{split.name}: no item has an interaction, so none can be held out as a cold-start item")
    n_holdout = min(max(int(round(holdout * n_items)), 1), eligible.size)
    rng = np.random.default_rng([int(seed), _ITEM_STREAM])
    holdout_items = np.sort(rng.choice(eligible, size=n_holdout, replace=False)).astype(np.int64)
    is_holdout = np.zeros(n_items, dtype=bool)
    is_holdout[holdout_items] = True

    def without_holdout(matrix):
        coo = matrix.tocoo()
        keep = ~is_holdout[coo.col]
        return _pairs_csr(coo.row[keep], coo.col[keep], (n_users, n_items))

    train = without_holdout(split.train)
    if train.nnz == 0:
        raise DataError(f"{split.name}: holding out {n_holdout} of {n_items} items leaves no training interaction; "
                        "lower --holdout-items")
    coo = everything.tocoo()
    mine = is_holdout[coo.col]
    return ColdItemSplit(
        train_split=dataclasses.replace(split, train=train, valid=without_holdout(split.valid),
                                        test=without_holdout(split.test)),
        holdout_items=holdout_items,
        targets=_pairs_csr(coo.row[mine], coo.col[mine], (n_users, n_items)),
        holdout=float(holdout),
        seed=int(seed),
    )


def feature_matrix(features, n_nodes: int) -> scipy.sparse.csr_matrix:
    """``[n_nodes, n_features]`` float64 CSR of a :class:`~itemjax.data.features.NodeFeatures`'
    weights (rows sum to 1; nodes beyond its rows, and nodes without features, are empty)."""
    ids, weights = np.asarray(features.ids), np.asarray(features.weights, dtype=np.float64)
    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    matrix = scipy.sparse.csr_matrix((weights.ravel(), (rows, ids.ravel())),
                                     shape=(ids.shape[0], features.n_features))
    matrix.eliminate_zeros()
    matrix.resize((n_nodes, features.n_features))
    return matrix


def feature_popularity_scores(train, items_features: scipy.sparse.csr_matrix) -> np.ndarray:
    """float64 ``[n_items]``: each item's weighted mean over its features of the features' popularity.

    A cold-start item has no training degree, so the popularity baseline ranks it by its
    features instead: ``pop(f) = sum_j w_jf deg(j) / sum_j w_jf`` over the items ``j`` with
    training interactions (``deg`` = training degree, ``w`` = feature weights), and
    ``score(i) = sum_f w_if pop(f)``.
    """
    degree = np.asarray(train.sum(axis=0)).ravel().astype(np.float64)
    warm = (degree > 0).astype(np.float64)
    mass = items_features.T @ warm
    pop = np.divide(items_features.T @ degree, mass, out=np.zeros_like(mass), where=mass > 0)
    return items_features @ pop


def content_embeddings(train, items_features: scipy.sparse.csr_matrix):
    """The features-only baseline: ``(user_emb [n_users, F], item_emb [n_items, F])`` float32.

    ``s(u, i) = cos(p_u, f_i)``: ``p_u = sum_{j in train(u)} f_j`` is the user's profile, the
    sum of its training items' feature rows; ``f_i`` the item's feature row. No training, no
    interaction of a held-out item used.
    """
    def unit_rows(matrix):
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return (scipy.sparse.diags(inv) @ matrix).toarray().astype(np.float32)

    profiles = scipy.sparse.csr_matrix(train, dtype=np.float64) @ items_features
    return unit_rows(profiles), unit_rows(items_features)


def evaluate_cold_items(user_emb, item_emb, cold: ColdItemSplit, *, ks=(20,), chunk_size: int = 1024) -> dict:
    """Metrics of ranking the held-out items for :attr:`ColdItemSplit.users` (candidates: the
    held-out items only; nothing excluded, none of them was seen in training), through
    :func:`itemjax.evaluation.evaluate.evaluate` with ``item_emb`` restricted to their rows."""
    from itemjax.evaluation.evaluate import evaluate

    item_emb = np.asarray(item_emb)[cold.holdout_items]
    targets = cold.candidate_targets()
    nothing = scipy.sparse.csr_matrix(targets.shape, dtype=np.float32)
    if max(ks) > cold.holdout_items.size:
        raise ConfigError(f"the cold-start items are ranked among themselves, but only {cold.holdout_items.size} "
                          f"items are held out, fewer than the cut-off {max(ks)}; raise --holdout-items or lower --ks")
    return evaluate(user_emb, item_emb, nothing, targets, ks=ks, users=cold.users, chunk_size=chunk_size)


def cold_item_report(model, params, cold: ColdItemSplit, transductive_test: dict, *, backend: str = "auto",
                     ks=(20,), chunk_size: int = 1024, features=(None, None)) -> dict:
    """The metric part of a ``--protocol inductive-items`` run's summary.json.

    ``"recall@k"``, ``"ndcg@k"``, ...: the trained model on the cold-start items (ID embeddings
    of the held-out items zero, graph of the training interactions); ``"popularity/<metric>"``:
    :func:`feature_popularity_scores`; ``"features_only/<metric>"``: :func:`content_embeddings`;
    ``"transductive/<metric>"``: the usual test metrics over the remaining items;
    ``"cold/holdout_items"``, ``"cold/targets"``, ``"cold/users"``, ``"cold/holdout"``: the split.
    """
    if features[1] is None:
        raise ConfigError("--protocol inductive-items needs --item-features: a cold-start item has nothing else")
    train = cold.train_split.train
    user_emb, item_emb = inductive_embeddings(model, params, train, (), backend=backend, features=features,
                                              unseen_items=cold.holdout_items)
    items_features = feature_matrix(features[1], train.shape[1])
    popular = feature_popularity_scores(train, items_features)
    baselines = {
        "popularity": (np.ones((train.shape[0], 1), np.float32), popular.astype(np.float32)[:, None]),
        "features_only": content_embeddings(train, items_features),
    }
    report = evaluate_cold_items(user_emb, item_emb, cold, ks=ks, chunk_size=chunk_size)
    for name, (users, items) in baselines.items():
        report.update({f"{name}/{m}": v for m, v in
                       evaluate_cold_items(users, items, cold, ks=ks, chunk_size=chunk_size).items()})
    return {
        **report,
        **{f"transductive/{name}": value for name, value in transductive_test.items()},
        **{f"cold/{name}": value for name, value in cold.stats().items()},
    }


def protocol_split(split: Split, config):
    """``(held_out, train_split)`` of ``config.protocol``: ``(None, split)`` for transductive, else
    the :class:`InductiveSplit` (``--protocol inductive``) or :class:`ColdItemSplit`
    (``inductive-items``) made from ``split`` with the run's options and seed, and its training part."""
    if config.protocol == "inductive":
        held_out = make_inductive_split(split, holdout=config.holdout_users, reveal=config.reveal, seed=config.seed)
    elif config.protocol == "inductive-items":
        held_out = make_cold_item_split(split, holdout=config.holdout_items, seed=config.seed)
        if max(config.ks) > held_out.holdout_items.size:  # say so before training, not after it
            raise ConfigError(f"the cold-start items are ranked among themselves, but only "
                              f"{held_out.holdout_items.size} items are held out, fewer than the cut-off "
                              f"{max(config.ks)}; raise --holdout-items or lower --ks")
    else:
        return None, split
    return held_out, held_out.train_split
