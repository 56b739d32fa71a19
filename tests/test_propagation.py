"""Tests for itemjax.graph.propagation: every backend against float64 numpy references (``"native"``
runs the csr path where the native kernel is not built; tests/test_native.py checks the kernel itself)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse

from itemjax import native
from itemjax.errors import ConfigError
from itemjax.graph.bipartite import build_graph
from itemjax.graph.propagation import (
    BACKENDS,
    default_backend,
    propagate,
    propagate_weighted,
    to_device,
)

N_LAYERS = 3
DIM = 5
RTOL, ATOL = 1e-5, 1e-6


def hand_train() -> scipy.sparse.csr_matrix:
    """4 users x 4 items; user 3 and item 2 have no interactions."""
    pairs = [(0, 0), (0, 1), (1, 1), (1, 3), (2, 0), (2, 1), (2, 3)]
    users, items = zip(*pairs)
    return scipy.sparse.csr_matrix((np.ones(len(pairs)), (users, items)), shape=(4, 4))


def random_train(n_users=60, n_items=80, n_pairs=1000, seed=0) -> scipy.sparse.csr_matrix:
    """~2k directed edges; the last user and the last item stay isolated."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users - 1, size=n_pairs)
    items = rng.integers(0, n_items - 1, size=n_pairs)
    return scipy.sparse.csr_matrix((np.ones(n_pairs), (users, items)), shape=(n_users, n_items))


def dense_reference(train) -> np.ndarray:
    """A_hat in float64 from plain loops (1 / sqrt(d_r d_c) on each edge)."""
    n_users, n_items = train.shape
    n_nodes = n_users + n_items
    adjacency = np.zeros((n_nodes, n_nodes))
    coo = train.tocoo()
    for user, item in zip(coo.row, coo.col):
        adjacency[user, n_users + item] = adjacency[n_users + item, user] = 1.0
    degree = adjacency.sum(axis=1)
    a_hat = np.zeros_like(adjacency)
    for r, c in zip(*np.nonzero(adjacency)):
        a_hat[r, c] = 1.0 / math.sqrt(degree[r] * degree[c])
    return a_hat


def layer_mean_objective(propagate_fn, x, coefficients):
    """LightGCN-style scalar: sum(c * tanh(mean_k A^k x)), k = 0..N_LAYERS."""
    layers = [x]
    for _ in range(N_LAYERS):
        layers.append(propagate_fn(layers[-1]))
    return jnp.sum(coefficients * jnp.tanh(jnp.mean(jnp.stack(layers), axis=0)))


def reference_value_and_grad(a_hat, x, coefficients):
    """float64 value and gradient of layer_mean_objective, the adjoint written with A^T."""
    x = np.asarray(x, np.float64)
    coefficients = np.asarray(coefficients, np.float64)
    layers = [x]
    for _ in range(N_LAYERS):
        layers.append(a_hat @ layers[-1])
    mean = sum(layers) / (N_LAYERS + 1)
    value = np.sum(coefficients * np.tanh(mean))
    mean_bar = coefficients * (1.0 - np.tanh(mean) ** 2) / (N_LAYERS + 1)
    grad, adjoint = np.zeros_like(x), mean_bar
    for _ in range(N_LAYERS + 1):  # d/dx of A^k x is (A^T)^k
        grad += adjoint
        adjoint = a_hat.T @ adjoint
    return value, grad


def random_inputs(n_nodes, seed=0, dim=DIM):
    key_x, key_c = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(key_x, (n_nodes, dim), jnp.float32)
    coefficients = jax.random.normal(key_c, (n_nodes, dim), jnp.float32)
    return x, coefficients


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make_train", [hand_train, random_train], ids=["hand", "random"])
def test_propagate_matches_dense_reference(backend, make_train):
    train = make_train()
    graph = to_device(build_graph(train), backend)
    a_hat = dense_reference(train)
    x, _ = random_inputs(graph.n_nodes)
    out = propagate(graph, x)
    assert out.shape == x.shape and out.dtype == jnp.float32
    expected = a_hat @ np.asarray(x, np.float64)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=RTOL, atol=ATOL)
    # Isolated nodes (last user, last item) get zero rows, and nothing is NaN.
    assert np.all(np.isfinite(np.asarray(out)))
    degrees = (a_hat > 0).sum(axis=1)
    assert np.all(np.asarray(out)[degrees == 0] == 0) and (degrees == 0).sum() == 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make_train", [hand_train, random_train], ids=["hand", "random"])
