#!/usr/bin/env python
"""One LightGCN + BPR training step of itemjax against two PyTorch peers, in one process.

    python benchmarks/peers.py                                  # ml-100k and gowalla, 20 repeats
    python benchmarks/peers.py --datasets ml-100k --repeats 5 --out benchmarks/out/peers_smoke.json
    python benchmarks/peers.py --datasets gowalla --backends csr,native    # both CPU backends of itemjax

Needs the ``peers`` extra (``pip install -e ".[peers]"``: torch 2.13.0 CPU and torch_geometric).
A step is forward + backward + Adam update of LightGCN (dim 64, 3 layers, mean of the layers)
with the BPR loss on a batch of 2048 (user, positive, negative) triples plus LightGCN's L2 term on
the batch's ego embeddings, on each dataset's training graph (``itemjax.train.run.prepare``,
no validation carve-out, so every training interaction is an edge):

* ``itemjax``: the step training runs (``benchmarks/step_time.py``'s :func:`step_runner`:
  ``itemjax.train.step.train_step`` through ``Placement.jit_step``, csr backend on CPU), BPR with
  its defaults for LightGCN (lr, l2, LightGCN's user-uniform pair sampler). It draws its batch on
  the device inside the step, a new one each step, and that sampling is inside its time.
* ``torch.sparse (coo|csr)``: :class:`TorchSparseLightGCN`, a port in the style of the
  LightGCN-PyTorch reference written from the paper's equations: the normalised adjacency as one
  torch sparse tensor (COO or CSR, ``--torch-layouts``), ``torch.sparse.mm`` per layer, the mean of
  the layers, BPR on the gathered rows, the same L2 term, ``torch.optim.Adam``.
* ``PyG``: ``torch_geometric.nn.models.LightGCN`` as PyG's LightGCN example trains it: forward on
  the ``edge_index`` of the training graph (its ``LGConv`` layers normalise the edges in each
  forward) over the batch's positive and negative edges, then ``recommendation_loss`` (its BPR,
  whose L2 term covers the batch's distinct nodes), ``torch.optim.Adam``.

The two peers start from itemjax's initial embeddings, with the same lr and l2, and train on one
fixed batch drawn by itemjax's own samplers (``itemjax.objective.sampling``: the pairs of BPR's
default user sampling, uniform negatives); their batch is prepared outside the timed step (the
reference implementations also sample on the host, before the step). That the three compute
the same thing is checked by tests/test_peers.py.

Each implementation is warmed up (``--warmup`` steps, compilation included), then timed in
``--repeats`` rounds, each running every implementation once in turn (``step_time.median_seconds``);
the median is reported with the ratios itemjax / torch.sparse (the faster layout) and itemjax / PyG.
``--threads`` sets torch's intra-op threads (default: every core, as XLA uses). Writes JSON
(``--out``) with the load averages (``os.getloadavg``) before and after each dataset and the versions.
Time on a quiet machine: under load torch's OpenMP threads lose far more than XLA's (ml-100k at load
average 13 on 2 cores: the torch.sparse step took 1.4 s with 2 threads, 0.13 s with 1).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time
import warnings

import numpy as np

#: PyPI extra of the peers (pyproject.toml)
EXTRA = "peers"


def require_extra(module: str, hint: str = ""):
    """``import module``, or print one line naming the extra that installs it and exit 2
    (the project's status for a problem the user can fix)."""
    from itemjax.errors import ConfigError, require_extra as require

    try:
        return require(module, extra=EXTRA, feature="benchmarks/peers.py")
    except ConfigError as e:
        print(f"error: {e} (from a checkout: pip install -e \".[{EXTRA}]\"){hint}", file=sys.stderr)
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------- torch.sparse port


def torch_adjacency(graph, layout: str = "coo", dtype=None):
    """``A_hat`` of an :class:`itemjax.graph.bipartite.Graph` (the same normalised values) as a torch
    sparse ``[n_nodes, n_nodes]`` tensor: ``"coo"`` (coalesced) or ``"csr"``."""
    import torch

    dtype = dtype or torch.float32
    n = graph.n_nodes
    values = torch.tensor(np.asarray(graph.data), dtype=dtype)
    if layout == "coo":
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(graph.indptr))
        indices = torch.as_tensor(np.stack([rows, np.asarray(graph.indices, np.int64)]))
        return torch.sparse_coo_tensor(indices, values, (n, n), check_invariants=True).coalesce()
    if layout == "csr":
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(torch.as_tensor(np.asarray(graph.indptr, np.int64)),
                                           torch.as_tensor(np.asarray(graph.indices, np.int64)), values, (n, n),
                                           check_invariants=True)
    raise ValueError(f"unknown torch sparse layout {layout!r}; use coo or csr")


