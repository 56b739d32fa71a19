"""Several devices give the same run as one (itemjax.parallel.distributed).

The test runs this file as a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(the other tests keep one CPU device). In the subprocess, for BPR and ITEM (uniform and PPR
negatives), both propagation backends and replicated / row-sharded ID tables, a few real
``train_step`` calls and one full-ranking evaluation run twice from the same seed: on a mesh
over the 4 devices and on a 1-device mesh (``jax.devices()[:1]``, tables replicated). The parent
compares parameters, losses and metrics (rtol 1e-4), and checks that the 4-device run really
was split (shardings of the placed state) and that sampling does not depend on the device count.
Several processes (``--distributed``, two CPU processes through jax.distributed) are tested by
tests/test_multiprocess.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.integration  # trains whole runs / starts subprocesses

N_DEVICES = 4
N_STEPS = 3
#: (name, loss, backend, shard_embeddings, neg_sampler, batch_size): batch sizes 250 / 30 do not
#: divide by 4 on purpose (uneven split inside the step).
CASES = [
    ("bpr-csr", "bpr", "csr", False, "uniform", 250),
    ("bpr-segment-sharded", "bpr", "segment", True, "uniform", 256),
    ("item-segment", "item", "segment", False, "mixed", 30),
    ("item-csr-sharded", "item", "csr", True, "mixed", 32),
]


# ----------------------------------------------------------------------------- subprocess side


def _synthetic_split(seed: int = 0):
    """~3000 interactions of 150 users x 103 items (odd sizes: table padding is exercised),
    with one user and one item without any interaction; 80/20 random train/test."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n_users, n_items, n = 150, 103, 3000
    users = rng.integers(1, n_users, n)  # user 0 isolated
    items = np.minimum(rng.zipf(1.6, n) - 1, n_items - 2)  # power law, item n_items-1 isolated
    matrix = sp.csr_matrix((np.ones(n, np.float32), (users, items)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1
    coo = matrix.tocoo()
    test_mask = rng.random(coo.nnz) < 0.2
    build = lambda m: sp.csr_matrix((np.ones(m.sum(), np.float32), (coo.row[m], coo.col[m])), shape=matrix.shape)
    return build(~test_mask), build(test_mask)


def _run_case(case, devices) -> dict:
    import jax

    from itemjax.config import TrainConfig
    from itemjax.parallel.distributed import make_mesh
    from itemjax.train.placement import Placement
    from itemjax.graph.bipartite import build_graph
    from itemjax.graph.ppr import hard_negative_table
    from itemjax.graph.propagation import to_device
    from itemjax.objective.sampling import make_train_data
    from itemjax.train.step import Batch, create_state, make_model, train_step

    name, loss, backend, shard, neg_sampler, batch_size = case
    train, test = _synthetic_split()
    config = TrainConfig(loss=loss, backend=backend, dim=16, layers=2, batch_size=batch_size, positives=8,
                         negatives=16, neg_sampler=neg_sampler, l2=1e-3, shard_embeddings=shard).resolve()
    hard = hard_negative_table(train, window=(2, 20)) if neg_sampler != "uniform" else None
    batch = Batch(graph=to_device(build_graph(train), backend), data=make_train_data(train, hard))
    model = make_model(config, *train.shape)
    init_key, train_key = jax.random.split(jax.random.PRNGKey(0))
    state = create_state(config, model, batch.graph, batch.data, init_key)

    placement = Placement(make_mesh(devices), shard_embeddings=shard)
    batch, state = placement.place_batch(batch), placement.place_state(state)
    train_key = placement.replicate(train_key)
    step = placement.jit_step(train_step, state)
    placed_specs = {
        "user_table": list(state.params["ids"]["user_embedding"].sharding.spec),
        "user_table_rows": int(state.params["ids"]["user_embedding"].shape[0]),
        "graph_data": list(batch.graph.data.sharding.spec),
        "n_devices": len(state.params["ids"]["user_embedding"].sharding.device_set),
    }
    losses = []
    for _ in range(N_STEPS):
        state, metrics = step(state, batch, train_key)
        losses.append(float(metrics["loss"]))
    with jax.set_mesh(placement.mesh):  # the executable the steps ran (cached: no new compilation)
        compiled = step.jitted.lower(state, batch, train_key).compile().as_text()
    user_emb, item_emb = placement.embed(state, batch.graph)
    result = placement.evaluate(user_emb, item_emb, train, test, ks=(5, 20), chunk_size=64)
    params = jax.tree.map(np.asarray, placement.model_params(state))
    return {
        "losses": losses,
        "metrics": result,
        "user_table": params["ids"]["user_embedding"].tolist(),
        "item_table": params["ids"]["item_embedding"].tolist(),
        "user_emb": np.asarray(user_emb).tolist(),
        "step": int(state.step),
        "placed": placed_specs,
        "step_compilations": step.jitted._cache_size(),
        "step_all_reduces": compiled.count("all-reduce("),
    }


def _worker(out_path: str) -> None:
    import jax

    devices = jax.devices()
    assert len(devices) == N_DEVICES, devices
    results = {}
    for case in CASES:
        results[case[0]] = {"many": _run_case(case, devices), "one": _run_case(case[:3] + (False,) + case[4:], devices[:1])}
    pathlib.Path(out_path).write_text(json.dumps(results))


# ----------------------------------------------------------------------------- test side


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed") / "results.json"
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={N_DEVICES}", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_four_devices_match_one(runs, name):
    many, one = runs[name]["many"], runs[name]["one"]
    assert many["step"] == one["step"] == N_STEPS
    np.testing.assert_allclose(many["losses"], one["losses"], rtol=1e-4)
    np.testing.assert_allclose(many["user_table"], one["user_table"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(many["item_table"], one["item_table"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(many["user_emb"], one["user_emb"], rtol=1e-4, atol=1e-6)
    for metric, value in one["metrics"].items():
        np.testing.assert_allclose(many["metrics"][metric], value, rtol=1e-4, err_msg=metric)
    # The steps did train: the loss moved and the parameters left their initial values' scale.
    assert one["losses"][0] != one["losses"][-1]


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_placement_is_what_was_asked(runs, name):
    case = dict((c[0], c) for c in CASES)[name]
    many, one = runs[name]["many"]["placed"], runs[name]["one"]["placed"]
    assert many["n_devices"] == N_DEVICES and one["n_devices"] == 1
    assert many["graph_data"] == []  # graph replicated: P()
    if case[3]:  # sharded tables: rows split over `data`, padded 150 -> 152 (a multiple of 4)
        assert many["user_table"] == ["data", None]
        assert many["user_table_rows"] == 152
    else:
        assert many["user_table"] == []
        assert many["user_table_rows"] == 150
    # The 4-device step really splits its rows: XLA sums the partial losses / gradients across
    # devices (all-reduce); the 1-device step has nothing to sum.
    assert runs[name]["many"]["step_all_reduces"] > 0
    assert runs[name]["one"]["step_all_reduces"] == 0
    # one compilation of the step serves every step, on 4 devices as on 1
    assert runs[name]["many"]["step_compilations"] == runs[name]["one"]["step_compilations"] == 1


# ----------------------------------------------------------------------------- host allocator

_FAULTS_SCRIPT = """
import resource, sys
import numpy as np
from itemjax.parallel.host_memory import tune_host_allocator

applied = tune_host_allocator() if sys.argv[1] == "tuned" else False
def faults_of_one_buffer():  # a fresh 64 MiB buffer, written once, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = np.empty(16 << 20, np.float32)
    buffer.fill(1.0)
    del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_buffer()
print(applied, min(faults_of_one_buffer() for _ in range(3)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_allocator_reuses_freed_buffers():
    """A freed 64 MiB buffer is page-faulted in again on every reuse by default (glibc serves it
    with mmap and returns it with munmap), but not once tune_host_allocator has run."""
    runs = {}
    for mode in ("default", "tuned"):
        env = {**os.environ, "ITEMJAX_MALLOC_TUNING": "1"}
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], env=env, capture_output=True, text=True,
                             timeout=60, check=True).stdout.split()
        runs[mode] = (out[0] == "True", int(out[1]))
    # 16384 faults with 4 KiB pages, ~500 with transparent huge pages; 0 when the heap keeps it
    assert runs["default"][0] is False and runs["default"][1] > 100
    assert runs["tuned"][0] is True and runs["tuned"][1] < runs["default"][1] / 4


def test_allocator_tuning_can_be_switched_off(monkeypatch):
    from itemjax.parallel.host_memory import tune_host_allocator

    monkeypatch.setenv("ITEMJAX_MALLOC_TUNING", "0")
    assert tune_host_allocator() is False


if __name__ == "__main__":
    _worker(sys.argv[1])
