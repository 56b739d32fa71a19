"""The jitted train_step with every objective: ITEM's list against a numpy reference, and
every loss/sampler combination lowering its loss on a small random problem."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from itemjax.objective import sampling
from itemjax.config import TrainConfig
from itemjax.graph.bipartite import build_graph
from itemjax.graph.propagation import to_device
from itemjax.train.step import Batch, create_state, make_model, train_step


def small_problem(n_users=40, n_items=60, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.15
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    train = sp.csr_matrix(dense.astype(np.float32))
    hard = np.full((n_users, 5), -1, np.int32)
    for u in range(n_users):
        free = np.flatnonzero(~dense[u])[:5]
        hard[u, : len(free)] = free
    return train, hard


CASES = {
    "bpr": dict(loss="bpr"),
    "bce": dict(loss="bce"),
    "item-ndcg": dict(loss="item", item_metric="ndcg"),
    # lists of 24 entries: the default tau_k = 30 (chosen for lists of ~290) would flatten the k=20 step
    "item-recall": dict(loss="item", item_metric="recall", tau_k=1.0),
    "item-ndcg+recall": dict(loss="item", item_metric="ndcg+recall", tau_k=1.0),
    "item-shared": dict(loss="item", shared_negatives=True),
    "item-mixed-curriculum": dict(loss="item", neg_sampler="mixed", curriculum_epochs=2),
    "bpr-ppr": dict(loss="bpr", neg_sampler="ppr"),
    "neuralndcg": dict(loss="neuralndcg"),
    "neuralndcg-k-shared": dict(loss="neuralndcg", neuralndcg_k=5, sinkhorn_iters=10, shared_negatives=True),
    "softmax": dict(loss="softmax"),
    "softmax-logq-mixed": dict(loss="softmax", logq_correction=True, neg_sampler="mixed"),
    "softmax-logq-shared": dict(loss="softmax", logq_correction=True, shared_negatives=True),
    "bpr-mixgcf": dict(loss="bpr", neg_sampler="mixgcf", mixgcf_candidates=8),
    "bpr-sgl": dict(loss="bpr", ssl="sgl-ed"),
    "item-sgl": dict(loss="item", ssl="sgl-ed"),
}


#: cases that start slower: MixGCF's negative mixes the positive in, so its loss sits at log 2 for ~40 steps
STEPS = {"bpr-mixgcf": 120}


@pytest.mark.parametrize("case", list(CASES))
def test_each_objective_lowers_its_loss(case):
    train, hard = small_problem()
    config = TrainConfig(model="lightgcn", dim=16, layers=2, batch_size=32, positives=8, negatives=16,
                         lr=0.05, **CASES[case]).resolve()
    data = sampling.make_train_data(train, hard if config.neg_sampler in ("ppr", "mixed") else None)
    batch = Batch(graph=to_device(build_graph(train), "segment"), data=data)
    model = make_model(config, *train.shape)
    state = create_state(config, model, batch.graph, data, jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    losses = []
    n_steps = STEPS.get(case, 40)
    for _ in range(n_steps):
        state, metrics = train_step(state, batch, key)
        losses.append(float(metrics["rank_loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert int(state.step) == n_steps


def ref_item_ndcg(pos_scores, pos_where, neg_scores, neg_where, tau, neg_weight=1.0):
    """1 - smooth NDCG of one user, float64 loops (docs/design.md); negatives' sigmoids count neg_weight times."""
    items = [(s, 1) for s, w in zip(pos_scores, pos_where) if w] + [(s, 0) for s, w in zip(neg_scores, neg_where) if w]
    n_pos = sum(lab for _, lab in items)
    dcg = 0.0
    for i, (s_i, lab) in enumerate(items):
        if not lab:
            continue
        rank = 1.0 + sum((1.0 if lab_j else neg_weight) / (1 + np.exp(-(s_j - s_i) / tau))
                         for j, (s_j, lab_j) in enumerate(items) if j != i)
        dcg += 1 / np.log2(1 + rank)
    idcg = sum(1 / np.log2(1 + i) for i in range(1, n_pos + 1))
    return 1 - dcg / idcg


