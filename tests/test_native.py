"""Tests of the native CSR kernel (itemjax.native) and the ``"native"`` backend built on it.

The raw products against float64 scipy references (forward and transpose, several thread counts,
empty rows, bfloat16, float64); ``propagate`` / ``propagate_attention`` / ``csr_matmul`` on the
native kernel against the csr and segment backends, forward and gradient; and the fallback when
the library is missing (simulated): same values through the csr path, one line on stderr.

The kernel tests need the compiled library: they are skipped where it was not built, except that
:func:`test_kernel_is_built_where_a_compiler_is` fails when a C++ compiler is on the PATH but the
library is still missing (a broken build, rather than a machine without a compiler).
"""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse

from itemjax import native
from itemjax.config import TrainConfig
from itemjax.graph.bipartite import build_graph
from itemjax.graph.ppr import ppr_scores
from itemjax.graph.propagation import (csr_matmul, gat_layer, native_available, propagate, propagate_attention,
                                      to_device)

needs_kernel = pytest.mark.skipif(not native.available(), reason=f"native kernel not built: {native.unavailable_reason()}")
N_LAYERS = 3
RTOL, ATOL = 1e-5, 1e-6


def random_csr(m=37, n=23, density=0.15, seed=0) -> scipy.sparse.csr_matrix:
    """A rectangular float64 CSR matrix with empty rows (the first, the last and a few others) and
    an empty column."""
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(m, n)) * (rng.random((m, n)) < density)
    dense[[0, 5, 6, m - 1]] = 0.0
    dense[:, 3] = 0.0
    matrix = scipy.sparse.csr_matrix(dense)
    assert (np.diff(matrix.indptr) == 0).sum() >= 4 and matrix.nnz > 0
    return matrix


def device_arrays(matrix, dtype=jnp.float32):
    return (jnp.asarray(matrix.indptr, jnp.int32), jnp.asarray(matrix.indices, jnp.int32),
            jnp.asarray(matrix.data, dtype))