class TorchSparseLightGCN:
    """LightGCN (He et al., SIGIR 2020) with BPR in plain PyTorch, propagating with ``torch.sparse.mm``.

    With ego embeddings ``E^0 = [P; Q]`` (users then items) and ``A_hat = D^-1/2 A D^-1/2``::

        E^{k+1} = A_hat E^k,    E = (1 / (K + 1)) sum_{k=0..K} E^k
        L = mean_b softplus(<e_u, e_n> - <e_u, e_p>) + l2 * (||P_u||^2 + ||Q_p||^2 + ||Q_n||^2) / (2 B)

    over the batch's triples ``(u, p, n)``, the L2 term on the ego rows the batch gathers.
    ``user_init`` / ``item_init`` ([n_users, d], [n_items, d]) set the parameters and their dtype.
    """

    def __init__(self, adjacency, user_init, item_init, n_layers: int):
        import torch

        self.adjacency = adjacency
        self.n_layers = n_layers
        self.user_embedding = torch.nn.Parameter(torch.tensor(np.asarray(user_init)))
        self.item_embedding = torch.nn.Parameter(torch.tensor(np.asarray(item_init)))
        self.n_users = self.user_embedding.shape[0]
        self.n_items = self.item_embedding.shape[0]

    def parameters(self):
        return [self.user_embedding, self.item_embedding]

    def embeddings(self):
        """Final ``(users [n_users, d], items [n_items, d])``: the mean of the K + 1 layers."""
        import torch

        x = torch.cat([self.user_embedding, self.item_embedding], dim=0)
        layers = [x]
        for _ in range(self.n_layers):
            x = torch.sparse.mm(self.adjacency, x)
            layers.append(x)
        final = torch.stack(layers, dim=1).mean(dim=1)
        return torch.split(final, [self.n_users, self.n_items])

    def bpr_loss(self, users, pos, neg, l2: float):
        """``(loss, rank_loss)`` of the triples (int64 tensors ``[B]``): BPR plus ``l2`` times the L2 term."""
        import torch.nn.functional as F

        user_final, item_final = self.embeddings()
        u = user_final[users]
        pos_scores = (u * item_final[pos]).sum(dim=-1)
        neg_scores = (u * item_final[neg]).sum(dim=-1)
        rank = F.softplus(neg_scores - pos_scores).mean()
        ego = (F.embedding(users, self.user_embedding), F.embedding(pos, self.item_embedding),
               F.embedding(neg, self.item_embedding))
        reg = 0.5 * sum(e.pow(2).sum() for e in ego) / users.shape[0]
        return rank + l2 * reg, rank


def torch_step(model: TorchSparseLightGCN, optimizer, users, pos, neg, l2: float):
    """One training step of the port: zero the gradients, loss, backward, Adam update; the loss."""
    optimizer.zero_grad()
    loss, _ = model.bpr_loss(users, pos, neg, l2)
    loss.backward()
    optimizer.step()
    return loss.detach()


# ----------------------------------------------------------------------------- PyG


def pyg_edge_index(graph):
    """``[2, n_edges]`` int64: both directions of every training interaction (items are nodes
    ``n_users + i``), the ``edge_index`` PyG's LightGCN propagates over."""
    import torch

    rows = np.repeat(np.arange(graph.n_nodes, dtype=np.int64), np.diff(graph.indptr))
    return torch.as_tensor(np.stack([np.asarray(graph.indices, np.int64), rows]))  # source -> target