@pytest.mark.parametrize("shared,catalogue", [(False, False), (True, False), (False, True), (True, True)])
def test_item_objective_matches_reference(shared, catalogue):
    """Re-draw the step's users/positives/negatives with the same keys and recompute the loss.

    ``catalogue``: each negative counts ``(|I| - deg_u) / (valid negatives of u)`` times."""
    from itemjax.objective.objectives import item_objective

    train, _ = small_problem()
    data = sampling.make_train_data(train)
    graph = to_device(build_graph(train), "segment")
    config = TrainConfig(model="mf", dim=8, loss="item").resolve()
    model = make_model(config, *train.shape)
    params = model.init(jax.random.PRNGKey(0), graph)["params"]
    key = jax.random.PRNGKey(7)
    n_users, n_pos, n_neg, tau = 6, 4, 10, 0.3
    loss, _ = item_objective(params, model.apply, Batch(graph=graph, data=data), key, 0, n_users=n_users,
                             n_pos=n_pos, n_neg=n_neg, metric="ndcg", tau=tau, k=20, l2=0.0, hard_share=0.0,
                             shared_negatives=shared, catalogue_rank=catalogue)
    k_fwd, k_users, k_pos, k_neg, k_owner = jax.random.split(key, 5)
    users = np.asarray(sampling.sample_users(k_users, data, n_users))
    pos, pos_where = map(np.asarray, sampling.sample_positives(k_pos, data, jnp.asarray(users), n_pos))
    P = np.asarray(params["ids"]["user_embedding"], np.float64)
    Q = np.asarray(params["ids"]["item_embedding"], np.float64)
    dense = train.toarray() > 0
    if shared:
        owners = users[np.asarray(jax.random.randint(k_owner, (n_neg,), 0, n_users))]
        neg = np.asarray(sampling.negatives(k_neg, data, jnp.asarray(owners), 1, 0.0))[:, 0]
        negs = np.broadcast_to(neg, (n_users, n_neg))
        neg_where = ~dense[users[:, None], negs]
    else:
        negs = np.asarray(sampling.negatives(k_neg, data, jnp.asarray(users), n_neg, 0.0))
        neg_where = np.ones(negs.shape, bool)
    assert not dense[users[:, None], negs][neg_where].any()
    degree = dense[users].sum(1)
    weight = (train.shape[1] - degree) / neg_where.sum(1) if catalogue else np.ones(n_users)
    assert not catalogue or np.all(weight > 3)  # far from the plain list rank
    per_user = [ref_item_ndcg(Q[pos[b]] @ P[users[b]], pos_where[b], Q[negs[b]] @ P[users[b]], neg_where[b], tau,
                              weight[b]) for b in range(n_users)]
    np.testing.assert_allclose(float(loss), np.mean(per_user), rtol=2e-5)


@pytest.mark.parametrize("rate", [0.0, 0.5])
@pytest.mark.parametrize("side", ["user", "item"])
def test_id_dropout_zeroes_whole_id_rows(rate, side):
    """MF's output is its ID tables: dropped users' (items') rows are exactly 0, the rest unchanged
    and unscaled, the other side untouched."""
    from itemjax.objective.objectives import _forward

    train, _ = small_problem(n_users=400, n_items=400)
    graph = to_device(build_graph(train), "segment")
    model = make_model(TrainConfig(model="mf", dim=8).resolve(), *train.shape)
    params = model.init(jax.random.PRNGKey(0), graph)["params"]
    batch = Batch(graph=graph, data=sampling.make_train_data(train))
    rates = (rate, 0.0) if side == "user" else (0.0, rate)
    users, items = map(np.asarray, _forward(params, model.apply, batch, jax.random.PRNGKey(3), rates))
    dropped_side, other_side = (users, items) if side == "user" else (items, users)
    other = "item" if side == "user" else "user"
    table = np.asarray(params["ids"][f"{side}_embedding"])
    dropped = np.all(dropped_side == 0, axis=1)
    np.testing.assert_array_equal(dropped_side[~dropped], table[~dropped])
    np.testing.assert_array_equal(other_side, np.asarray(params["ids"][f"{other}_embedding"]))
    assert abs(dropped.mean() - rate) < 0.08  # 400 Bernoulli draws: std 0.025


