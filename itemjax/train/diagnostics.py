"""Training diagnostics (``--diagnostics``): what the optimiser sees, beside each evaluation.

With ``--diagnostics`` every metrics.jsonl record of a run also holds, measured on one extra
draw of the step's batch (``fold_in(key, step)`` of a stream apart from training, so training
itself is unchanged) at the parameters of that evaluation:

* ``grad/<term>``: the global L2 norm of the gradient of each term of the objective over every
  parameter. ITEM with ``--item-metric ndcg+recall``: ``grad/ndcg`` (of ``1 - NDCG~``),
  ``grad/recall`` (of ``1 - Recall~``), ``grad/l2``; other losses: ``grad/rank`` and ``grad/l2``;
  ``grad/total`` the whole objective's.
* ``grad/top_share``: the share of the item ID table's squared gradient norm in its top singular
  direction, ``sigma_1^2 / sum_k sigma_k^2`` of ``dL/dE_items`` ``[n_items, d]``: near 1 the step
  moves every item along one direction (the popularity one, on the plateau).
* ``emb/user_ego``, ``emb/item_ego``: mean row norm of the ID tables; ``emb/user``, ``emb/item``:
  of the final (propagated) embeddings; ``emb/item_top_share``: the top singular direction's share
  of the final item table's squared norm (1: every user ranks items by one score).
* list-wise losses: ``pairs/active``, the share of (positive, negative) pairs of the sampled lists
  whose sigmoid is not saturated (``|s_n - s_p| / tau < 4.6``, i.e. ``sigma`` in (0.01, 0.99): the
  pairs that carry gradient), ``pairs/violated`` (``s_n > s_p``), ``pairs/violated_active`` (the
  share of the violated pairs whose sigmoid is unsaturated: the mistakes the loss can still see) and
  ``scores/std`` (spread of the list scores, against which ``tau`` acts).
* ``popularity_overlap@20``: mean over (up to 1024) validation users of
  ``|top20(model) & top20(popularity)| / 20``, training items excluded from both lists: 1 on the
  popularity plateau, where the model ranks items by their training degree alone.

The maths and what these measured on ml-1m are in docs/tuning.md ("Why ITEM stalled and declined").
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from itemjax.config import TrainConfig
from itemjax.model.models import id_embeddings
from itemjax.objective.objectives import make_objective, tau_schedule, user_lists

#: fold_in stream of the diagnostics' batches (apart from training's step keys)
DIAGNOSTICS_STREAM = 0xD1A6
#: |s_n - s_p| / tau below which a pair's sigmoid is in (0.01, 0.99)
ACTIVE_LIMIT = 4.6
#: validation users whose top 20 is compared with popularity's
OVERLAP_USERS = 1024


def _terms(config: TrainConfig) -> dict:
    """``{name: config}``: one configuration per term, whose objective's ``rank_loss`` is that term
    alone (L2 off); ``"total"`` is the run's own configuration."""
    plain = dataclasses.replace(config, l2=0.0)
    if config.loss == "item" and config.item_metric == "ndcg+recall":
        terms = {"ndcg": dataclasses.replace(plain, item_metric="ndcg"),
                 "recall": dataclasses.replace(plain, item_metric="recall")}
    else:
        terms = {"rank": plain}
    return {**terms, "total": config}


def _top_share(matrix: jax.Array) -> jax.Array:
    """``sigma_1^2 / sum sigma_k^2`` of a ``[n, d]`` matrix, from the eigenvalues of its ``d x d`` Gram."""
    gram = jnp.matmul(matrix.T, matrix, precision=jax.lax.Precision.HIGHEST)
    eig = jnp.linalg.eigvalsh(gram)
    return eig[-1] / jnp.maximum(jnp.sum(eig), 1e-30)


def _mean_row_norm(x: jax.Array) -> jax.Array:
    return jnp.mean(jnp.linalg.norm(x.astype(jnp.float32), axis=-1))


