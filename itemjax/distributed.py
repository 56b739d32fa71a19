"""Several devices (and hosts) through JAX's own SPMD machinery: one mesh axis, ``data``.

One code path for every device count: a single CPU is the 1-device mesh. :class:`Placement`
holds a :class:`jax.sharding.Mesh` over ``jax.devices()`` with one axis named ``data`` and
says where every array lives::

    placement = Placement(make_mesh(), shard_embeddings=False)
    batch = placement.place_batch(batch)        # graph + training data: replicated
    state = placement.place_state(state)        # params + Adam moments (see below)
    key = placement.replicate(key)
    step = placement.jit_step(train_step, state)
    state, metrics = step(state, batch, key)    # jit with out_shardings = the placement's
    user_emb, item_emb = placement.embed(state, batch.graph)
    metrics = placement.evaluate(user_emb, item_emb, exclude, targets, ks=(20,))

What is split across ``data``:

* **the step's sampled rows.** Sampling happens inside the jitted step on GLOBAL arrays, from
  ``fold_in(key, step)``; the objectives pass the sampled index arrays (users ``[B]``, triples
  ``[B]``, lists ``[B, P]`` / ``[B, N]``) through :func:`shard_rows`, a
  :func:`jax.lax.with_sharding_constraint` to ``P("data")`` on the leading axis. Every device
  then scores and differentiates its ``B / n_devices`` rows, and XLA inserts the all-reduce of
  the loss and of the embedding gradients. What a step samples never depends on the device
  count (JAX's random bits do not depend on sharding), so the same seed gives the same run on
  1, 4 or 256 devices, up to float summation order. ``B`` need not divide by the device count
  (XLA pads inside the step).
* **evaluation's users.** :func:`itemjax.evaluate.evaluate` scores chunks of users; each
  chunk's user rows (and so its ``[C, n_items]`` score matrix and top-k) are split across
  ``data`` by the same :func:`shard_rows`, and the per-user results are gathered with
  :func:`replicate_value`.
* **optionally, the ID embedding tables** (``shard_embeddings=True``, ``--shard-embeddings``):
  the rows of ``params["ids"]["user_embedding"]`` / ``["item_embedding"]`` and of their Adam
  moments are sharded across ``data`` (``P("data", None)``) for catalogues too large for one
  device. Sharded dimensions must divide by the device count, so the stored tables are padded
  with zero rows to a multiple of it; the model still sees ``[n_users, d]`` / ``[n_items, d]``
  (``state.apply_fn`` slices the padding off, so the padding rows get zero gradients and stay
  zero). :func:`unpad_params` returns the model-shaped tables. A run with sharded tables
  resumes on the same device count only.

Everything else (graph, training interactions, PPR table, dense weights) is replicated.

Multi-host (Cloud TPU slices, several GPU hosts): pass ``--distributed`` so that
:func:`initialize` calls :func:`jax.distributed.initialize` before anything touches a device;
every process runs the same program, builds the same mesh over the global
``jax.devices()``, and loads the same data on its host. :meth:`Placement.put` builds global
arrays with :func:`jax.make_array_from_callback`, so each host transfers only the shards of
its own devices (its share); the step's sampled rows are split across all devices of all
hosts as above, so no host feeds another's batch. Results fetched to the host (loss, metrics)
are replicated. This path cannot be tested on this machine; the 4-virtual-device CPU test
(tests/test_distributed.py) checks the single-process SPMD logic it relies on.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "ID_TABLES",
    "Placement",
    "initialize",
    "make_mesh",
    "replicate_value",
    "shard_rows",
    "tune_host_allocator",
    "unpad_params",
]

#: Name of the mesh axis that splits users / triples / evaluation rows (and, optionally, table rows).
DATA_AXIS = "data"
#: Parameter names of the ID tables under ``params["ids"]`` (rows = users / items).
ID_TABLES = ("user_embedding", "item_embedding")


def initialize(distributed: bool, *, tune_allocator: bool = True) -> None:
    """Set the process up for a run: :func:`tune_host_allocator`, then, when ``distributed``
    (multi-host), ``jax.distributed.initialize()`` once.

    Must run before any JAX computation in the process. On Cloud TPU and SLURM/Open MPI
    clusters the coordinator, process count and id are detected; elsewhere set
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
    """
    if tune_allocator:
        tune_host_allocator()
    if distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize()


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`tune_host_allocator` sets.
_MALLOPT_SETTINGS = (
    (-8, 1),  # M_ARENA_MAX: every thread allocates from the main (brk) heap
    (-4, 0),  # M_MMAP_MAX: no per-allocation mmap, big buffers come from the heap too
    (-1, 1 << 30),  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed memory instead of returning it
    (-2, 64 << 20),  # M_TOP_PAD: grow the heap 64 MiB at a time
)


def tune_host_allocator() -> bool:
    """Keep freed host buffers in the process heap (glibc ``mallopt``); ``True`` if applied.

    XLA's CPU backend allocates every step's large temporaries (``[n_nodes, d]`` float32,
    18 MB on Gowalla) afresh. glibc serves such sizes with ``mmap`` and returns them with
    ``munmap`` (or trims its per-thread heaps), so every step page-faults them in again:
    about 19,000 minor faults and 0.035 s of kernel time per LightGCN + BPR step on Gowalla,
    a quarter of the step. With one heap, no per-allocation ``mmap`` and a 1 GiB trim
    threshold, the memory is reused and the step drops from about 0.09 s to 0.07 s on this
    project's 2-core CPU (benchmarks/RESULTS.md). The price: freed memory (up to 1 GiB) stays
    with the process. Call it before JAX starts its threads (:func:`initialize` does). No-op
    off Linux/glibc, or when the environment sets ``ITEMJAX_MALLOC_TUNING=0``.
    """
    if os.environ.get("ITEMJAX_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another C library
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in _MALLOPT_SETTINGS)


def make_mesh(devices=None) -> Mesh:
    """A 1-D :class:`Mesh` with axis ``data`` over ``devices`` (default: every ``jax.devices()``)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def _context_has_data_axis() -> bool:
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and DATA_AXIS in mesh.axis_names