# ----------------------------------------------------------------------------------------------
# NeuralNDCG and sampled softmax over the ITEM lists
# ----------------------------------------------------------------------------------------------


def ref_sampler_probabilities(dense, hard, users, share):
    """q_b(n) of one draw of sampling.negatives for each user b, float64 loops: hard share over
    the valid PPR candidates, the rest uniform over the user's non-training items."""
    n_items = dense.shape[1]
    q = np.zeros((len(users), n_items))
    for b, u in enumerate(users):
        free = [i for i in range(n_items) if not dense[u, i]]
        candidates = [i for i in hard[u] if i >= 0] if hard is not None else []
        for i in free:
            q[b, i] = (1.0 - share) / len(free) if candidates else 1.0 / len(free)
        for i in candidates:
            q[b, i] += share / len(candidates)
    return q


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_negative_log_counts_match_the_sampler(share):
    """log(N Q(n)) against a loop reference, and Q against the frequencies of 40,000 draws."""
    from itemjax.objective.objectives import negative_log_counts

    train, hard = small_problem()
    hard[3] = -1  # a user without PPR candidates: its hard slots are uniform
    hard[5, 2:] = -1  # and one with only two
    data = sampling.make_train_data(train, hard)
    dense = train.toarray() > 0
    users = np.array([0, 3, 5, 5, 11])
    all_items = jnp.broadcast_to(jnp.arange(train.shape[1], dtype=jnp.int32), (len(users), train.shape[1]))
    want = ref_sampler_probabilities(dense, hard, users, share)
    np.testing.assert_allclose(want.sum(1), 1.0, rtol=1e-12)
    for shared in (False, True):
        log_counts = negative_log_counts(data, jnp.asarray(users), all_items, share, shared_negatives=shared)
        q = np.exp(np.asarray(log_counts, np.float64)) / train.shape[1]  # N = every item here
        expected = np.broadcast_to(want.mean(0), q.shape) if shared else want
        support = expected > 0
        np.testing.assert_allclose(q[support], expected[support], rtol=1e-5)
    n_draws = 40_000
    key = jax.random.PRNGKey(3)
    for b, u in enumerate(users[:3]):
        draws = np.asarray(sampling.negatives(jax.random.fold_in(key, b), data, jnp.full((1,), u), n_draws, share))
        freq = np.bincount(draws.ravel(), minlength=train.shape[1]) / n_draws
        np.testing.assert_allclose(freq, want[b], atol=5 * np.sqrt(want[b].max() / n_draws))
    owners = users[np.asarray(jax.random.randint(key, (n_draws,), 0, len(users)))]  # shared: one draw per owner
    draws = np.asarray(sampling.negatives(jax.random.fold_in(key, 99), data, jnp.asarray(owners), 1, share))
    freq = np.bincount(draws.ravel(), minlength=train.shape[1]) / n_draws
    np.testing.assert_allclose(freq, want.mean(0), atol=5 * np.sqrt(want.mean(0).max() / n_draws))