def skewed_train(n_users=40, n_items=50, n_pairs=400, seed=0) -> scipy.sparse.csr_matrix:
    """Synthetic interactions with geometric item popularity; the last user and item stay isolated."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users - 1, size=n_pairs)
    items = np.minimum(rng.geometric(0.06, size=n_pairs) - 1, n_items - 2)
    return scipy.sparse.csr_matrix((np.ones(n_pairs), (users, items)), shape=(n_users, n_items))


def layer_mean_loss(graph, x, coefficients):
    """LightGCN-like scalar: sum(c * tanh(mean_k A_hat^k x)), k = 0..N_LAYERS."""
    layers = [x]
    for _ in range(N_LAYERS):
        layers.append(propagate(graph, layers[-1]))
    return jnp.sum(coefficients * jnp.tanh(jnp.mean(jnp.stack(layers), axis=0)))


def test_kernel_is_built_where_a_compiler_is():
    if os.environ.get("ITEMJAX_NATIVE", "").strip() == "0":
        pytest.skip("disabled by ITEMJAX_NATIVE=0")
    if not any(shutil.which(name) for name in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler on the PATH: the fallback is what this machine runs")
    status = native.status()
    assert status["available"], f"a C++ compiler is present but the native kernel is not usable: {status['reason']}"
    assert native.library_path() is not None and native.unavailable_reason() is None
    assert native_available() == (jax.default_backend() == "cpu")


@needs_kernel
def test_products_match_float64_reference_for_every_thread_count():
    matrix = random_csr()
    m, n = matrix.shape
    rng = np.random.default_rng(1)
    x, x_t = rng.normal(size=(n, 6)), rng.normal(size=(m, 6))
    indptr, indices, data = device_arrays(matrix)
    # the reference uses the float32-rounded values the kernel sees
    m32 = scipy.sparse.csr_matrix((np.asarray(data, np.float64), matrix.indices, matrix.indptr), shape=matrix.shape)
    x32, x_t32 = np.float32(x), np.float32(x_t)
    results = []
    for threads in (1, 2, 3, 8, 0):
        y = native.spmm(indptr, indices, data, jnp.asarray(x32), threads=threads)
        y_t = native.spmm(indptr, indices, data, jnp.asarray(x_t32), transpose=True, n_cols=n, threads=threads)
        assert y.shape == (m, 6) and y.dtype == jnp.float32 and y_t.shape == (n, 6)
        np.testing.assert_allclose(np.asarray(y), m32 @ np.float64(x32), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(np.asarray(y_t), m32.T @ np.float64(x_t32), rtol=RTOL, atol=ATOL)
        results.append((np.asarray(y), np.asarray(y_t)))
    empty_rows = np.diff(matrix.indptr) == 0
    assert np.all(results[0][0][empty_rows] == 0) and np.all(results[0][1][3] == 0)
    for y, y_t in results[1:]:  # each element summed by one thread in entry order: bitwise equal
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(y_t, results[0][1])
    jitted = jax.jit(lambda x: native.spmm(indptr, indices, data, x))(jnp.asarray(x32))
    np.testing.assert_array_equal(np.asarray(jitted), results[0][0])


@needs_kernel
@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_fixed_width_rows_equal_the_generic_loop_bitwise(d):
    """Widths 16, 32, 64, 128 run the register-accumulator kernel; split into two generic widths (d - 8
    and 8 columns) the same sums are added in the same order, so the results are bitwise equal."""
    matrix = random_csr(m=300, n=200, density=0.08, seed=12)
    indptr, indices, data = device_arrays(matrix)
    x32 = np.float32(np.random.default_rng(12).normal(size=(matrix.shape[1], d)))
    fixed = [np.asarray(native.spmm(indptr, indices, data, jnp.asarray(x32), threads=t)) for t in (1, 2, 0)]
    generic = np.concatenate([np.asarray(native.spmm(indptr, indices, data, jnp.asarray(x32[:, :d - 8]))),
                              np.asarray(native.spmm(indptr, indices, data, jnp.asarray(x32[:, d - 8:])))], axis=1)
    m64 = scipy.sparse.csr_matrix((np.asarray(data, np.float64), matrix.indices, matrix.indptr), shape=matrix.shape)
    np.testing.assert_allclose(fixed[0], m64 @ np.float64(x32), rtol=RTOL, atol=ATOL)
    for y in fixed[1:] + [generic]:
        np.testing.assert_array_equal(y, fixed[0])
    xb = jnp.asarray(x32, jnp.bfloat16)
    yb = native.spmm(indptr, indices, data, xb)
    y32 = native.spmm(indptr, indices, data, xb.astype(jnp.float32))
    np.testing.assert_array_equal(np.asarray(yb.astype(jnp.float32)),
                                  np.asarray(y32.astype(jnp.bfloat16).astype(jnp.float32)))


@needs_kernel
def test_empty_matrix_and_out_of_range_entries():
    indptr = jnp.zeros((5,), jnp.int32)  # 4 rows, no entries
    x = jnp.ones((3, 2), jnp.float32)
    empty = jnp.zeros((0,), jnp.int32), jnp.zeros((0,), jnp.float32)
    np.testing.assert_array_equal(np.asarray(native.spmm(indptr, *empty, x)), np.zeros((4, 2)))
    np.testing.assert_array_equal(np.asarray(native.spmm(indptr, *empty, jnp.ones((4, 2)), transpose=True, n_cols=3)),
                                  np.zeros((3, 2)))
    # row 0: columns 0 and 3 (3 is out of range for x of 3 rows: skipped), row 1: column -1 (skipped)
    indptr = jnp.asarray([0, 2, 3], jnp.int32)
    indices = jnp.asarray([0, 3, -1], jnp.int32)
    data = jnp.asarray([2.0, 5.0, 7.0], jnp.float32)
    x = jnp.asarray([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]], jnp.float32)
    np.testing.assert_array_equal(np.asarray(native.spmm(indptr, indices, data, x)), [[2.0, 20.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="n_cols"):
        native.spmm(indptr, indices, data, x[:2], transpose=True)
    with pytest.raises(TypeError, match="float16"):
        native.spmm(indptr, indices, data, x.astype(jnp.float16))


@needs_kernel
def test_bfloat16_is_summed_in_float32_and_rounded_once():
    matrix = random_csr(seed=2)
    indptr, indices, data = device_arrays(matrix)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(matrix.shape[1], 9)), jnp.bfloat16)
    for transpose, operand in ((False, x), (True, jnp.asarray(np.random.default_rng(3).normal(size=(matrix.shape[0], 9)),
                                                                jnp.bfloat16))):
        kwargs = dict(transpose=transpose, n_cols=matrix.shape[1])
        y = native.spmm(indptr, indices, data, operand, **kwargs)
        assert y.dtype == jnp.bfloat16
        # the float32 kernel on the same (bfloat16-exact) values, rounded to bfloat16: the same bits
        y32 = native.spmm(indptr, indices, data, operand.astype(jnp.float32), **kwargs)
        np.testing.assert_array_equal(np.asarray(y.astype(jnp.float32)), np.asarray(y32.astype(jnp.bfloat16).astype(jnp.float32)))
        m32 = scipy.sparse.csr_matrix((np.asarray(data, np.float64), matrix.indices, matrix.indptr), shape=matrix.shape)
        reference = (m32.T if transpose else m32) @ np.asarray(operand.astype(jnp.float32), np.float64)
        np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), reference, rtol=1e-2, atol=1e-2)


@needs_kernel
def test_float64(x64):
    matrix = random_csr(seed=4)
    indptr, indices, data = device_arrays(matrix, jnp.float64)
    x = np.random.default_rng(4).normal(size=(matrix.shape[1], 3))
    y = native.spmm(indptr, indices, data, jnp.asarray(x))
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(y), matrix @ x, rtol=1e-12, atol=1e-14)


@needs_kernel
def test_csr_matmul_gradients_for_a_non_symmetric_matrix():
    """``csr_matmul(native=True)``: value, ``x_bar = M^T y_bar`` and ``data_bar`` against JAX's BCSR
    autodiff and a float64 formula, on a rectangular matrix (no symmetry to lean on)."""
    matrix = random_csr(seed=5)
    m, n = matrix.shape
    indptr, indices, data = device_arrays(matrix)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(n, 4)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(m, 4)), jnp.float32)

    def loss(native_flag):
        return lambda x, data: jnp.sum(weights * jnp.sin(csr_matmul((m, n), indptr, indices, data, x, native=native_flag)))

    value, (x_bar, data_bar) = jax.value_and_grad(loss(True), argnums=(0, 1))(x, data)
    want_value, (want_x_bar, want_data_bar) = jax.value_and_grad(loss(False), argnums=(0, 1))(x, data)
    np.testing.assert_allclose(float(value), float(want_value), rtol=RTOL)
    np.testing.assert_allclose(np.asarray(x_bar), np.asarray(want_x_bar), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(data_bar), np.asarray(want_data_bar), rtol=RTOL, atol=ATOL)
    # float64: y_bar = w * cos(M x); x_bar = M^T y_bar; data_bar_j = y_bar[row_j] . x[col_j]
    m64 = scipy.sparse.csr_matrix((np.asarray(data, np.float64), matrix.indices, matrix.indptr), shape=matrix.shape)
    x64 = np.asarray(x, np.float64)
    y_bar = np.asarray(weights, np.float64) * np.cos(m64 @ x64)
    rows = np.repeat(np.arange(m), np.diff(matrix.indptr))
    np.testing.assert_allclose(np.asarray(x_bar), m64.T @ y_bar, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(data_bar), np.sum(y_bar[rows] * x64[matrix.indices], axis=1),
                               rtol=1e-4, atol=1e-5)
    # only x differentiated: no data gradient is computed (one transpose product, no gather of x)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss(True)))(x, data))
    assert jaxpr.count("itemjax_csr_spmm_t_f32") == 1 and "gather" not in jaxpr
    # a vector x goes through as one column
    vector = csr_matmul((m, n), indptr, indices, data, x[:, 0], native=True)
    np.testing.assert_allclose(np.asarray(vector), m64 @ x64[:, 0], rtol=RTOL, atol=ATOL)


@needs_kernel
@pytest.mark.parametrize("make_graph", ["random", "synthetic"])
def test_propagation_equals_csr_and_segment_forward_and_gradient(make_graph):
    if make_graph == "random":
        train = scipy.sparse.random(30, 45, density=0.08, format="csr", random_state=7)
    else:
        train = skewed_train()
    host = build_graph(train)
    graphs = {backend: to_device(host, backend) for backend in ("native", "csr", "segment")}
    assert graphs["native"].backend == "native"
    n = host.n_nodes
    key_x, key_c = jax.random.split(jax.random.key(8))
    x = jax.random.normal(key_x, (n, 8), jnp.float32)
    coefficients = jax.random.normal(key_c, (n, 8), jnp.float32)
    a_hat = scipy.sparse.csr_matrix((np.float64(host.data), host.indices, host.indptr), shape=(n, n))
    out = propagate(graphs["native"], x)
    np.testing.assert_allclose(np.asarray(out), a_hat @ np.asarray(x, np.float64), rtol=RTOL, atol=ATOL)
    results = {name: jax.jit(jax.value_and_grad(layer_mean_loss, argnums=1))(graph, x, coefficients)
               for name, graph in graphs.items()}
    for other in ("csr", "segment"):
        np.testing.assert_allclose(float(results["native"][0]), float(results[other][0]), rtol=RTOL)
        np.testing.assert_allclose(np.asarray(results["native"][1]), np.asarray(results[other][1]),
                                   rtol=RTOL, atol=ATOL)
    # the backward pass is the same native product (A_hat symmetric): no transpose kernel needed
    jaxpr = str(jax.make_jaxpr(jax.grad(layer_mean_loss, argnums=1))(graphs["native"], x, coefficients))
    assert jaxpr.count("itemjax_csr_spmm_f32") == 2 * N_LAYERS and "itemjax_csr_spmm_t_" not in jaxpr
    # bfloat16 activations: within bfloat16 rounding of the float32 product
    out16 = propagate(graphs["native"], x.astype(jnp.bfloat16))
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(out), rtol=2e-2, atol=2e-2)


@needs_kernel
def test_attention_equals_csr():
    host = build_graph(skewed_train(seed=9))
    graphs = {backend: to_device(host, backend) for backend in ("native", "csr")}
    n = host.n_nodes
    rng = np.random.default_rng(9)
    x, weights = (jnp.asarray(rng.normal(size=(n, 5)), jnp.float32) for _ in range(2))
    src, dst = (jnp.asarray(rng.normal(size=(n,)), jnp.float32) for _ in range(2))

    def loss(graph, x, src, dst):
        return jnp.sum(weights * jnp.tanh(propagate_attention(graph, x, src, dst)))

    got = jax.value_and_grad(loss, argnums=(1, 2, 3))(graphs["native"], x, src, dst)
    want = jax.value_and_grad(loss, argnums=(1, 2, 3))(graphs["csr"], x, src, dst)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=RTOL)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("d, scale", [(16, 2.0), (64, 2.0), (64, 60.0)], ids=["d16", "d64", "d64-wide-logits"])
def test_fused_attention_passes_match_float64_autodiff(x64, d, scale):
    """Widths 16-128 in float32 run the fused GAT passes (one forward pass, two backward); their value and
    gradients (x, src, dst) against float64 autodiff of the segment reference, on a graph with isolated
    nodes and mixed-sign logits (wide ones put many weights below the kernel's exp cut-off at e^-87); the
    thread count does not change the bits."""
    host = build_graph(skewed_train(seed=13))
    n = host.n_nodes
    rng = np.random.default_rng(13)
    x64_, w64 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    src64, dst64 = rng.normal(size=(n,)) * scale, rng.normal(size=(n,)) * scale

    def loss(graph, x, src, dst, weights):
        return jnp.sum(weights * jnp.tanh(propagate_attention(graph, x, src, dst)))

    segment = to_device(host, "segment")
    want = jax.value_and_grad(loss, argnums=(1, 2, 3))(segment, *(jnp.asarray(a, jnp.float64) for a in
                                                                  (x64_, src64, dst64, w64)))
    native_graph = to_device(host, "native")
    args32 = [jnp.asarray(a, jnp.float32) for a in (x64_, src64, dst64, w64)]
    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=1))(native_graph, *args32))
    assert "itemjax_gat_forward_f32" in jaxpr and "itemjax_gat_backward_f32" in jaxpr
    assert "itemjax_csr_spmm" not in jaxpr
    got = jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3)))(native_graph, *args32)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
    for a, b in zip(got[1], want[1]):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b), rtol=1e-4, atol=2e-5)
    isolated = np.asarray(jnp.diff(native_graph.indptr)) == 0
    y = propagate_attention(native_graph, *args32[:3])
    assert isolated.any() and np.all(np.asarray(y)[isolated] == 0)
    # one thread against the automatic count: bitwise equal
    arrays = (native_graph.indptr, native_graph.indices, *args32[:3])
    one = native.gat_forward(*arrays, negative_slope=0.2, threads=1)
    auto = native.gat_forward(*arrays, negative_slope=0.2, threads=2)
    for a, b in zip(one, auto):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    y_bar = jnp.asarray(w64, jnp.float32)
    back_one = native.gat_backward(*arrays, *one, y_bar, negative_slope=0.2, threads=1)
    back_two = native.gat_backward(*arrays, *one, y_bar, negative_slope=0.2, threads=2)
    for a, b in zip(back_one, back_two):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="width|d in"):
        native.gat_forward(*arrays[:2], args32[0][:, :8], *args32[1:3], negative_slope=0.2)


@needs_kernel
@pytest.mark.parametrize("d, scale", [(16, 1.0), (64, 1.0), (64, 30.0)], ids=["d16", "d64", "d64-wide-logits"])
def test_fused_gat_layer_matches_float64_autodiff(x64, d, scale):
    """The fused GAT layer (scores, attention, row normalisation: two native passes forward, two backward)
    against float64 autodiff of its composition on the segment backend: the value and the gradients of z,
    a_src and a_dst through both results (y, the next layer's input, and out = l2_normalize(y)), on a graph
    with isolated nodes (y = 0 there, out = 0); one thread and two give the same bits."""
    host = build_graph(skewed_train(seed=14))
    n = host.n_nodes
    rng = np.random.default_rng(14)
    z, w_y, w_out = rng.normal(size=(3, n, d))
    a_src, a_dst = rng.normal(size=(2, d)) * scale / np.sqrt(d)

    def loss(graph, z, a_src, a_dst, w_y, w_out):
        y, out = gat_layer(graph, z, a_src, a_dst)
        return jnp.sum(w_y * jnp.tanh(y)) + jnp.sum(w_out * jnp.tanh(3.0 * out))

    want = jax.value_and_grad(loss, argnums=(1, 2, 3))(
        to_device(host, "segment"), *(jnp.asarray(a, jnp.float64) for a in (z, a_src, a_dst, w_y, w_out)))
    native_graph = to_device(host, "native")
    args32 = [jnp.asarray(a, jnp.float32) for a in (z, a_src, a_dst, w_y, w_out)]
    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(1, 2, 3)))(native_graph, *args32))
    assert "itemjax_gat_layer_forward_f32" in jaxpr and "itemjax_gat_layer_backward_f32" in jaxpr
    assert "itemjax_gat_forward_f32" not in jaxpr
    got = jax.jit(jax.value_and_grad(loss, argnums=(1, 2, 3)))(native_graph, *args32)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
    for name, a, b in zip(("z", "a_src", "a_dst"), got[1], want[1]):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b), rtol=1e-4, atol=1e-4 * max(1.0, scale),
                                   err_msg=name)
    y, out = gat_layer(native_graph, *args32[:3])
    isolated = np.asarray(jnp.diff(native_graph.indptr)) == 0
    assert isolated.any() and np.all(np.asarray(y)[isolated] == 0) and np.all(np.asarray(out)[isolated] == 0)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out)[~isolated], axis=1), 1.0, rtol=1e-5)
    arrays = (native_graph.indptr, native_graph.indices, *args32[:3])
    one = native.gat_layer_forward(*arrays, negative_slope=0.2, eps=1e-12, threads=1)
    two = native.gat_layer_forward(*arrays, negative_slope=0.2, eps=1e-12, threads=2)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    residuals = (*one[2:4], one[0], *one[4:])  # src, dst, y, row_max, den, scale
    back = [native.gat_layer_backward(*arrays, *residuals, args32[3], args32[4], negative_slope=0.2, eps=1e-12,
                                      threads=t) for t in (1, 2)]
    for a, b in zip(*back):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="a_src and a_dst"):
        native.gat_layer_forward(*arrays[:3], args32[1][:8], args32[2], negative_slope=0.2, eps=1e-12)


def test_config_accepts_native():
    assert TrainConfig(backend="native").backend == "native"
    assert TrainConfig(ppr_backend="native").ppr_backend == "native"


def test_fallback_when_the_library_is_missing(monkeypatch, capsys):
    """Without the library: ``--backend native`` runs csr (same values), ``csr_matmul(native=True)``
    runs BCSR and ``--ppr-backend native`` runs device, each after one line naming cause and fix."""
    host = build_graph(skewed_train(seed=10))
    x = jax.random.normal(jax.random.key(10), (host.n_nodes, 4), jnp.float32)
    native_graph = to_device(host, "native")  # the real kernel where built (csr otherwise)
    want = np.asarray(propagate(native_graph, x))
    matrix = random_csr(seed=11)
    arrays = device_arrays(matrix)
    operand = jnp.asarray(np.random.default_rng(11).normal(size=(matrix.shape[1], 3)), jnp.float32)
    want_matmul = np.asarray(csr_matmul(matrix.shape, *arrays, operand, native=True))
    train = skewed_train(n_users=12, n_items=15, n_pairs=60, seed=12)
    want_ppr = ppr_scores(train, np.arange(4), backend="device")
    capsys.readouterr()

    # the loader's own causes
    monkeypatch.setattr(native.KERNEL, "path", lambda: None)
    assert "was not built" in native.KERNEL.open()["reason"]
    monkeypatch.setenv("ITEMJAX_NATIVE", "0")
    assert native.KERNEL.open()["reason"] == "disabled by ITEMJAX_NATIVE=0"

    monkeypatch.setattr(native.KERNEL, "state", {"library": None, "path": None, "reason": "simulated: no library"})
    monkeypatch.setattr(native, "_noticed", set())
    assert not native.available() and not native_available()
    assert native.status() == {"available": False, "path": None, "reason": "simulated: no library"}
    with pytest.raises(RuntimeError, match="unavailable.*C\\+\\+ compiler"):
        native.spmm(*arrays, operand)
    graphs = [to_device(host, "native"), to_device(host, "native")]
    assert [g.backend for g in graphs] == ["csr", "csr"]
    np.testing.assert_allclose(np.asarray(propagate(graphs[0], x)), want, rtol=RTOL, atol=ATOL)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "--backend native" in lines[0] and "simulated: no library" in lines[0]
    assert "csr backend" in lines[0] and "C++ compiler" in lines[0] and "reinstall" in lines[0]

    np.testing.assert_allclose(np.asarray(csr_matmul(matrix.shape, *arrays, operand, native=True)), want_matmul,
                               rtol=RTOL, atol=ATOL)
    csr_matmul(matrix.shape, *arrays, operand, native=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "csr_matmul(native=True)" in lines[0], lines

    np.testing.assert_array_equal(ppr_scores(train, np.arange(4), backend="native"), want_ppr)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--ppr-backend native" in lines[0] and "device backend" in lines[0], lines


@needs_kernel
def test_ppr_native_equals_device():
    train = skewed_train(n_users=12, n_items=15, n_pairs=60, seed=12)
    users = np.arange(12)
    np.testing.assert_allclose(ppr_scores(train, users, backend="native"), ppr_scores(train, users, backend="device"),
                               rtol=1e-5, atol=1e-9)
