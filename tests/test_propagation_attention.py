"""Tests for itemjax.graph.propagation.propagate_attention: the fused csr kernel (custom VJP; the
native backend runs it on the native kernel) against the segment reference (plain autodiff over the padded edges) and a float64 loop reference.

Graphs are random bipartite graphs whose last user and last item have no interactions, padded
beyond their edge count, so isolated nodes and padding edges are always present.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse

from conftest import central_differences
from itemjax.errors import ConfigError
from itemjax.graph.bipartite import build_graph
from itemjax.graph.propagation import BACKENDS, gat_layer, propagate_attention, to_device

SLOPE = 0.2
DIM = 4
#: float64 agreement of the two backends: both are exact up to summation order.
RTOL64, ATOL64 = 1e-11, 1e-13


def random_train(n_users=30, n_items=40, n_pairs=300, seed=0) -> scipy.sparse.csr_matrix:
    """~500 directed edges of uneven degrees; the last user and the last item stay isolated."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users - 1, size=n_pairs)
    items = np.minimum(rng.geometric(0.08, size=n_pairs) - 1, n_items - 2)  # skewed item degrees
    return scipy.sparse.csr_matrix((np.ones(n_pairs), (users, items)), shape=(n_users, n_items))


def graphs(train, extra_padding=40):
    """``{backend: DeviceGraph}`` of ``train``, with ``extra_padding`` padding edges beyond the bucket."""
    host = build_graph(train)
    host = build_graph(train, pad_to=host.n_padded_edges + extra_padding)
    assert host.n_padded_edges > host.n_edges
    return host, {backend: to_device(host, backend) for backend in BACKENDS}


def neighbours_of(train) -> list:
    n_users, n_items = train.shape
    neighbours = [[] for _ in range(n_users + n_items)]
    coo = train.tocoo()
    for user, item in set(zip(coo.row.tolist(), coo.col.tolist())):
        neighbours[user].append(n_users + item)
        neighbours[n_users + item].append(user)
    return neighbours


def loop_reference(neighbours, x, src_score, dst_score, slope=SLOPE) -> np.ndarray:
    """float64 ``y[r] = sum_c softmax_c(LeakyReLU(dst[r] + src[c])) x[c]``, node by node."""
    x, src_score, dst_score = (np.asarray(a, np.float64) for a in (x, src_score, dst_score))
    y = np.zeros_like(x)
    for r, nbrs in enumerate(neighbours):
        if not nbrs:
            continue
        pre = dst_score[r] + src_score[nbrs]
        logits = np.where(pre >= 0, pre, slope * pre)
        alpha = np.exp(logits - logits.max())
        y[r] = (alpha / alpha.sum()) @ x[nbrs]
    return y


def random_inputs(n_nodes, seed, scale=1.0, dim=DIM, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_nodes, dim))
    src_score, dst_score = rng.normal(size=(2, n_nodes)) * scale
    coefficients = rng.normal(size=(n_nodes, dim))
    return tuple(jnp.asarray(a, dtype) for a in (x, src_score, dst_score, coefficients))


def scalar_objective(graph, coefficients, slope=SLOPE):
    """``sum(c * tanh(y))``: a cotangent that differs per node and per feature."""

    def objective(x, src_score, dst_score):
        return jnp.sum(coefficients * jnp.tanh(propagate_attention(graph, x, src_score, dst_score, slope)))

    return objective


@pytest.mark.parametrize("slope", [SLOPE, 0.0, 1.0])
def test_values_match_loop_reference_float64(x64, slope):
    train = random_train()
    _, by_backend = graphs(train)
    x, src_score, dst_score, _ = random_inputs(sum(train.shape), seed=0, scale=2.0)
    want = loop_reference(neighbours_of(train), x, src_score, dst_score, slope)
    assert np.any(want != 0) and np.all(want[[train.shape[0] - 1, sum(train.shape) - 1]] == 0)
    for backend, graph in by_backend.items():
        got = propagate_attention(graph, x, src_score, dst_score, slope)
        assert got.dtype == jnp.float64 and got.shape == x.shape, backend
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-14, err_msg=backend)


