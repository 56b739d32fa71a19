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

Multi-host (Cloud TPU slices, several GPU hosts, several CPU processes): pass ``--distributed``
so that :func:`initialize` calls :func:`jax.distributed.initialize` before anything touches a
device; every process runs the same program, builds the same mesh over the global
``jax.devices()``, and loads the same data on its host. :meth:`Placement.put` builds global
arrays with :func:`jax.make_array_from_callback`, so each host transfers only the shards of
its own devices (its share); the step's sampled rows are split across all devices of all
hosts as above, so no host feeds another's batch. Results fetched to the host (loss, metrics)
are replicated, so every process takes the same decisions (early stopping, selection).
Process 0 alone writes the run files (:func:`is_writer`); every process takes part in each
checkpoint's save and restore (orbax), so ``--out`` must be on a filesystem they all see.
A process that dies stops the others (JAX's heartbeat, ``--heartbeat-timeout``); one that
raises ends at once (:func:`stop_peers_on_error`) so that they do. On one machine::

    export XLA_FLAGS=--xla_force_host_platform_device_count=2   # 2 CPU devices per process
    cluster="--distributed --coordinator-address localhost:12345 --num-processes 2 --out runs/x"
    itemjax train $cluster --process-id 0 ... &  itemjax train $cluster --process-id 1 ...

tests/test_multiprocess.py runs exactly that (two processes, 2 CPU devices each, gloo
collectives) against one process on 4 devices, with a kill and ``--resume``; the
4-virtual-device test (tests/test_distributed.py) checks the single-process SPMD logic.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

__all__ = ["DATA_AXIS", "ID_TABLES", "barrier", "initialize", "is_writer", "make_mesh", "replicate_value", "shard_rows",
           "stop_peers_on_error"]

#: Name of the mesh axis that splits users / triples / evaluation rows (and, optionally, table rows).
DATA_AXIS = "data"
#: Parameter names of the ID tables under ``params["ids"]`` (rows = users / items).
ID_TABLES = ("user_embedding", "item_embedding")


def initialize(distributed: bool, *, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout: int = 100, tune_allocator: bool = True) -> None:
    """Set the process up for a run: :func:`itemjax.parallel.host_memory.tune_host_allocator`, then, when ``distributed``
    (several processes), :func:`jax.distributed.initialize` once.

    Must run before any JAX computation in the process. The coordinator address, process count
    and rank come from the arguments (``--coordinator-address``, ``--num-processes``,
    ``--process-id``), else from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``, else JAX detects them (Cloud TPU, SLURM, Open MPI). A process whose
    heartbeat stops for ``heartbeat_timeout`` seconds (killed, hung, its host lost) counts as dead:
    JAX then ends every other process (SIGABRT) with ``The following tasks are unhealthy (stopped
    sending heartbeats): <rank>`` on stderr; the death of process 0, which serves the
    coordinator, ends the others at once. On CPU the cross-process collectives are gloo's (JAX's
    default ``jax_cpu_collectives_implementation``).

    Raises :class:`~itemjax.errors.ConfigError` when the coordinator, the process count or the
    rank is neither given nor detected.
    """
    if tune_allocator:
        from itemjax.parallel.host_memory import tune_host_allocator

        tune_host_allocator()
    if distributed and not jax.distributed.is_initialized():
        _start_processes(coordinator_address, num_processes, process_id, heartbeat_timeout)
    if jax.distributed.is_initialized():  # by us, or by the caller before fit
        _processes.update(index=jax.process_index(), count=jax.process_count())


def _start_processes(coordinator_address, num_processes, process_id, heartbeat_timeout) -> None:
    """:func:`jax.distributed.initialize` with the arguments, the ``JAX_*`` variables, or detection."""
    from itemjax.errors import ConfigError

    if num_processes is None:
        num_processes = _env_int("JAX_NUM_PROCESSES", "the number of processes")
    if process_id is None:
        process_id = _env_int("JAX_PROCESS_ID", "this process's rank, 0 .. N-1")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   heartbeat_timeout_seconds=int(heartbeat_timeout))
    except (ValueError, TypeError) as e:  # JAX's: a missing / invalid address, count or rank
        raise ConfigError(
            f"--distributed: {e} Outside Cloud TPU, SLURM and Open MPI (detected), give every process "
            "--coordinator-address HOST:PORT (process 0's), --num-processes N and its own --process-id 0..N-1 "
            "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)"
        ) from None
    _processes["heartbeat_timeout"] = int(heartbeat_timeout)


#: Rank and process count once :func:`initialize` has run with several processes (``count`` 1 otherwise),
#: and the heartbeat timeout it gave JAX (JAX's default, 100 s, when the caller started them).
_processes = {"index": 0, "count": 1, "heartbeat_timeout": 100}


def _env_int(name: str, meaning: str) -> int | None:
    """The integer in the environment variable ``name`` (None when unset or empty)."""
    from itemjax.errors import ConfigError

    text = os.environ.get(name, "")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not an integer: set it to {meaning}, or unset it") from None


def is_writer() -> bool:
    """Whether this process writes the run's own files (config.json, metrics.jsonl, summary.json,
    per-user table, plot, TensorBoard events): process 0 only, so that the processes of a
    multi-process run never write the same file. Checkpoints are not concerned: every process
    takes part in saving and restoring them (:class:`itemjax.train.checkpoint.RunCheckpoints`).

    Call it after :func:`initialize` (it asks JAX for the process index, which starts JAX's backend).
    """
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def stop_peers_on_error():
    """In a multi-process run, end this process at once when an exception escapes the block.

    The other processes are then waiting in a collective that this one will never join: raising
    on would leave this process at its exit in JAX's shutdown barrier, waiting for them, and
    them waiting for it, until JAX's shutdown timeout (5 minutes), and a caller that went on
    would pair mismatched collectives. So the error is reported as the command line would
    (:func:`itemjax.errors.report_error`: message and exit status), with a line saying which
    process stopped, and the process exits with ``os._exit`` (skipping that barrier): its
    heartbeat stops, and JAX ends the others within ``--heartbeat-timeout`` seconds with an error
    naming it. With one process the exception propagates as usual.

    A :class:`jax.errors.JaxRuntimeError` (a computation failed) is most often the sign that
    another process is gone (gloo: ``Connection closed by peer``, which does not say which): this
    process then first waits ``--heartbeat-timeout`` + 30 s for JAX, which ends it with the error
    naming the lost process, and only then reports the error itself.
    """
    try:
        yield
    except BaseException as error:
        if _processes["count"] <= 1:
            raise
        from itemjax.errors import report_error

        rank, count, timeout = _processes["index"], _processes["count"], _processes["heartbeat_timeout"]
        if isinstance(error, jax.errors.JaxRuntimeError):
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            print(f"error: process {rank} of {count}: a computation across processes failed ({reason}); if another "
                  f"process is gone, JAX names it within --heartbeat-timeout {timeout} s", file=sys.stderr, flush=True)
            time.sleep(timeout + 30)  # JAX's coordination service ends this process first if a peer is gone
        status = report_error(error)
        print(f"error: process {rank} of {count} stopped (exit status {status}); the other processes stop when its "
              f"heartbeat has been missing for --heartbeat-timeout {timeout} s", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(status)


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