@pytest.mark.parametrize("shared", [False, True])
def test_listwise_objectives_score_the_item_lists(shared):
    """The NeuralNDCG and softmax objectives apply their loss to the lists ITEM draws with the same
    key (user_lists), plus the same L2; softmax's logQ term against a float64 reference."""
    from itemjax.objective.listwise_losses import neural_ndcg_loss
    from itemjax.objective.objectives import item_objective, neuralndcg_objective, softmax_objective, user_lists

    train, hard = small_problem()
    data = sampling.make_train_data(train, hard)
    graph = to_device(build_graph(train), "segment")
    model = make_model(TrainConfig(model="mf", dim=8).resolve(), *train.shape)
    params = model.init(jax.random.PRNGKey(0), graph)["params"]
    batch = Batch(graph=graph, data=data)
    key, share, temperature = jax.random.PRNGKey(4), 0.5, 0.7
    sizes = dict(n_users=6, n_pos=4, n_neg=10, shared_negatives=shared, hard_share=share)
    lists = user_lists(params, model.apply, batch, key, share, n_users=6, n_pos=4, n_neg=10, shared_negatives=shared)
    scores, labels, where = (np.asarray(x, np.float64) for x in (lists.scores, lists.labels, lists.where))
    where = where.astype(bool)
    users, negs = np.asarray(lists.users), np.asarray(lists.neg_ids)

    loss, aux = neuralndcg_objective(params, model.apply, batch, key, 0, l2=0.0, temperature=temperature,
                                     sinkhorn_iters=20, k=5, **sizes)
    np.testing.assert_allclose(loss, neural_ndcg_loss(lists.scores, lists.labels, where=lists.where,
                                                      temperature=temperature, sinkhorn_iters=20, k=5), rtol=1e-6)
    with_l2, _ = neuralndcg_objective(params, model.apply, batch, key, 0, l2=0.5, temperature=temperature,
                                      sinkhorn_iters=20, k=5, **sizes)
    item_plain, _ = item_objective(params, model.apply, batch, key, 0, l2=0.0, metric="ndcg", tau=0.3, k=20, **sizes)
    item_l2, _ = item_objective(params, model.apply, batch, key, 0, l2=0.5, metric="ndcg", tau=0.3, k=20, **sizes)
    np.testing.assert_allclose(with_l2 - loss, item_l2 - item_plain, rtol=1e-5)  # the same L2 term
    assert float(with_l2 - loss) > 1e-4

    dense = train.toarray() > 0
    q = ref_sampler_probabilities(dense, hard, users, share)
    if shared:
        q = np.broadcast_to(q.mean(0), q.shape)
    for logq in (False, True):
        got, _ = softmax_objective(params, model.apply, batch, key, 0, l2=0.0, temperature=temperature,
                                   logq_correction=logq, **sizes)
        per_user = []
        for b in range(6):
            correction = np.log(10 * q[b, negs[b]]) if logq else np.zeros(10)
            neg_logits = [scores[b, 4 + n] / temperature - correction[n] for n in range(10) if where[b, 4 + n]]
            pos_losses = [np.logaddexp.reduce([scores[b, p] / temperature] + neg_logits) - scores[b, p] / temperature
                          for p in range(4) if where[b, p]]
            per_user.append(np.mean(pos_losses))
        np.testing.assert_allclose(float(got), np.mean(per_user), rtol=1e-5)


def test_listwise_losses_count_users_per_step_and_check_their_options():
    from itemjax.errors import ConfigError
    from itemjax.objective.objectives import steps_per_epoch

    train, _ = small_problem()
    data = sampling.make_train_data(train)
    for loss in ("neuralndcg", "softmax"):
        config = TrainConfig(loss=loss, batch_size=16).resolve()
        assert (config.lr, config.l2, config.user_sampling) == (1e-3, 1e-4, "uniform")
        assert steps_per_epoch(config, data) == 3  # ceil(40 active users / 16), not ceil(n_train / 16)
        assert TrainConfig(loss=loss).resolve().batch_size == 256
    for bad, match in ((dict(loss="neuralndcg", neuralndcg_temperature=0.0), "neuralndcg-temperature"),
                       (dict(loss="neuralndcg", sinkhorn_iters=-1), "sinkhorn-iters"),
                       (dict(loss="neuralndcg", neuralndcg_k=0), "neuralndcg-k"),
                       (dict(loss="softmax", softmax_temperature=-1.0), "softmax-temperature"),
                       (dict(loss="bpr", logq_correction=True), "logq-correction")):
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad).resolve()