def pyg_lightgcn(user_init, item_init, n_layers: int):
    """``torch_geometric.nn.models.LightGCN`` with its node embedding set to ``[users; items]``."""
    import torch
    from torch_geometric.nn.models import LightGCN

    user_init, item_init = np.asarray(user_init), np.asarray(item_init)
    model = LightGCN(user_init.shape[0] + item_init.shape[0], user_init.shape[1], n_layers)
    if user_init.dtype == np.float64:
        model = model.double()
    with torch.no_grad():
        model.embedding.weight.copy_(torch.as_tensor(np.concatenate([user_init, item_init])))
    return model


def pyg_label_index(users, pos, neg, n_users: int):
    """``[2, 2B]``: the batch's positive edges, then its negative ones (PyG's example layout)."""
    import torch

    return torch.stack([torch.cat([users, users]), torch.cat([pos, neg]) + n_users])


def pyg_step(model, optimizer, edge_index, label_index, l2: float):
    """One training step of PyG's LightGCN as its example trains it; the loss."""
    optimizer.zero_grad()
    pos_rank, neg_rank = model(edge_index, label_index).chunk(2)
    loss = model.recommendation_loss(pos_rank, neg_rank, node_id=label_index.unique(), lambda_reg=l2)
    loss.backward()
    optimizer.step()
    return loss.detach()


# ----------------------------------------------------------------------------- benchmark


