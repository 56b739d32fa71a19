"""benchmarks/peers.py compares like with like: on a tiny graph, in float64, its torch.sparse port
gives itemjax's LightGCN final embeddings, BPR loss (with the L2 term) and Adam step for the same
parameters and batch, and PyG's LightGCN gives the same final embeddings, scores and BPR term
(to float32 precision where itemjax computes in float32: its stored ``A_hat`` values, its scores).

The itemjax side is the real one: the model of ``itemjax.model.models``, the BPR objective that
``make_objective`` builds for the benchmark's config and ``itemjax.train.step.train_step``; its
samplers are replaced by the fixed batch (so both sides see the same triples)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
import scipy.sparse as sp

PEERS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "peers.py"
N_USERS, N_ITEMS, DIM, LAYERS = 7, 9, 4, 3
LR, L2 = 0.01, 0.05  # a large l2, so that a wrong L2 term shows in the loss


def _load_peers():
    spec = importlib.util.spec_from_file_location("peers_benchmark", PEERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peers = _load_peers()


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed: the peers extra, pip install -e '.[peers]'")


@pytest.fixture(scope="module")
def case():
    """A tiny training matrix (item 8 has no interaction: an isolated node), its graph, parameters, a batch."""
    from itemjax.graph.bipartite import build_graph

    rng = np.random.default_rng(3)
    dense = rng.random((N_USERS, N_ITEMS)) < 0.4
    dense[:, -1] = False
    dense[np.arange(N_USERS), rng.integers(0, N_ITEMS - 1, N_USERS)] = True  # every user has an item
    train = sp.csr_matrix(dense.astype(np.float32))
    users = np.array([0, 1, 2, 3, 4, 5, 6, 2, 5, 0], np.int64)
    pos = np.array([rng.choice(np.flatnonzero(dense[u])) for u in users], np.int64)
    neg = np.array([rng.choice(np.flatnonzero(~dense[u])) for u in users], np.int64)
    return dict(train=train, graph=build_graph(train), users=users, pos=pos, neg=neg,
                user_init=rng.normal(0, 0.5, (N_USERS, DIM)), item_init=rng.normal(0, 0.5, (N_ITEMS, DIM)))


def _itemjax(case, monkeypatch):
    """``(model, params, batch, objective)`` in float64, the objective's samplers fixed to the case's batch."""
    import jax.numpy as jnp

    from itemjax.config import TrainConfig
    from itemjax.graph.propagation import to_device
    from itemjax.model.models import LightGCN
    from itemjax.objective import sampling
    from itemjax.objective.objectives import Batch, make_objective

    users, pos, neg = (jnp.asarray(case[k], jnp.int32) for k in ("users", "pos", "neg"))
    monkeypatch.setattr(sampling, "sample_pairs", lambda key, data, batch_size, user_sampling="degree": (users, pos))
    monkeypatch.setattr(sampling, "negatives", lambda key, data, u, n, hard_share: neg[:, None])
    config = TrainConfig(model="lightgcn", loss="bpr", dim=DIM, layers=LAYERS, batch_size=len(case["users"]),
                         lr=LR, l2=L2).resolve()
    model = LightGCN(N_USERS, N_ITEMS, dim=DIM, n_layers=LAYERS, dtype=jnp.float64)
    params = {"ids": {"user_embedding": jnp.asarray(case["user_init"]),
                      "item_embedding": jnp.asarray(case["item_init"])}}
    batch = Batch(graph=to_device(case["graph"], "csr"), data=sampling.make_train_data(case["train"]))
    return model, params, batch, make_objective(config), config


def _port(case, torch, layout):
    adjacency = peers.torch_adjacency(case["graph"], layout, torch.float64)
    return peers.TorchSparseLightGCN(adjacency, case["user_init"], case["item_init"], LAYERS)


def _batch(case, torch):
    return tuple(torch.as_tensor(case[k]) for k in ("users", "pos", "neg"))


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_torch_port_matches_itemjax(case, torch, layout, x64, monkeypatch):
    import jax

    from itemjax.train.step import TrainState, train_step

    model, params, batch, objective, config = _itemjax(case, monkeypatch)
    port = _port(case, torch, layout)

    user_emb, item_emb = model.apply({"params": params}, batch.graph)
    assert user_emb.dtype == np.float64
    with torch.no_grad():
        port_users, port_items = port.embeddings()
    np.testing.assert_allclose(port_users.numpy(), np.asarray(user_emb), rtol=0, atol=1e-12)
    np.testing.assert_allclose(port_items.numpy(), np.asarray(item_emb), rtol=0, atol=1e-12)
    # the isolated item: its ego row, then zero rows, averaged
    np.testing.assert_allclose(port_items.numpy()[-1], case["item_init"][-1] / (LAYERS + 1), rtol=0, atol=1e-15)

    loss, aux = objective(params, model.apply, batch, jax.random.PRNGKey(0), 0)
    with torch.no_grad():
        port_loss, port_rank = port.bpr_loss(*_batch(case, torch), config.l2)
    # itemjax's objectives take the scores in float32 whatever the compute dtype: float32 precision
    assert float(port_rank) == pytest.approx(float(aux["rank_loss"]), rel=1e-6)
    assert float(port_loss) == pytest.approx(float(loss), rel=1e-6)
    assert float(loss) - float(aux["rank_loss"]) > 1e-3  # the L2 term is really compared

    # one training step: gradients and the Adam update of both tables
    import optax

    state = TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(config.lr), objective=objective)
    state, metrics = train_step(state, batch, jax.random.PRNGKey(1))
    optimizer = torch.optim.Adam(port.parameters(), lr=config.lr)
    step_loss = peers.torch_step(port, optimizer, *_batch(case, torch), config.l2)
    assert float(step_loss) == pytest.approx(float(metrics["loss"]), rel=1e-6)
    moved = np.abs(port.item_embedding.detach().numpy() - case["item_init"]).max()
    assert moved > 0.5 * config.lr  # Adam's first step moves a parameter by about lr
    for name, table in (("user_embedding", port.user_embedding), ("item_embedding", port.item_embedding)):
        np.testing.assert_allclose(table.detach().numpy(), np.asarray(state.params["ids"][name]), rtol=0, atol=1e-7)


def test_pyg_lightgcn_matches_itemjax(case, torch, x64, monkeypatch):
    pytest.importorskip("torch_geometric", reason="torch_geometric is not installed: the peers extra, "
                                                  "pip install -e '.[peers]'")
    import jax
    import jax.numpy as jnp

    model, params, batch, objective, config = _itemjax(case, monkeypatch)
    pyg = peers.pyg_lightgcn(case["user_init"], case["item_init"], LAYERS)
    edge_index = peers.pyg_edge_index(case["graph"])
    assert edge_index.shape == (2, 2 * case["train"].nnz)

    user_emb, item_emb = model.apply({"params": params}, batch.graph)
    with torch.no_grad():
        final = pyg.get_embedding(edge_index)
    assert final.dtype == torch.float64
    # PyG normalises the edges itself in float64; itemjax's A_hat values are stored in float32
    np.testing.assert_allclose(final.numpy(), np.concatenate([user_emb, item_emb]), rtol=0, atol=1e-6)

    users, pos, neg = _batch(case, torch)
    label_index = peers.pyg_label_index(users, pos, neg, N_USERS)
    with torch.no_grad():
        pos_rank, neg_rank = pyg(edge_index, label_index).chunk(2)
        bpr = pyg.recommendation_loss(pos_rank, neg_rank, node_id=label_index.unique(), lambda_reg=0.0)
    u = user_emb[case["users"]]
    np.testing.assert_allclose(pos_rank.numpy(), jnp.sum(u * item_emb[case["pos"]], -1), rtol=0, atol=1e-6)
    np.testing.assert_allclose(neg_rank.numpy(), jnp.sum(u * item_emb[case["neg"]], -1), rtol=0, atol=1e-6)
    _, aux = objective(params, model.apply, batch, jax.random.PRNGKey(0), 0)
    assert float(bpr) == pytest.approx(float(aux["rank_loss"]), abs=1e-6)


def test_missing_torch_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        peers.main(["--datasets", "ml-100k"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "torch package" in message and 'pip install -e ".[peers]"' in message