def shard_rows(x: jax.Array) -> jax.Array:
    """Split the leading axis of ``x`` across ``data`` (inside jit, under a mesh context).

    ``with_sharding_constraint(x, P("data", None, ...))`` when the mesh set by
    :func:`jax.set_mesh` has a ``data`` axis (as inside :meth:`Placement.jit_step`,
    :meth:`Placement.evaluate`); the identity otherwise, so code that never sets a mesh runs
    unchanged on one device. Values are unchanged either way: only the layout is.
    """
    if not _context_has_data_axis() or jnp.ndim(x) == 0:
        return x
    return jax.lax.with_sharding_constraint(x, P(DATA_AXIS, *([None] * (jnp.ndim(x) - 1))))


def replicate_value(x: jax.Array) -> jax.Array:
    """Constrain ``x`` to be replicated on every device of the context mesh (identity without one).

    Results that the host reads back (per-user metrics) are replicated so that every process of
    a multi-host run can fetch them.
    """
    if not _context_has_data_axis():
        return x
    return jax.lax.with_sharding_constraint(x, P())


def _is_id_table(path) -> bool:
    names = [getattr(entry, "key", getattr(entry, "name", None)) for entry in path]
    return len(names) >= 2 and names[-2] == "ids" and names[-1] in ID_TABLES


def _pad_rows(x, rows: int):
    return x if x.shape[0] == rows else jnp.pad(x, ((0, rows - x.shape[0]),) + ((0, 0),) * (x.ndim - 1))


def unpad_params(params, n_users: int, n_items: int):
    """``params`` with the ID tables cut back to ``[n_users, d]`` / ``[n_items, d]`` (other leaves as is)."""
    sizes = {"user_embedding": n_users, "item_embedding": n_items}

    def cut(path, leaf):
        return leaf[: sizes[path[-1].key]] if _is_id_table(path) else leaf

    return jax.tree_util.tree_map_with_path(cut, params)