@pytest.mark.parametrize("slope", [SLOPE, 0.0, 1.0])
@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["unit-logits", "wide-logits"])
def test_gradients_equal_segment_version_float64(x64, slope, scale):
    """jax.grad w.r.t. the features and both score vectors: fused csr VJP == autodiff of the segment version."""
    train = random_train(seed=1)
    _, by_backend = graphs(train)
    n_users, n_nodes = train.shape[0], sum(train.shape)
    x, src_score, dst_score, coefficients = random_inputs(n_nodes, seed=1, scale=scale)
    results = {}
    for backend, graph in by_backend.items():
        fn = jax.value_and_grad(scalar_objective(graph, coefficients, slope), argnums=(0, 1, 2))
        results[backend] = fn(x, src_score, dst_score)
        jitted = jax.jit(fn)(x, src_score, dst_score)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL64, atol=ATOL64), results[backend], jitted)
    (value_s, grads_s), (value_c, grads_c) = results["segment"], results["csr"]
    np.testing.assert_allclose(float(value_c), float(value_s), rtol=RTOL64)
    for name, got, want in zip(("x", "src_score", "dst_score"), grads_c, grads_s):
        want = np.asarray(want)
        np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL64, atol=ATOL64, err_msg=name)
        # Non-vacuous: gradients reach the connected nodes and none reaches the isolated ones.
        isolated = [n_users - 1, n_nodes - 1]
        assert np.all(want[isolated] == 0) and np.all(np.asarray(got)[isolated] == 0), name
        assert np.count_nonzero(want) >= want.size // 2, name  # (a node with one neighbour: dst_bar = 0)


def test_gradient_matches_central_differences_float64(x64):
    """An independent witness for the fused VJP, on a small graph (isolated nodes, score ties at 0)."""
    train = random_train(n_users=6, n_items=7, n_pairs=14, seed=2)
    _, by_backend = graphs(train, extra_padding=5)
    n_nodes = sum(train.shape)
    x, _, _, coefficients = random_inputs(n_nodes, seed=2, dim=3)
    rng = np.random.default_rng(2)
    # Integer scores: many logits tie (equal row maxima) or sit at the LeakyReLU kink; nudge off the
    # kink so that central differences are smooth there, ties stay.
    src_score = rng.integers(-2, 3, size=n_nodes) + 0.25
    dst_score = rng.integers(-2, 3, size=n_nodes) + 0.5
    objective = scalar_objective(by_backend["csr"], coefficients)
    grads = jax.grad(objective, argnums=(0, 1, 2))(x, jnp.asarray(src_score), jnp.asarray(dst_score))
    numeric = (
        central_differences(lambda a: objective(jnp.asarray(a), src_score, dst_score), np.asarray(x)),
        central_differences(lambda a: objective(x, jnp.asarray(a), dst_score), src_score),
        central_differences(lambda a: objective(x, src_score, jnp.asarray(a)), dst_score),
    )
    for got, want in zip(grads, numeric):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-8)


def gat_layers(graph, n_layers=2, slope=SLOPE):
    """A two-layer GAT-style objective of (ego features, W, a_src, a_dst), as in itemjax.model.GAT."""

    def objective(params, coefficients):
        h, outputs = params["ego"], []
        for k in range(n_layers):
            z = h @ params["W"][k]
            h = propagate_attention(graph, z, z @ params["a_src"][k], z @ params["a_dst"][k], slope)
            outputs.append(h)
        return jnp.sum(coefficients * jnp.tanh(jnp.concatenate(outputs, axis=1)))

    return objective


def test_gat_parameter_gradients_equal_segment_version_float64(x64):
    """Gradients w.r.t. the attention vectors and the layer weights, through two stacked layers."""
    train = random_train(seed=3)
    _, by_backend = graphs(train)
    n_nodes = sum(train.shape)
    rng = np.random.default_rng(3)
    params = {
        "ego": jnp.asarray(rng.normal(size=(n_nodes, DIM))),
        "W": jnp.asarray(rng.normal(size=(2, DIM, DIM))),
        "a_src": jnp.asarray(rng.normal(size=(2, DIM))),
        "a_dst": jnp.asarray(rng.normal(size=(2, DIM))),
    }
    coefficients = jnp.asarray(rng.normal(size=(n_nodes, 2 * DIM)))
    grads = {b: jax.jit(jax.grad(gat_layers(g)))(params, coefficients) for b, g in by_backend.items()}
    for name in params:
        want = np.asarray(grads["segment"][name])
        assert np.all(np.abs(want) > 0) if name != "ego" else np.count_nonzero(want) > 0.9 * want.size - 2 * DIM
        np.testing.assert_allclose(np.asarray(grads["csr"][name]), want, rtol=1e-10, atol=1e-12, err_msg=name)