def shared_batch(prep, config, seed: int = 2):
    """``(users, pos, neg)`` int64 numpy ``[B]``: one batch from itemjax's samplers (BPR's pairs, uniform negatives)."""
    import jax

    from itemjax.objective import sampling

    k_pairs, k_neg = jax.random.split(jax.random.PRNGKey(seed))
    data = prep.batch.data
    users, pos = sampling.sample_pairs(k_pairs, data, config.batch_size, config.user_sampling)
    neg = sampling.negatives(k_neg, data, users, 1, 0.0)[:, 0]
    return tuple(np.asarray(a, np.int64) for a in (users, pos, neg))


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "torch", "torch_geometric", "numpy", "scipy", "itemjax"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def bench_dataset(dataset: str, args, torch) -> list:
    import jax

    from itemjax.config import TrainConfig
    from itemjax.train.run import prepare
    from step_time import host_graph, median_seconds, step_runner

    runs = {}
    for backend in args.backends.split(","):
        config = TrainConfig(dataset=dataset, model="lightgcn", loss="bpr", dim=args.dim, layers=args.layers,
                             batch_size=args.batch_size, valid_frac=0.0, progress=False,
                             **({} if backend == "default" else {"backend": backend})).resolve()
        prep = prepare(config)
        runs[f"itemjax ({prep.batch.graph.backend})"], state = step_runner(config, prep)
    graph = host_graph(prep)
    ids = state.params["ids"]
    user_init, item_init = np.asarray(ids["user_embedding"]), np.asarray(ids["item_embedding"])
    users, pos, neg = (torch.as_tensor(a) for a in shared_batch(prep, config))

    for layout in args.torch_layouts.split(","):
        model = TorchSparseLightGCN(torch_adjacency(graph, layout), user_init, item_init, config.layers)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        runs[f"torch.sparse ({layout})"] = (lambda m=model, o=optimizer: torch_step(m, o, users, pos, neg, config.l2))
    if not args.no_pyg:
        model = pyg_lightgcn(user_init, item_init, config.layers)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        edge_index = pyg_edge_index(graph)
        label_index = pyg_label_index(users, pos, neg, graph.n_users)
        runs["PyG"] = lambda: pyg_step(model, optimizer, edge_index, label_index, config.l2)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    medians = median_seconds(runs, args.repeats, args.warmup)
    seconds = time.perf_counter() - t0
    load_after = os.getloadavg()
    common = dict(dataset=dataset, n_users=graph.n_users, n_items=graph.n_items, n_train=int(prep.split.train.nnz),
                  n_edges=graph.n_edges, batch_size=config.batch_size, dim=config.dim, layers=config.layers,
                  lr=config.lr, l2=config.l2, load_before=load_before,
                  load_after=load_after, wall_seconds=seconds, jax_devices=[str(d) for d in jax.devices()])
    rows = [dict(common, impl=name, median_seconds=median) for name, median in medians.items()]
    torch_rows = [r for r in rows if r["impl"].startswith("torch.sparse")]
    best_torch = min(torch_rows, key=lambda r: r["median_seconds"]) if torch_rows else None
    pyg = next((r for r in rows if r["impl"] == "PyG"), None)
    for r in rows:
        if r["impl"].startswith("itemjax"):
            r["vs_torch"] = r["median_seconds"] / best_torch["median_seconds"] if best_torch else None
            r["vs_torch_impl"] = best_torch["impl"] if best_torch else None
            r["vs_pyg"] = r["median_seconds"] / pyg["median_seconds"] if pyg else None
    return rows


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="ml-100k,gowalla")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (each runs every implementation once)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each implementation first")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: every core)")
    p.add_argument("--batch-size", type=int, default=2048, help="(user, pos, neg) triples per step")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--torch-layouts", default="coo,csr", help="sparse layouts of the torch port, comma-separated")
    p.add_argument("--no-pyg", action="store_true", help="skip PyG's LightGCN")
    p.add_argument("--backends", default="default",
                   help="itemjax propagation backends to time, comma-separated (csr, native, segment; default: the "
                        "run's default on this platform)")
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "out" / "peers.json"))
    args = p.parse_args(argv)
    for layout in args.torch_layouts.split(","):
        if layout not in ("coo", "csr"):
            p.error(f"unknown --torch-layouts entry {layout!r}; choose from coo, csr")
    torch = require_extra("torch")
    if not args.no_pyg:
        require_extra("torch_geometric", "; --no-pyg skips PyG")
    import jax

    torch.set_num_threads(args.threads)
    rows = []
    for dataset in args.datasets.split(","):
        rows += bench_dataset(dataset, args, torch)
        for r in rows:
            if r["dataset"] == dataset:
                print(f"{dataset} {r['impl']}: {r['median_seconds'] * 1e3:.1f} ms", flush=True)

    print("\n| dataset | itemjax (backend) | itemjax (ms) | torch.sparse (ms) | PyG (ms) | itemjax / torch | "
          "itemjax / PyG | load |")
    print("|---|---|---|---|---|---|---|---|")
    for dataset in args.datasets.split(","):
        mine = [r for r in rows if r["dataset"] == dataset]
        torch_ms = ", ".join(f"{r['median_seconds'] * 1e3:.1f} {r['impl'].split()[-1]}" for r in mine
                             if r["impl"].startswith("torch.sparse")) or "–"
        pyg = next((r for r in mine if r["impl"] == "PyG"), None)
        pyg_ms = "–" if pyg is None else f"{pyg['median_seconds'] * 1e3:.1f}"
        for ij in (r for r in mine if r["impl"].startswith("itemjax")):
            print(f"| {dataset} | {ij['impl'].split()[-1].strip('()')} | {ij['median_seconds'] * 1e3:.1f} | {torch_ms} | "
                  f"{pyg_ms} | {_ratio(ij['vs_torch'])} | {_ratio(ij['vs_pyg'])} | {ij['load_before'][0]:.2f} |")

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = dict(platform=platform.platform(), cpus=os.cpu_count(), versions=versions(),
                   devices=[str(d) for d in jax.devices()], torch_threads=torch.get_num_threads(),
                   torch_interop_threads=torch.get_num_interop_threads(), load_average=os.getloadavg())
    out.write_text(json.dumps(dict(machine=machine, args=vars(args), rows=rows), indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    from itemjax.parallel.host_memory import tune_host_allocator

    tune_host_allocator()  # as every training run does (itemjax.parallel.distributed.initialize), before JAX computes
    main()
