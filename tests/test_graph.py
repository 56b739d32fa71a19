"""Tests for itemjax.graph.bipartite: A_hat against float64 loop references, padding, jraph view."""

import math

import jraph
import numpy as np
import pytest
import scipy.sparse

from itemjax.errors import ConfigError, DataError
from itemjax.graph.bipartite import Graph, bucket_size, build_graph

# Hand-made graph: 4 users, 4 items. User 3 has no interactions; item 2 has none.
# (2, 3) is listed twice and (0, 1) carries a rating of 5: values and duplicates are ignored.
N_USERS, N_ITEMS = 4, 4
PAIRS = [(0, 0), (0, 1), (1, 1), (1, 3), (2, 0), (2, 1), (2, 3), (2, 3)]
VALUES = [1.0, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
UNIQUE_PAIRS = sorted(set(PAIRS))


def hand_train() -> scipy.sparse.csr_matrix:
    users, items = zip(*PAIRS)
    return scipy.sparse.coo_matrix((VALUES, (users, items)), shape=(N_USERS, N_ITEMS)).tocsr()


def random_train(n_users=60, n_items=80, n_pairs=1000, seed=0) -> scipy.sparse.csr_matrix:
    """Random interactions (~2k directed edges) leaving the last user and item isolated."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users - 1, size=n_pairs)
    items = rng.integers(0, n_items - 1, size=n_pairs)
    return scipy.sparse.csr_matrix(
        (np.ones(n_pairs), (users, items)), shape=(n_users, n_items)
    )


def dense_reference(train: scipy.sparse.spmatrix) -> np.ndarray:
    """A_hat in float64 from plain loops: A[u, U + i] = A[U + i, u] = 1, then 1/sqrt(d_r d_c)."""
    n_users, n_items = train.shape
    n_nodes = n_users + n_items
    adjacency = np.zeros((n_nodes, n_nodes))
    coo = train.tocoo()
    for user, item in zip(coo.row, coo.col):
        adjacency[user, n_users + item] = 1.0
        adjacency[n_users + item, user] = 1.0
    degree = [sum(adjacency[r]) for r in range(n_nodes)]
    a_hat = np.zeros((n_nodes, n_nodes))
    for r in range(n_nodes):
        for c in range(n_nodes):
            if adjacency[r, c]:
                a_hat[r, c] = 1.0 / math.sqrt(degree[r] * degree[c])
    return a_hat


def dense_from_edges(graph: Graph) -> np.ndarray:
    """Accumulates the padded edge list into a dense [n_nodes + 1, n_nodes + 1] matrix."""
    dense = np.zeros((graph.n_nodes + 1, graph.n_nodes + 1))
    for sender, receiver, weight in zip(graph.senders, graph.receivers, graph.weights):
        dense[receiver, sender] += weight
    return dense


def test_hand_graph_matches_loop_reference():
    graph = build_graph(hand_train())
    reference = dense_reference(hand_train())
    assert (graph.n_users, graph.n_items, graph.n_nodes) == (4, 4, 8)
    assert graph.n_edges == 2 * len(UNIQUE_PAIRS) == 14
    np.testing.assert_allclose(graph.to_csr().toarray(), reference, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(reference, reference.T)
    # Spot value: user 2 (degree 3) and item 1 (node 5, degree 3): 1 / sqrt(9).
    assert graph.to_csr()[2, 5] == pytest.approx(1 / 3)
    # Edge arrays encode the same matrix; the padding row/column only holds zeros.
    from_edges = dense_from_edges(graph)
    np.testing.assert_allclose(from_edges[:-1, :-1], reference, rtol=1e-6, atol=0)
    assert not from_edges[-1].any() and not from_edges[:, -1].any()


def test_isolated_nodes_have_degree_zero_and_empty_rows():
    graph = build_graph(hand_train())
    expected_degree = [2, 2, 3, 0, 2, 3, 0, 2]  # users 0..3, items 0..3 (item 2 = node 6)
    np.testing.assert_array_equal(graph.degrees(), expected_degree)
    for node in (3, 6):
        assert graph.indptr[node] == graph.indptr[node + 1]
        assert node not in graph.indices
        assert node not in graph.senders and node not in graph.receivers
    assert np.all(np.isfinite(graph.data)) and np.all(graph.data > 0)


def test_array_layout_dtypes_and_padding():
    graph = build_graph(hand_train())
    e_pad = bucket_size(graph.n_edges)
    assert graph.senders.shape == graph.receivers.shape == graph.weights.shape == (e_pad,)
    assert graph.senders.dtype == graph.receivers.dtype == np.int32
    assert graph.weights.dtype == graph.data.dtype == np.float32
    assert graph.indptr.dtype == graph.indices.dtype == np.int32
    assert graph.indptr.shape == (graph.n_nodes + 1,)
    assert graph.indices.shape == graph.data.shape == (graph.n_edges,)
    real = slice(0, graph.n_edges)
    assert np.all(graph.senders[real] < graph.n_nodes) and np.all(graph.receivers[real] < graph.n_nodes)
    # Real edges join a user and an item, in both directions.
    is_user = graph.senders[real] < graph.n_users
    assert np.all(is_user != (graph.receivers[real] < graph.n_users))
    assert is_user.sum() == graph.n_edges // 2
    # Padding: dummy node n_nodes, weight 0; receivers sorted (CSR row order).
    assert np.all(graph.senders[graph.n_edges:] == graph.n_nodes)
    assert np.all(graph.receivers[graph.n_edges:] == graph.n_nodes)
    assert np.all(graph.weights[graph.n_edges:] == 0)
    assert np.all(np.diff(graph.receivers) >= 0)
    # Edge list and CSR hold the same entries in the same order.
    np.testing.assert_array_equal(graph.senders[real], graph.indices)
    np.testing.assert_array_equal(graph.weights[real], graph.data)
    np.testing.assert_array_equal(np.diff(graph.indptr), np.bincount(graph.receivers[real], minlength=graph.n_nodes))
    with pytest.raises(ValueError):
        graph.senders[0] = 1  # arrays are read-only


def test_padding_never_changes_the_graph():
    base = build_graph(hand_train())
    for pad_to in (base.n_edges, base.n_edges + 1, 100):
        padded = build_graph(hand_train(), pad_to=pad_to)
        assert padded.senders.shape == (pad_to,)
        for name in ("senders", "receivers", "weights"):
            np.testing.assert_array_equal(getattr(padded, name)[: base.n_edges], getattr(base, name)[: base.n_edges])
        for name in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(padded, name), getattr(base, name))
        np.testing.assert_array_equal(dense_from_edges(padded), dense_from_edges(base))
    with pytest.raises(ConfigError, match="pad_to"):
        build_graph(hand_train(), pad_to=base.n_edges - 1)


def test_to_jraph_round_trip():
    graph = build_graph(hand_train(), pad_to=20)
    graphs_tuple = graph.to_jraph()
    assert isinstance(graphs_tuple, jraph.GraphsTuple)
    assert graphs_tuple.nodes is None
    np.testing.assert_array_equal(graphs_tuple.senders, graph.senders)
    np.testing.assert_array_equal(graphs_tuple.receivers, graph.receivers)
    np.testing.assert_array_equal(graphs_tuple.edges, graph.weights[:, None])
    np.testing.assert_array_equal(graphs_tuple.n_node, [graph.n_nodes, 1])
    np.testing.assert_array_equal(graphs_tuple.n_edge, [graph.n_edges, 20 - graph.n_edges])
    assert graphs_tuple.n_node.sum() == graph.n_nodes + 1  # dummy node included
    edge_mask = np.asarray(jraph.get_edge_padding_mask(graphs_tuple))
    np.testing.assert_array_equal(edge_mask, np.arange(20) < graph.n_edges)


def test_random_bipartite_graph_matches_loop_reference():
    train = random_train()
    graph = build_graph(train)
    reference = dense_reference(train)
    n_pairs = len(set(zip(*train.nonzero())))
    assert graph.n_edges == 2 * n_pairs and 1500 < graph.n_edges < 2100
    np.testing.assert_allclose(graph.to_csr().toarray(), reference, rtol=1e-6, atol=0)
    np.testing.assert_allclose(dense_from_edges(graph)[:-1, :-1], reference, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(graph.degrees(), (reference > 0).sum(axis=1))
    assert graph.degrees()[train.shape[0] - 1] == 0 and graph.degrees()[-1] == 0


def test_bucket_size_ladder():
    sizes = [bucket_size(n) for n in range(0, 5000)]
    assert sizes[:9] == [8] * 9
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))  # monotone
    for n, size in enumerate(sizes):
        assert size >= n
        if n >= 8:
            assert size <= 1.125 * n
        # Of the form m * 2**k with m in 8..15.
        k = size.bit_length() - 4
        assert size % (1 << k) == 0 and 8 <= size >> k <= 15
    assert [bucket_size(n) for n in (9, 17, 33, 100, 1_620_256)] == [9, 18, 36, 104, 1_703_936]
    assert len(set(sizes[1000:2000])) <= 9  # few distinct shapes: one compilation serves many graphs
    with pytest.raises(ConfigError):
        bucket_size(-1)


def test_bad_input_raises_data_error():
    with pytest.raises(DataError, match="scipy.sparse"):
        build_graph(np.ones((3, 4)))