def _item_objective_before(params, apply_fn, batch, key, step, *, n_users, n_pos, n_neg, metric, tau, k, l2,
                           hard_share, shared_negatives, slope=0.0, positive_pairs="smooth", users_by_degree=False,
                           tau_k=1.0, catalogue_rank=False, id_dropout=(0.0, 0.0), margin=0.0, calibration=0.0,
                           tau_by_positives=0.0, ssl=None):
    """The ITEM objective's former formula: the lists' item rows gathered, item_loss on the
    concatenated [positives | negatives] list with query=arange(P), the L2 term on gathered rows.
    A per-user temperature ``tau (P / P_u) ** a`` is one ``tau`` on scores divided by ``(P / P_u) ** a``
    (exact without the tail and calibration terms)."""
    from itemjax.model.models import id_embeddings
    from itemjax.objective.losses import l2_penalty
    from itemjax.objective.objectives import user_lists
    from itemjax.objective.ranking_losses import item_loss

    lists = user_lists(params, apply_fn, batch, key, hard_share, n_users=n_users, n_pos=n_pos, n_neg=n_neg,
                       shared_negatives=shared_negatives, users_by_degree=users_by_degree, dense_scoring=False)
    negative_weight = 1.0
    if catalogue_rank:
        data = batch.data
        degree = (data.indptr[lists.users + 1] - data.indptr[lists.users]).astype(jnp.float32)
        negative_weight = (jnp.maximum(data.n_items - degree, 0.0)
                           / jnp.maximum(lists.neg_where.sum(-1).astype(jnp.float32), 1.0))
    scores = lists.scores
    if tau_by_positives:
        n_valid = jnp.maximum(lists.pos_where.sum(-1), 1).astype(jnp.float32)
        scores = scores / ((n_pos / n_valid) ** tau_by_positives)[:, None]
    loss = item_loss(scores, lists.labels, where=lists.where, metric=metric, tau=tau, k=k, tau_k=tau_k,
                     slope=slope, positive_pairs=positive_pairs, margin=margin, calibration=calibration,
                     negative_weight=negative_weight, query=jnp.arange(n_pos, dtype=jnp.int32))
    ego_u, ego_i = id_embeddings(params)
    reg = l2_penalty(ego_u[lists.users], ego_i[lists.pos] * lists.pos_where[..., None], ego_i[lists.neg_ids],
                     batch_size=n_users)
    return loss + l2 * reg, {"rank_loss": loss}


ITEM_FORMULA_CASES = {
    "defaults": dict(),
    "shared-catalogue": dict(shared_negatives=True, rank_estimate="catalogue", item_metric="ndcg"),
    "exact-tail-calibration": dict(positive_pairs="exact", rank_slope=0.2, rank_margin=0.1, calibration=0.5,
                                   recall_ks=(2, 5)),
    "smooth-recall-ppr": dict(positive_pairs="smooth", item_metric="recall", tau_k=1.0, neg_sampler="mixed"),
    "tau-by-positives": dict(tau_by_positives=1.5, recall_ks=(2, 5)),
}


@pytest.mark.parametrize("scoring", ["dense", "gather"])
@pytest.mark.parametrize("case", list(ITEM_FORMULA_CASES))
def test_item_objective_equals_its_former_formula(case, scoring, monkeypatch):
    """Value and gradient of today's ITEM objective (P x P / P x N blocks, dense scores on small
    catalogues, L2 from row counts) against the former formula, with padded positives (a user with
    fewer training items than P), masked shared negatives and every option that changes the loss."""
    import functools

    from itemjax.objective import objectives

    if scoring == "gather":  # the size rule picks the dense scores at 60 items; force the gathers
        monkeypatch.setattr(objectives, "DENSE_SCORING_RATIO", 0)
    train, hard = small_problem()
    assert np.diff(train.indptr).min() < 8  # some lists have padded positives
    config = TrainConfig(model="lightgcn", dim=8, layers=2, loss="item", batch_size=12, positives=8, negatives=16,
                         l2=0.05, **ITEM_FORMULA_CASES[case]).resolve()
    data = sampling.make_train_data(train, hard if config.neg_sampler == "mixed" else None)
    batch = Batch(graph=to_device(build_graph(train), "segment"), data=data)
    state = create_state(config, make_model(config, *train.shape), batch.graph, data, jax.random.PRNGKey(0))
    new = state.objective
    assert new.func is objectives.item_objective
    old = functools.partial(_item_objective_before, **new.keywords)
    key = jax.random.PRNGKey(3)
    results = []
    for fn in (old, new):
        value_and_grad = jax.jit(jax.value_and_grad(lambda p, fn=fn: fn(p, state.apply_fn, batch, key, 0)[0]))
        results.append(value_and_grad(state.params))
    (want, want_grads), (got, got_grads) = results
    np.testing.assert_allclose(got, want, rtol=2e-6)
    for path, g in jax.tree_util.tree_leaves_with_path(got_grads):
        w = dict(jax.tree_util.tree_leaves_with_path(want_grads))[path]
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max(), err_msg=str(path))
        assert np.abs(w).max() > 1e-4