def test_huge_logits_stay_finite_float32():
    """Scores of 1e4 (float32): the per-row max shift keeps every value and gradient finite."""
    train = random_train(seed=4)
    _, by_backend = graphs(train)
    x, src_score, dst_score, coefficients = random_inputs(sum(train.shape), seed=4, scale=1e4, dtype=jnp.float32)
    out = {}
    for backend, graph in by_backend.items():
        value, grads = jax.value_and_grad(scalar_objective(graph, coefficients), argnums=(0, 1, 2))(
            x, src_score, dst_score)
        assert np.isfinite(float(value)) and all(np.all(np.isfinite(np.asarray(g))) for g in grads), backend
        out[backend] = propagate_attention(graph, x, src_score, dst_score, SLOPE)
    want = loop_reference(neighbours_of(train), x, src_score, dst_score)
    for backend, got in out.items():
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4, err_msg=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_graph_without_interactions_gives_zeros(backend):
    graph = to_device(build_graph(scipy.sparse.csr_matrix((3, 2))), backend)
    x, scores = jnp.ones((5, 2)), jnp.arange(5.0)
    np.testing.assert_array_equal(np.asarray(propagate_attention(graph, x, scores, -scores)), np.zeros((5, 2)))
    grads = jax.grad(lambda x, s: jnp.sum(propagate_attention(graph, x, s, s) ** 2 + x), argnums=(0, 1))(x, scores)
    np.testing.assert_array_equal(np.asarray(grads[0]), np.ones((5, 2)))
    np.testing.assert_array_equal(np.asarray(grads[1]), np.zeros(5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gat_layer_without_interactions_gives_zeros(backend):
    """No edges: y = 0 and out = 0 (norm below eps) on every backend (native: the fused layer, width 16), and
    nothing depends on z or the attention vectors, so their gradients are 0 and finite."""
    graph = to_device(build_graph(scipy.sparse.csr_matrix((3, 2))), backend)
    z = jnp.asarray(np.random.default_rng(0).normal(size=(5, 16)), jnp.float32)
    a = jnp.ones(16, jnp.float32)
    y, out = gat_layer(graph, z, a, -a)
    np.testing.assert_array_equal(np.asarray(y), np.zeros((5, 16)))
    np.testing.assert_array_equal(np.asarray(out), np.zeros((5, 16)))

    def objective(z, a_src, a_dst):
        y, out = gat_layer(graph, z, a_src, a_dst)
        return jnp.sum(y ** 2 + out) + jnp.sum(z)

    grads = jax.grad(objective, argnums=(0, 1, 2))(z, a, -a)
    np.testing.assert_array_equal(np.asarray(grads[0]), np.ones((5, 16)))
    for g in grads[1:]:
        np.testing.assert_array_equal(np.asarray(g), np.zeros(16))


def test_clear_errors():
    graph = to_device(build_graph(random_train()), "csr")
    n = graph.n_nodes
    x, scores = jnp.zeros((n, 3)), jnp.zeros(n)
    with pytest.raises(ValueError, match=rf"src_score of shape \[n_nodes={n}\], got \({n}, 1\)"):
        propagate_attention(graph, x, scores[:, None], scores)
    with pytest.raises(ValueError, match=rf"dst_score of shape \[n_nodes={n}\]"):
        propagate_attention(graph, x, scores, scores[:-1])
    with pytest.raises(ValueError, match=f"n_nodes={n}"):
        propagate_attention(graph, x[:-1], scores, scores)
    with pytest.raises(ConfigError, match="unknown propagation backend 'dense'"):
        propagate_attention(graph.replace(backend="dense"), x, scores, scores)
