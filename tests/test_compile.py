"""Accelerator readiness: static shapes (one compilation serves every step and every
evaluation) and the optional bfloat16 compute dtype.

Compilations are counted with JAX's documented ``jax.log_compiles`` switch: every XLA
compilation logs ``"Finished XLA compilation of <fn> ..."`` (logger ``jax._src.dispatch``),
captured here with pytest's ``caplog``.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from itemjax.config import TrainConfig
from itemjax.parallel.distributed import make_mesh
from itemjax.train.placement import Placement
from itemjax.graph.bipartite import build_graph
from itemjax.model.models import id_embeddings
from itemjax.graph.ppr import hard_negative_table
from itemjax.graph.propagation import to_device
from itemjax.objective.sampling import make_train_data
from itemjax.train.step import Batch, create_state, make_model, train_step

COMPILED = "Finished XLA compilation of"


def synthetic_split(seed=0, n_users=120, n_items=90, n=2500):
    """Power-law items, uniform users, 80/20 random train/test (scipy CSR)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    items = np.minimum(rng.zipf(1.5, n) - 1, n_items - 1)
    pairs = np.unique(users * n_items + items)
    users, items = pairs // n_items, pairs % n_items
    test = rng.random(len(pairs)) < 0.2
    build = lambda m: sp.csr_matrix((np.ones(m.sum(), np.float32), (users[m], items[m])), shape=(n_users, n_items))
    return build(~test), build(test)


def setup(loss, backend, neg_sampler="uniform", compute_dtype="float32", batch_size=128):
    train, test = synthetic_split()
    config = TrainConfig(loss=loss, backend=backend, dim=16, layers=2, batch_size=batch_size, positives=8,
                         negatives=16, neg_sampler=neg_sampler, compute_dtype=compute_dtype, l2=1e-3).resolve()
    hard = hard_negative_table(train, window=(2, 20)) if neg_sampler != "uniform" else None
    batch = Batch(graph=to_device(build_graph(train), backend), data=make_train_data(train, hard))
    model = make_model(config, *train.shape)
    state = create_state(config, model, batch.graph, batch.data, jax.random.PRNGKey(0))
    return config, batch, state, train, test


def compilations(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(COMPILED)]


@pytest.mark.parametrize("loss, backend, neg_sampler", [("bpr", "csr", "uniform"), ("item", "segment", "mixed")])
def test_no_recompilation_after_the_first_epoch(caplog, loss, backend, neg_sampler):
    """The host loop of itemjax.train.run.fit (steps, loss stack, embed, evaluate) compiles during its
    first epoch only: two more epochs, each with an evaluation, compile nothing."""
    _, batch, state, train, test = setup(loss, backend, neg_sampler)
    placement = Placement(make_mesh())
    batch, state = placement.place_batch(batch), placement.place_state(state)
    key = placement.replicate(jax.random.PRNGKey(1))
    step = placement.jit_step(train_step, state)

    def epoch(state, n_steps=4):
        losses = []
        for _ in range(n_steps):
            state, metrics = step(state, batch, key)
            losses.append(metrics["loss"])
        losses = np.asarray(jax.device_get(jnp.stack(losses)))
        user_emb, item_emb = placement.embed(state, batch.graph)
        result = placement.evaluate(user_emb, item_emb, train, test, ks=(10, 20), chunk_size=32)
        return state, losses, result

    caplog.set_level(logging.WARNING)
    with jax.log_compiles(True):
        state, _, first = epoch(state)
        warmup = compilations(caplog)
        caplog.clear()
        state, losses, second = epoch(state)
        state, losses, third = epoch(state)
        later = compilations(caplog)
    assert any("train_step" in m for m in warmup), warmup  # the counter sees compilations
    assert later == [], later
    assert int(state.step) == 12 and np.all(np.isfinite(losses))
    assert second["ndcg@20"] != third["ndcg@20"] or second["recall@20"] != third["recall@20"]  # it trained
    assert step.jitted._cache_size() == 1


