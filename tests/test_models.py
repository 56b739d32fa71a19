"""Tests for itemjax.model.models: every architecture against a float64 numpy loop reference.

The tiny graph has 4 users and 5 items; user 3 and item 2 have no interactions. The
references read the parameters out of the initialised variables (re-drawn with a larger
scale so that LeakyReLU / ReLU see both signs) and loop over nodes and neighbours.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse

from itemjax.config import MODEL_NAMES, TrainConfig
from itemjax.graph.bipartite import build_graph
from itemjax.model.models import GAT, MODELS, NGCF, SAGE, LightGCN, neighbour_mean, split_rows
from itemjax.graph.propagation import edge_softmax, to_device
from itemjax.train.step import make_model

N_USERS, N_ITEMS, DIM, N_LAYERS = 4, 5, 4, 2
ISOLATED_USER, ISOLATED_ITEM = 3, 2
RTOL, ATOL = 1e-5, 1e-5
#: (name, constructor keyword arguments) of every model configuration under test.
CASES = {
    "mf": ("mf", {}),
    "lightgcn": ("lightgcn", {}),
    "ngcf": ("ngcf", {}),
    "gat": ("gat", {}),
    "gat-2heads": ("gat", {"heads": 2}),
    "sage": ("sage", {}),
}


def hand_train() -> scipy.sparse.csr_matrix:
    """4 users x 5 items, degrees 1..3; user 3 and item 2 have no interactions."""
    pairs = [(0, 0), (0, 1), (1, 1), (1, 3), (1, 4), (2, 0), (2, 3)]
    users, items = zip(*pairs)
    return scipy.sparse.csr_matrix((np.ones(len(pairs)), (users, items)), shape=(N_USERS, N_ITEMS))


def neighbours_of(train) -> list:
    """Adjacency lists of the bipartite graph, nodes numbered users then items."""
    neighbours = [[] for _ in range(N_USERS + N_ITEMS)]
    coo = train.tocoo()
    for user, item in zip(coo.row, coo.col):
        neighbours[user].append(N_USERS + item)
        neighbours[N_USERS + item].append(user)
    return neighbours


def device_graph(backend="segment", pad_to=None):
    return to_device(build_graph(hand_train(), pad_to=pad_to), backend)


def make(case, **overrides):
    name, kwargs = CASES[case]
    return MODELS[name](n_users=N_USERS, n_items=N_ITEMS, dim=DIM, n_layers=N_LAYERS, **{**kwargs, **overrides}) \
        if name != "mf" else MODELS[name](n_users=N_USERS, n_items=N_ITEMS, dim=DIM)


def init_params(model, graph, seed=0):
    """Initialised parameters, every leaf re-drawn from N(0, 0.7^2) (same tree, same shapes)."""
    params = model.init(jax.random.key(seed), graph)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(0.0, 0.7, p.shape), jnp.float32), params)


def as64(tree):
    return jax.tree.map(lambda p: np.asarray(p, np.float64), tree)


# ----------------------------------------------------------------------------- float64 references


def leaky_relu(x, slope=0.2):
    return np.where(x >= 0, x, slope * x)


def normalise_rows(x):
    out = np.zeros_like(x)
    for r in range(x.shape[0]):
        out[r] = x[r] / max(math.sqrt(float(np.sum(x[r] ** 2))), 1e-12)
    return out


def a_hat_product(neighbours, x):
    """(A_hat x)[r] = sum_{c in N(r)} x[c] / sqrt(d_r d_c)."""
    out = np.zeros_like(x)
    for r, nbrs in enumerate(neighbours):
        for c in nbrs:
            out[r] += x[c] / math.sqrt(len(nbrs) * len(neighbours[c]))
    return out


def ego(params):
    return np.concatenate([params["ids"]["user_embedding"], params["ids"]["item_embedding"]])


def reference_mf(params, neighbours, model):
    return ego(params)


def reference_lightgcn(params, neighbours, model):
    x = ego(params)
    layers = [x]
    for _ in range(model.n_layers):
        layers.append(a_hat_product(neighbours, layers[-1]))
    return sum(layers) / (model.n_layers + 1)


def reference_ngcf(params, neighbours, model):
    x = ego(params)
    outputs = [x]
    for k in range(model.n_layers):
        side = a_hat_product(neighbours, x)
        w1, b1, w2 = params[f"W1_{k}"]["kernel"], params[f"W1_{k}"]["bias"], params[f"W2_{k}"]["kernel"]
        new = np.zeros((x.shape[0], model.dim))
        for r in range(x.shape[0]):
            new[r] = leaky_relu((x[r] + side[r]) @ w1 + b1 + (side[r] * x[r]) @ w2)
        x = new
        outputs.append(normalise_rows(x))
    return np.concatenate(outputs, axis=1)


def reference_gat(params, neighbours, model):
    h = ego(params)
    outputs = [h]
    heads, dim = model.heads, model.dim
    for k in range(model.n_layers):
        z = (h @ params[f"W_{k}"]["kernel"]).reshape(len(h), heads, dim)
        a_src, a_dst = params[f"attn_src_{k}"], params[f"attn_dst_{k}"]
        new = np.zeros_like(h)
        for i, nbrs in enumerate(neighbours):
            for head in range(heads):
                logits = [leaky_relu(a_dst[head] @ z[i, head] + a_src[head] @ z[j, head]) for j in nbrs]
                weights = [math.exp(l - max(logits)) for l in logits]
                for j, w in zip(nbrs, weights):
                    new[i] += (w / sum(weights)) * z[j, head] / heads
        h = new
        outputs.append(normalise_rows(h))
    return np.concatenate(outputs, axis=1)


def reference_sage(params, neighbours, model):
    h = ego(params)
    outputs = [h]
    for k in range(model.n_layers):
        new = np.zeros_like(h)
        for r, nbrs in enumerate(neighbours):
            mean = sum((h[c] for c in nbrs), np.zeros(model.dim)) / max(len(nbrs), 1)
            kind = "user" if r < N_USERS else "item"
            own, neigh = params[f"{kind}_self_{k}"], params[f"{kind}_neigh_{k}"]
            new[r] = np.maximum(h[r] @ own["kernel"] + own["bias"] + mean @ neigh["kernel"], 0.0)
        h = normalise_rows(new)
        outputs.append(h)
    return np.concatenate(outputs, axis=1)


REFERENCES = {"mf": reference_mf, "lightgcn": reference_lightgcn, "ngcf": reference_ngcf,
              "gat": reference_gat, "sage": reference_sage}


def expected_outputs(case, model, params):
    out = REFERENCES[CASES[case][0]](as64(params), neighbours_of(hand_train()), model)
    return out[:N_USERS], out[N_USERS:]


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("backend", ["segment", "csr"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_float64_reference(case, backend):
    graph = device_graph(backend)
    model = make(case)
    params = init_params(model, graph)
    users, items = model.apply({"params": params}, graph, train=False)
    want_users, want_items = expected_outputs(case, model, params)
    np.testing.assert_allclose(users, want_users, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(items, want_items, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", list(CASES))
def test_padding_changes_nothing_and_isolated_nodes_are_finite(case):
    model = make(case)
    base = device_graph("segment")
    padded = device_graph("segment", pad_to=base.senders.shape[0] + 37)
    assert padded.senders.shape[0] > base.senders.shape[0]
    params = init_params(model, base)
    got = model.apply({"params": params}, padded)
    want = model.apply({"params": params}, base)
    for g, w in zip(got, want):
        assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    users, items = got
    assert np.all(np.isfinite(np.asarray(users[ISOLATED_USER])))
    assert np.all(np.isfinite(np.asarray(items[ISOLATED_ITEM])))


@pytest.mark.parametrize("case", ["lightgcn", "gat", "gat-2heads"])
def test_isolated_node_keeps_only_its_ego_share(case):
    """With no neighbours every propagated layer is 0: LightGCN gives e^0 / (K + 1), GAT [e^0 | 0 ...]."""
    graph = device_graph("segment")
    model = make(case)
    params = init_params(model, graph)
    users, items = model.apply({"params": params}, graph)
    for got, table, row in ((users, "user_embedding", ISOLATED_USER), (items, "item_embedding", ISOLATED_ITEM)):
        own = np.asarray(params["ids"][table][row])
        want = own / (N_LAYERS + 1) if case == "lightgcn" else np.concatenate([own, np.zeros(DIM * N_LAYERS)])
        np.testing.assert_allclose(got[row], want, rtol=1e-6)


def scores_objective(model, graph):
    """A scalar that touches every user and item, the isolated ones included."""
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(N_USERS, N_ITEMS)), jnp.float32)

    def objective(params):
        users, items = model.apply({"params": params}, graph)
        return jnp.sum(weights * jnp.tanh(users @ items.T))

    return objective


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_finite_nonzero_and_equal_across_backends(case):
    """Padded segment graph vs csr: same value and gradients; every parameter gets a finite gradient."""
    model = make(case)
    segment, csr = device_graph("segment", pad_to=64), device_graph("csr")
    params = init_params(model, segment)
    value_s, grad_s = jax.jit(jax.value_and_grad(scores_objective(model, segment)))(params)
    value_c, grad_c = jax.jit(jax.value_and_grad(scores_objective(model, csr)))(params)
    np.testing.assert_allclose(value_s, value_c, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad_s, grad_c)
    for path, grad in jax.tree_util.tree_leaves_with_path(grad_s):
        grad = np.asarray(grad)
        assert np.all(np.isfinite(grad)), path
        assert np.any(grad != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"
    # The isolated user's own ego row still receives a (finite, nonzero) gradient.
    assert np.any(np.asarray(grad_s["ids"]["user_embedding"][ISOLATED_USER]) != 0)


def expected_parameter_count(case):
    d, k = DIM, N_LAYERS
    ids = (N_USERS + N_ITEMS) * d
    heads = CASES[case][1].get("heads", 1)
    return ids + {
        "mf": 0,
        "lightgcn": 0,
        "ngcf": k * (2 * d * d + d),  # W1 (with bias), W2
        "gat": k * (heads * d * d + 2 * heads * d),  # W, a_src, a_dst
        "gat-2heads": k * (heads * d * d + 2 * heads * d),
        "sage": k * 2 * (2 * d * d + d),  # (W_self + bias, W_neigh) per node type
    }[case]


@pytest.mark.parametrize("case", list(CASES))
def test_parameter_count(case):
    model = make(case)
    params = model.init(jax.random.key(0), device_graph())["params"]
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    assert count == expected_parameter_count(case)
    assert params["ids"]["user_embedding"].shape == (N_USERS, DIM)
    assert params["ids"]["item_embedding"].shape == (N_ITEMS, DIM)


def test_output_widths():
    graph = device_graph()
    for case in CASES:
        model = make(case)
        users, items = model.apply(model.init(jax.random.key(0), graph), graph)
        width = DIM if case in ("mf", "lightgcn") else DIM * (N_LAYERS + 1)  # layer concatenation
        assert users.shape == (N_USERS, width) and items.shape == (N_ITEMS, width), case


def test_ngcf_dropout_only_when_training():
    graph = device_graph()
    model = make("ngcf", dropout=0.5)
    params = init_params(model, graph)
    evaluation = model.apply({"params": params}, graph, train=False)  # no rng needed
    want_users, _ = expected_outputs("ngcf", model, params)
    np.testing.assert_allclose(evaluation[0], want_users, rtol=RTOL, atol=ATOL)

    def train(seed, m=model):
        return m.apply({"params": params}, graph, train=True, rngs={"dropout": jax.random.key(seed)})

    first, second = train(1), train(2)
    np.testing.assert_array_equal(first[0], train(1)[0])  # same key, same mask
    assert not np.allclose(first[0], second[0])  # another key, another mask
    assert not np.allclose(first[0], evaluation[0])
    # The ego block is never dropped; the layer blocks have zeroed entries.
    np.testing.assert_array_equal(first[0][:, :DIM], evaluation[0][:, :DIM])
    assert np.mean(np.asarray(first[1][:, DIM:]) == 0) > 0.2
    no_dropout = make("ngcf", dropout=0.0)
    np.testing.assert_allclose(train(1, no_dropout)[0], evaluation[0], rtol=1e-6)


@pytest.mark.parametrize("case", ["lightgcn", "gat-2heads", "sage"])
def test_deterministic_models_ignore_train_flag(case):
    graph = device_graph()
    model = make(case)
    params = init_params(model, graph)
    evaluation = model.apply({"params": params}, graph, train=False)
    training = model.apply({"params": params}, graph, train=True, rngs={"dropout": jax.random.key(3)})
    for a, b in zip(evaluation, training):
        np.testing.assert_array_equal(a, b)


def test_edge_softmax_normalises_per_receiver_and_masks_padding():
    graph = device_graph(pad_to=40)
    n_edges = 2 * hand_train().nnz
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(40, 3)) * 1e4, jnp.float32)  # huge: stability
    alpha = np.asarray(edge_softmax(graph, logits))
    assert np.all(np.isfinite(alpha)) and np.all(alpha >= 0)
    np.testing.assert_array_equal(alpha[n_edges:], 0.0)
    receivers = np.asarray(graph.receivers)
    for node, nbrs in enumerate(neighbours_of(hand_train())):
        total = alpha[receivers == node].sum(axis=0)
        np.testing.assert_allclose(total, 1.0 if nbrs else 0.0, rtol=1e-6)


@pytest.mark.parametrize("backend", ["segment", "csr"])
def test_neighbour_mean(backend):
    graph = device_graph(backend)
    x = np.random.default_rng(0).normal(size=(N_USERS + N_ITEMS, 3))
    got = neighbour_mean(graph, jnp.asarray(x, jnp.float32))
    for node, nbrs in enumerate(neighbours_of(hand_train())):
        want = np.mean(x[nbrs], axis=0) if nbrs else np.zeros(3)
        np.testing.assert_allclose(got[node], want, rtol=1e-5, atol=1e-6)


def test_registry_and_make_model():
    assert set(MODEL_NAMES) == set(MODELS)
    assert {"ngcf": NGCF, "gat": GAT, "sage": SAGE, "lightgcn": LightGCN}.items() <= MODELS.items()
    for name in MODEL_NAMES:
        model = make_model(TrainConfig(model=name, dim=8, layers=2).resolve(), N_USERS, N_ITEMS)
        assert (model.n_users, model.n_items, model.dim) == (N_USERS, N_ITEMS, 8)
        if name != "mf":
            assert model.n_layers == 2


@pytest.mark.parametrize("use", ["both", "first", "second"])
def test_split_rows_values_and_gradient_equal_slicing(use):
    """split_rows gives x's two row blocks, and its gradient (one concatenation) equals autodiff's of
    plain slicing (two zero-padded arrays added), also when one block is unused."""
    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.normal(size=(7, 3))) for _ in range(2))

    def objective(split):
        def f(x):
            first, second = split(x)
            total = 0.0
            if use != "second":
                total = total + jnp.sum(w[:4] * jnp.tanh(first))
            if use != "first":
                total = total + jnp.sum(w[4:] * second ** 2)
            return total
        return f

    first, second = split_rows(x, 4)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(x[:4]))
    np.testing.assert_array_equal(np.asarray(second), np.asarray(x[4:]))
    got = jax.grad(objective(lambda v: split_rows(v, 4)))(x)
    want = jax.grad(objective(lambda v: (v[:4], v[4:])))(x)
    assert np.count_nonzero(np.asarray(want)) >= 9
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