def test_list_l2_from_row_counts_equals_gathered_rows_float64(x64):
    """The lists' L2 term from per-row counts against l2_penalty on gathered rows: repeated users
    and items, padded positives (not counted), negatives that repeat a positive."""
    from itemjax.model.models import id_embeddings
    from itemjax.objective.losses import l2_penalty
    from itemjax.objective.objectives import UserLists, _list_l2_penalty

    rng = np.random.default_rng(5)
    params = {"ids": {"user_embedding": jnp.asarray(rng.normal(size=(9, 4))),
                      "item_embedding": jnp.asarray(rng.normal(size=(13, 4)))}}
    users = jnp.asarray([0, 3, 3, 8, 1], jnp.int32)
    pos = jnp.asarray(rng.integers(0, 13, (5, 3)), jnp.int32)
    pos_where = jnp.asarray(rng.random((5, 3)) < 0.6)
    neg = jnp.asarray(rng.integers(0, 13, (5, 6)), jnp.int32).at[2, 0].set(pos[2, 0])
    lists = UserLists(users, None, None, None, pos, pos_where, neg, jnp.ones(neg.shape, bool))

    def gathered(p):
        ego_u, ego_i = id_embeddings(p)
        return l2_penalty(ego_u[users], ego_i[pos] * pos_where[..., None], ego_i[neg], batch_size=5)

    want, want_grad = jax.value_and_grad(gathered)(params)
    got, got_grad = jax.jit(jax.value_and_grad(lambda p: _list_l2_penalty(p, lists, 5)))(params)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    for g, w in zip(jax.tree_util.tree_leaves(got_grad), jax.tree_util.tree_leaves(want_grad)):
        np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-15)
    assert not np.all(np.asarray(pos_where)) and np.abs(want_grad["ids"]["item_embedding"]).max() > 0


@pytest.mark.parametrize("shared", [False, True])
def test_user_lists_dense_and_gathered_scores_agree(shared):
    from itemjax.objective.objectives import DENSE_SCORING_RATIO, user_lists

    train, _ = small_problem()
    data = sampling.make_train_data(train)
    graph = to_device(build_graph(train), "segment")
    model = make_model(TrainConfig(model="lightgcn", dim=8, layers=2).resolve(), *train.shape)
    params = model.init(jax.random.PRNGKey(0), graph)["params"]
    batch, key = Batch(graph=graph, data=data), jax.random.PRNGKey(6)
    sizes = dict(n_users=10, n_pos=5, n_neg=12, shared_negatives=shared)
    assert train.shape[1] <= DENSE_SCORING_RATIO * 17  # the default picks the dense scores here
    default, dense, gathered = (user_lists(params, model.apply, batch, key, 0.0, dense_scoring=d, **sizes)
                                for d in (None, True, False))
    for a, b in ((default, dense), (dense, gathered)):
        for name in ("users", "labels", "where", "pos", "pos_where", "neg_ids", "neg_where"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    np.testing.assert_allclose(dense.scores, gathered.scores, rtol=1e-5, atol=1e-6)
    assert np.array_equal(default.scores, dense.scores)