def test_gradients_of_stacked_propagations_match_reference(backend, make_train):
    train = make_train()
    graph = to_device(build_graph(train), backend)
    x, coefficients = random_inputs(graph.n_nodes, seed=1)
    value, grad = jax.value_and_grad(
        lambda x: layer_mean_objective(lambda h: propagate(graph, h), x, coefficients)
    )(x)
    ref_value, ref_grad = reference_value_and_grad(dense_reference(train), x, coefficients)
    np.testing.assert_allclose(float(value), ref_value, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vjp_is_a_hat_transpose(backend):
    train = hand_train()
    graph = to_device(build_graph(train), backend)
    x, cotangent = random_inputs(graph.n_nodes, seed=2)
    _, vjp = jax.vjp(lambda x: propagate(graph, x), x)
    (x_bar,) = vjp(cotangent)
    expected = dense_reference(train).T @ np.asarray(cotangent, np.float64)
    np.testing.assert_allclose(np.asarray(x_bar), expected, rtol=RTOL, atol=ATOL)


def test_backends_agree_with_each_other_jit_and_padding():
    train = random_train(seed=3)
    x, coefficients = random_inputs(train.shape[0] + train.shape[1], seed=3, dim=8)
    results = []
    for pad_to in (None, 4096):
        host_graph = build_graph(train, pad_to=pad_to)
        for backend in BACKENDS:
            graph = to_device(host_graph, backend)

            def objective(x, graph):
                return layer_mean_objective(lambda h: propagate(graph, h), x, coefficients)

            eager = jax.value_and_grad(objective)(x, graph)
            jitted = jax.jit(jax.value_and_grad(objective))(x, graph)
            for a, b in zip(eager, jitted):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
            results.append(jitted)
    assert build_graph(train, pad_to=4096).senders.shape == (4096,)
    first_value, first_grad = results[0]
    for value, grad in results[1:]:
        np.testing.assert_allclose(float(value), float(first_value), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(first_grad), rtol=1e-5, atol=1e-6)


def test_float64_inputs_under_enable_x64():
    train = random_train(seed=4)
    a_hat = dense_reference(train)
    rng = np.random.default_rng(4)
    x64 = rng.normal(size=(a_hat.shape[0], 3))
    with jax.enable_x64(True):
        for backend in BACKENDS:
            graph = to_device(build_graph(train), backend)
            out = propagate(graph, jnp.asarray(x64))
            assert out.dtype == jnp.float64
            # A_hat is stored in float32, so agreement is to float32 precision of the weights.
            np.testing.assert_allclose(np.asarray(out), a_hat @ x64, rtol=1e-6, atol=1e-7)


def test_propagate_weighted_matches_loop_reference_and_gradients():
    train = hand_train()
    host_graph = build_graph(train, pad_to=24)
    graph = to_device(host_graph, "csr")  # backend is ignored by propagate_weighted
    x, coefficients = random_inputs(graph.n_nodes, seed=5)
    edge_weights = jax.random.uniform(jax.random.key(6), (24,), jnp.float32, 0.5, 2.0)

    # Default weights reproduce A_hat @ x.
    np.testing.assert_allclose(
        np.asarray(propagate_weighted(graph, x, graph.weights)),
        dense_reference(train) @ np.asarray(x, np.float64),
        rtol=RTOL,
        atol=ATOL,
    )

    def objective(x, edge_weights):
        return jnp.sum(coefficients * propagate_weighted(graph, x, edge_weights))

    value, (x_bar, w_bar) = jax.value_and_grad(objective, argnums=(0, 1))(x, edge_weights)
    x64, c64, w64 = (np.asarray(a, np.float64) for a in (x, coefficients, edge_weights))
    expected_out = np.zeros_like(x64)
    expected_x_bar = np.zeros_like(x64)
    expected_w_bar = np.zeros(24)
    for e, (sender, receiver) in enumerate(zip(host_graph.senders, host_graph.receivers)):
        if receiver == graph.n_nodes:  # padding edge: contributes nothing, gets no gradient
            continue
        expected_out[receiver] += w64[e] * x64[sender]
        expected_x_bar[sender] += w64[e] * c64[receiver]
        expected_w_bar[e] = np.dot(c64[receiver], x64[sender])
    np.testing.assert_allclose(float(value), np.sum(c64 * expected_out), rtol=RTOL)
    np.testing.assert_allclose(np.asarray(x_bar), expected_x_bar, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(w_bar), expected_w_bar, rtol=RTOL, atol=ATOL)
    assert np.all(np.asarray(w_bar)[host_graph.n_edges:] == 0)


def test_device_graph_is_a_pytree_with_static_metadata():
    host_graph = build_graph(hand_train())
    graph = to_device(host_graph, "segment")
    leaves, treedef = jax.tree_util.tree_flatten(graph)
    assert len(leaves) == 11  # 6 adjacency arrays, edge_pairs, 4 (empty) side-feature arrays
    assert (graph.n_users, graph.n_items, graph.n_nodes, graph.backend) == (4, 4, 8, "segment")
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.backend == "segment" and rebuilt.n_nodes == 8
    np.testing.assert_array_equal(np.asarray(graph.senders), host_graph.senders)
    np.testing.assert_array_equal(np.asarray(graph.data), host_graph.data)
    # Static fields are part of the treedef, so the two backends compile separately.
    assert treedef != jax.tree_util.tree_structure(to_device(host_graph, "csr"))


def test_backend_names():
    host_graph = build_graph(hand_train())
    cpu = "native" if native.available() else "csr"  # the native kernel where it is built, else XLA's CSR product
    assert default_backend() == (cpu if jax.default_backend() == "cpu" else "segment")
    assert to_device(host_graph).backend == default_backend()
    assert to_device(host_graph, "auto").backend == default_backend()
    with pytest.raises(ConfigError, match="unknown propagation backend 'dense'"):
        to_device(host_graph, "dense")
    with pytest.raises(ValueError, match="n_nodes=8"):
        propagate(to_device(host_graph, "segment"), jnp.zeros((7, 2)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_graph_without_interactions_gives_zeros(backend):
    host_graph = build_graph(scipy.sparse.csr_matrix((3, 2)))
    assert host_graph.n_edges == 0 and host_graph.senders.shape == (8,)
    graph = to_device(host_graph, backend)
    x = jnp.ones((5, 2))
    np.testing.assert_array_equal(np.asarray(propagate(graph, x)), np.zeros((5, 2)))
    grad = jax.grad(lambda x: jnp.sum(propagate(graph, x) ** 2 + x))(x)
    np.testing.assert_array_equal(np.asarray(grad), np.ones((5, 2)))