def test_a_new_shape_does_recompile(caplog):
    """Control for the counter: an evaluation with another chunk size is a new static shape."""
    _, batch, state, train, test = setup("bpr", "csr")
    user_emb, item_emb = Placement(make_mesh()).embed(state, batch.graph)
    caplog.set_level(logging.WARNING)
    placement = Placement(make_mesh())
    with jax.log_compiles(True):
        placement.evaluate(user_emb, item_emb, train, test, ks=(20,), chunk_size=40)
        caplog.clear()
        placement.evaluate(user_emb, item_emb, train, test, ks=(20,), chunk_size=40)
        assert compilations(caplog) == []
        placement.evaluate(user_emb, item_emb, train, test, ks=(20,), chunk_size=24)
        assert any("_chunk_metrics" in m for m in compilations(caplog))


# ----------------------------------------------------------------------------- bfloat16 compute


@pytest.mark.parametrize("loss, neg_sampler", [("bpr", "uniform"), ("item", "mixed")])
def test_bfloat16_compute_matches_float32_loosely(loss, neg_sampler):
    """Same params, same key: the bf16 model propagates and scores in bf16, params, loss and
    gradients stay float32, and the loss is within bf16 precision of the float32 one."""
    _, batch, state32, _, _ = setup(loss, "segment", neg_sampler)
    _, _, state16, _, _ = setup(loss, "segment", neg_sampler, compute_dtype="bfloat16")
    params = state32.params  # identical init (same key, float32 params in both)
    assert jax.tree.map(lambda a: a.dtype, state16.params) == jax.tree.map(lambda a: a.dtype, params)
    key = jax.random.PRNGKey(3)

    def loss_and_grad(state):
        f = lambda p: state.objective(p, state.apply_fn, batch, key, 0)
        return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    (l32, _), g32 = loss_and_grad(state32)
    (l16, _), g16 = loss_and_grad(state16)
    user16, _ = state16.apply_fn({"params": params}, batch.graph)
    user32, _ = state32.apply_fn({"params": params}, batch.graph)
    assert user16.dtype == jnp.bfloat16 and user32.dtype == jnp.float32
    assert l16.dtype == jnp.float32 and l32.dtype == jnp.float32
    assert float(l16) != float(l32)  # the cast took effect...
    np.testing.assert_allclose(float(l16), float(l32), rtol=2e-2)  # ...within bf16 precision
    for a, b in zip(id_embeddings(g16), id_embeddings(g32)):
        assert a.dtype == jnp.float32
        a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
        cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cosine > 0.99, cosine


def test_cpu_fusions_reach_xla_and_keep_the_step():
    """``--cpu-fusions``: GAT defaults to none, other models to XLA's choice; the option becomes this
    computation's list of YNNPACK fusion kinds (none: no ``__ynn_fusion`` in the compiled CPU program), and
    the step computes the same update with and without the fusions (float32 tolerance)."""
    from itemjax.config import ConfigError
    from itemjax.train.placement import step_compiler_options

    assert TrainConfig(model="gat").resolve().cpu_fusions == "none"
    assert TrainConfig(model="lightgcn").resolve().cpu_fusions == "xla"
    assert TrainConfig(model="gat", cpu_fusions="dot,reduce").resolve().cpu_fusions == "dot,reduce"
    with pytest.raises(ConfigError, match="--cpu-fusions 'dots'.*individual_dot"):
        TrainConfig(cpu_fusions="dots").resolve()
    assert step_compiler_options("xla", "cpu") == {} and step_compiler_options("none", "gpu") == {}
    assert step_compiler_options("none", "cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert step_compiler_options("dot,individual_dot", "cpu") == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}

    _, batch, state, _, _ = setup("item", "csr")
    placement = Placement(make_mesh())
    batch, state = placement.place_batch(batch), placement.place_state(state)
    key = placement.replicate(jax.random.PRNGKey(1))
    results, programs = {}, {}
    for fusions in ("xla", "none"):
        step = placement.jit_step(train_step, state, step_compiler_options(fusions, "cpu"))
        with jax.set_mesh(placement.mesh):
            programs[fusions] = step.jitted.lower(state, batch, key).compile().as_text()
        results[fusions] = jax.device_get(step(state, batch, key)[0].params)
    if jax.default_backend() == "cpu":
        assert "__ynn_fusion" not in programs["none"]
    for a, b in zip(jax.tree.leaves(results["xla"]), jax.tree.leaves(results["none"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