@dataclasses.dataclass(frozen=True)
class _UnpaddedApply:
    """``apply_fn`` of a state whose ID tables are padded: slices them before the model runs."""

    apply_fn: Callable
    n_users: int
    n_items: int

    def __call__(self, variables, *args, **kwargs):
        variables = {**variables, "params": unpad_params(variables["params"], self.n_users, self.n_items)}
        return self.apply_fn(variables, *args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the run's arrays live on ``mesh`` (axis ``data``); see the module docstring.

    Attributes:
      mesh: 1-D mesh with axis :data:`DATA_AXIS` (:func:`make_mesh`).
      shard_embeddings: shard the rows of the ID tables and their optimizer moments across
        ``data`` (tables padded to a multiple of the device count); default replicated.
    """

    mesh: Mesh
    shard_embeddings: bool = False

    @property
    def n_devices(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def table_rows(self) -> NamedSharding:
        """``P("data", None)``: rows split across devices."""
        return NamedSharding(self.mesh, P(DATA_AXIS, None))

    # ------------------------------------------------------------------ host -> devices

    def put(self, x, sharding: NamedSharding | None = None) -> jax.Array:
        """Global array with ``sharding`` (default replicated) from a full host or device copy.

        Uses :func:`jax.make_array_from_callback`: each process transfers only the shards of
        its own devices, so the same call works on one host and on many.
        """
        sharding = self.replicated if sharding is None else sharding
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and x.is_fully_addressable and jax.process_count() == 1:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    def replicate(self, tree):
        """Every array leaf of ``tree`` replicated on the mesh (static fields kept)."""
        return jax.tree.map(self.put, tree)

    def place_batch(self, batch):
        """The :class:`~itemjax.training.Batch` (graph, training data, PPR table), replicated."""
        return self.replicate(batch)

    def state_shardings(self, state):
        """Pytree of :class:`NamedSharding` matching ``state``: ID tables (and their moments)
        row-sharded when ``shard_embeddings``, everything else replicated."""

        def choose(path, leaf):
            if self.shard_embeddings and _is_id_table(path) and jnp.ndim(leaf) == 2:
                return self.table_rows
            return self.replicated

        return jax.tree_util.tree_map_with_path(choose, state)

    def place_state(self, state):
        """``state`` on the mesh. With ``shard_embeddings`` the ID tables and their optimizer
        moments are first padded with zero rows to a multiple of the device count and
        ``apply_fn`` is wrapped to slice them back (see :func:`unpad_params`)."""
        if self.shard_embeddings:
            if isinstance(state.apply_fn, _UnpaddedApply):  # already padded once (e.g. restored)
                n_users, n_items = state.apply_fn.n_users, state.apply_fn.n_items
            else:
                ids = state.params["ids"]
                n_users, n_items = ids["user_embedding"].shape[0], ids["item_embedding"].shape[0]
            multiple = self.n_devices
            rows = {"user_embedding": -(-n_users // multiple) * multiple,
                    "item_embedding": -(-n_items // multiple) * multiple}

            def pad(path, leaf):
                return _pad_rows(leaf, rows[path[-1].key]) if _is_id_table(path) else leaf

            apply_fn = state.apply_fn
            if not isinstance(apply_fn, _UnpaddedApply):
                apply_fn = _UnpaddedApply(apply_fn, n_users, n_items)
            state = state.replace(
                params=jax.tree_util.tree_map_with_path(pad, state.params),
                opt_state=jax.tree_util.tree_map_with_path(pad, state.opt_state),
                apply_fn=apply_fn,
            )
        shardings = self.state_shardings(state)
        return jax.tree.map(self.put, state, shardings)

    def model_params(self, state):
        """The state's params with the model's shapes (ID-table padding removed, if any)."""
        if isinstance(state.apply_fn, _UnpaddedApply):
            return unpad_params(state.params, state.apply_fn.n_users, state.apply_fn.n_items)
        return state.params

    # ------------------------------------------------------------------ jitted work

    def jit_step(self, step_fn: Callable, state) -> Callable:
        """``step(state, batch, key) -> (state, metrics)``: ``step_fn`` jitted with
        ``out_shardings = (state_shardings(state), replicated)`` and run under the mesh.

        The new state keeps the placement of the old one, so the second step hits the cache
        of the first (no recompilation); metrics come back replicated. The returned function
        has a ``jitted`` attribute (the :func:`jax.jit` object, e.g. for ``_cache_size()``).
        """
        jitted = jax.jit(step_fn, out_shardings=(self.state_shardings(state), self.replicated))
        mesh = self.mesh

        @functools.wraps(step_fn)
        def step(state, batch, key):
            with jax.set_mesh(mesh):
                return jitted(state, batch, key)

        step.jitted = jitted
        return step

    def embed(self, state, graph) -> tuple[jax.Array, jax.Array]:
        """Final ``(user_emb, item_emb)`` in inference mode (:func:`itemjax.training.embed`), under the mesh."""
        from itemjax.training import embed

        with jax.set_mesh(self.mesh):
            return embed(state.apply_fn, state.params, graph)

    def evaluate(self, user_emb, item_emb, exclude, targets, **kwargs) -> dict:
        """:func:`itemjax.evaluate.evaluate` under the mesh: each chunk's users split across ``data``."""
        from itemjax.evaluate import evaluate

        with jax.set_mesh(self.mesh):
            return evaluate(user_emb, item_emb, exclude, targets, **kwargs)

    def describe(self) -> dict[str, Any]:
        """What config.json records: device count, processes, table placement."""
        return {
            "mesh": {DATA_AXIS: self.n_devices},
            "processes": jax.process_count(),
            "shard_embeddings": self.shard_embeddings,
        }
