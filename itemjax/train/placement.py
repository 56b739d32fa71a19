"""Where a run's arrays live on the device mesh: :class:`Placement` (see :mod:`itemjax.parallel.distributed`
for the mesh, the ``data`` axis and what is split across it).

    placement = Placement(make_mesh(), shard_embeddings=False)
    batch = placement.place_batch(batch)        # graph + training data: replicated
    state = placement.place_state(state)        # params + Adam moments
    step = placement.jit_step(train_step, state)
    user_emb, item_emb = placement.embed(state, batch.graph)
    metrics = placement.evaluate(user_emb, item_emb, exclude, targets, ks=(20,))

It sits above the step (:mod:`itemjax.train.step`) and the evaluator (:mod:`itemjax.evaluation.evaluate`),
which themselves only use :mod:`itemjax.parallel.distributed`'s low-level pieces.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from itemjax.parallel.distributed import DATA_AXIS, ID_TABLES
from itemjax.evaluation.evaluate import evaluate
from itemjax.model.models import embed

__all__ = ["Placement", "step_compiler_options", "unpad_params"]


def step_compiler_options(cpu_fusions: str, platform: str | None = None) -> dict:
    """XLA compile options of the training step for ``--cpu-fusions`` (resolved: ``xla``, ``none`` or a comma
    list of :data:`itemjax.config.YNN_FUSION_KINDS`) on ``platform`` (default: JAX's default backend).

    ``{}`` for ``xla`` and off CPU; else ``{"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,..."}``
    (empty for ``none``), which replaces XLA's list of YNNPACK fusion kinds for this one computation, as
    ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=...`` would for every computation of the process.
    """
    if cpu_fusions == "xla" or (platform or jax.default_backend()) != "cpu":
        return {}
    kinds = [] if cpu_fusions == "none" else cpu_fusions.split(",")
    return {"xla_cpu_experimental_ynn_fusion_type": ",".join(f"LIBRARY_FUSION_TYPE_{kind.upper()}" for kind in kinds)}


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
        """The :class:`~itemjax.objective.objectives.Batch` (graph, training data, PPR table), replicated."""
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

    def jit_step(self, step_fn: Callable, state, compiler_options: dict | None = None) -> Callable:
        """``step(state, batch, key) -> (state, metrics)``: ``step_fn`` jitted with
        ``out_shardings = (state_shardings(state), replicated)`` and ``compiler_options`` (XLA options of
        this computation, e.g. :func:`step_compiler_options`), run under the mesh.

        The new state keeps the placement of the old one, so the second step hits the cache
        of the first (no recompilation); metrics come back replicated. The returned function
        has a ``jitted`` attribute (the :func:`jax.jit` object, e.g. for ``_cache_size()``).
        """
        jitted = jax.jit(step_fn, out_shardings=(self.state_shardings(state), self.replicated),
                         compiler_options=compiler_options or None)
        mesh = self.mesh

        @functools.wraps(step_fn)
        def step(state, batch, key):
            with jax.set_mesh(mesh):
                return jitted(state, batch, key)

        step.jitted = jitted
        return step

    def embed(self, state, graph) -> tuple[jax.Array, jax.Array]:
        """Final ``(user_emb, item_emb)`` in inference mode (:func:`itemjax.model.models.embed`), under the mesh."""
        with jax.set_mesh(self.mesh):
            return embed(state.apply_fn, state.params, graph)

    def evaluate(self, user_emb, item_emb, exclude, targets, **kwargs) -> dict:
        """:func:`itemjax.evaluation.evaluate.evaluate` under the mesh: each chunk's users split across ``data``."""
        with jax.set_mesh(self.mesh):
            return evaluate(user_emb, item_emb, exclude, targets, **kwargs)

    def describe(self) -> dict[str, Any]:
        """What config.json records: device count, processes, table placement."""
        return {
            "mesh": {DATA_AXIS: self.n_devices},
            "processes": jax.process_count(),
            "shard_embeddings": self.shard_embeddings,
        }