class Diagnostics:
    """Builds the jitted measurement once per run; ``__call__(state, batch, key, user_emb, item_emb)``
    returns the record's extra fields (floats)."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int, train, valid):
        self.config = config
        self.objectives = {name: make_objective(c, steps_per_epoch) for name, c in _terms(config).items()}
        self.listwise = config.loss in ("item", "neuralndcg", "softmax")
        self.tau = tau_schedule(config, steps_per_epoch)
        self._measure = None  # jitted on first call, over the state's (static) apply_fn
        # popularity's top 20 per validation user, training items excluded (host, once)
        users = np.flatnonzero(np.diff(valid.indptr) > 0)[:OVERLAP_USERS]
        self.users = users
        degree = np.asarray(train.sum(axis=0)).ravel()
        self.train_rows = train[users].tocsr()
        self.popular_top = np.concatenate([
            _top20(np.broadcast_to(degree.astype(np.float64), (rows.stop - rows.start, degree.size)).copy(),
                   self.train_rows[rows])
            for rows in _chunks(len(users))]) if len(users) else np.zeros((0, 20), np.int64)

    def _measure_impl(self, apply_fn, params, batch, key, step):
        out = {}
        grads = {}
        for name, objective in self.objectives.items():
            grads[name] = jax.grad(lambda p, o=objective: o(p, apply_fn, batch, key, step)[0])(params)
            out[f"grad/{name}"] = optax.tree.norm(grads[name])
        rank_total = jax.tree.map(lambda *g: sum(g), *[grads[n] for n in grads if n != "total"])
        out["grad/l2"] = optax.tree.norm(jax.tree.map(jnp.subtract, grads["total"], rank_total))
        out["grad/top_share"] = _top_share(id_embeddings(grads["total"])[1])
        ego_u, ego_i = id_embeddings(params)
        out["emb/user_ego"], out["emb/item_ego"] = _mean_row_norm(ego_u), _mean_row_norm(ego_i)
        if self.listwise:
            c = self.config
            lists = user_lists(params, apply_fn, batch, key, 0.0, n_users=c.batch_size, n_pos=c.positives,
                               n_neg=c.negatives, shared_negatives=c.shared_negatives,
                               users_by_degree=c.user_sampling == "degree")
            pos, neg = lists.scores[:, :c.positives], lists.scores[:, c.positives:]
            diff = neg[:, None, :] - pos[:, :, None]  # [B, P, N]
            where = lists.pos_where[:, :, None] & lists.neg_where[:, None, :]
            n = jnp.maximum(where.sum(), 1)
            tau = self.tau(step) if callable(self.tau) else self.tau
            out["pairs/active"] = jnp.sum(where & (jnp.abs(diff) / tau < ACTIVE_LIMIT)) / n
            violated = where & (diff > 0)
            out["pairs/violated"] = jnp.sum(violated) / n
            out["pairs/violated_active"] = (jnp.sum(violated & (jnp.abs(diff) / tau < ACTIVE_LIMIT))
                                            / jnp.maximum(violated.sum(), 1))
            list_where = lists.where
            mean = jnp.sum(jnp.where(list_where, lists.scores, 0.0)) / jnp.maximum(list_where.sum(), 1)
            out["scores/std"] = jnp.sqrt(jnp.sum(jnp.where(list_where, (lists.scores - mean) ** 2, 0.0))
                                         / jnp.maximum(list_where.sum(), 1))
        return out

    def __call__(self, state, batch, key, user_emb, item_emb) -> dict:
        step_key = jax.random.fold_in(jax.random.fold_in(key, DIAGNOSTICS_STREAM), state.step)
        if self._measure is None:
            self._measure = jax.jit(functools.partial(self._measure_impl, state.apply_fn))
        out = self._measure(state.params, batch, step_key, state.step)
        user_emb, item_emb = jnp.asarray(user_emb), jnp.asarray(item_emb)
        out["emb/user"], out["emb/item"] = _mean_row_norm(user_emb), _mean_row_norm(item_emb)
        out["emb/item_top_share"] = _top_share(item_emb.astype(jnp.float32))
        record = {k: float(v) for k, v in jax.device_get(out).items()}
        if len(self.users):
            model_top = np.concatenate([
                _top20(np.asarray(jnp.matmul(user_emb[self.users[rows]], item_emb.T), np.float64), self.train_rows[rows])
                for rows in _chunks(len(self.users))])
            overlap = [np.intersect1d(a, b).size for a, b in zip(model_top, self.popular_top)]
            record["popularity_overlap@20"] = float(np.mean(overlap) / 20)
        return record


def _chunks(n: int, size: int = 128):
    """Slices of ``range(n)`` of ``size`` rows: the host holds ``size x n_items`` float64 scores at a time."""
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


def _top20(scores: np.ndarray, exclude) -> np.ndarray:
    """Per row, the 20 highest-scored columns after setting ``exclude``'s nonzeros to -inf (host)."""
    scores = scores.copy()
    rows, cols = exclude.nonzero()
    scores[rows, cols] = -np.inf
    k = min(20, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]
