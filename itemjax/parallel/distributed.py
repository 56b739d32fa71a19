"""Several devices (and hosts) through JAX's own SPMD machinery: one mesh axis, ``data``.

This module holds the low-level pieces (the mesh, :func:`shard_rows`, :func:`replicate_value`,
:func:`initialize`) that the step and the evaluator use; :class:`itemjax.train.placement.Placement`
builds on them and on both. One code path for every device count: a single CPU is the 1-device mesh. :class:`~itemjax.train.placement.Placement`
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
* **evaluation's users.** :func:`itemjax.evaluation.evaluate.evaluate` scores chunks of users; each
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

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

__all__ = ["DATA_AXIS", "ID_TABLES", "initialize", "make_mesh", "replicate_value", "shard_rows"]

#: Name of the mesh axis that splits users / triples / evaluation rows (and, optionally, table rows).
DATA_AXIS = "data"
#: Parameter names of the ID tables under ``params["ids"]`` (rows = users / items).
ID_TABLES = ("user_embedding", "item_embedding")


def initialize(distributed: bool, *, tune_allocator: bool = True) -> None:
    """Set the process up for a run: :func:`itemjax.parallel.host_memory.tune_host_allocator`, then, when ``distributed``
    (multi-host), ``jax.distributed.initialize()`` once.

    Must run before any JAX computation in the process. On Cloud TPU and SLURM/Open MPI
    clusters the coordinator, process count and id are detected; elsewhere set
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
    """
    if tune_allocator:
        from itemjax.parallel.host_memory import tune_host_allocator

        tune_host_allocator()
    if distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize()


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
