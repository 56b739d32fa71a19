"""Orbax checkpoints of a training run: ``<run>/checkpoints/{latest,best}/<step>/``.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
run killed at any moment leaves the previous checkpoint intact. Each checkpoint holds the
train state pytree (params, optimizer state, step) and a JSON ``meta`` record (epoch, best
value, patience counter, elapsed time) needed to continue the loop exactly.
"""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np
import orbax.checkpoint as ocp

from itemjax.errors import CheckpointError


class RunCheckpoints:
    """The ``latest`` and ``best`` checkpoint slots of a run directory (one kept in each)."""

    def __init__(self, run_dir):
        root = pathlib.Path(run_dir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)  # debris of a save cut by a kill
        self.root = root
        self._managers = {name: ocp.CheckpointManager(root / name, options=options) for name in ("latest", "best")}

    def save(self, slot: str, step: int, state, meta: dict) -> None:
        """Save ``state`` (any pytree of arrays) and ``meta`` (JSON) under ``slot`` at ``step``.

        A checkpoint already stored at ``step`` is kept: the state at a step is a function of
        the step (per-step randomness is ``fold_in(key, step)``), and a run killed between its
        ``best`` and ``latest`` saves re-reaches the same step after ``--resume``.
        """
        manager = self._managers[slot]
        if int(step) in manager.all_steps():
            return
        manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        manager.wait_until_finished()

    def latest_step(self, slot: str):
        return self._managers[slot].latest_step()

    def restore(self, slot: str, like):
        """Restore ``(state, meta)`` from ``slot``, with ``like`` giving the expected pytree.

        Raises :class:`CheckpointError` when the slot is empty, the files are corrupt, or the
        stored arrays do not match ``like`` (a different model, size or dataset).
        """
        manager = self._managers[slot]
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"no {slot} checkpoint in {self.root}; start without --resume or check --out")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            )
        except Exception as e:  # orbax raises many types for corrupt or mismatched files
            raise CheckpointError(
                f"cannot restore the {slot} checkpoint {self.root / slot / str(step)} ({_reason(e)}); "
                "it is corrupt or was written by a different model/config: delete it or use another --out"
            ) from None
        _check_shapes(restored.state, like, self.root / slot / str(step))
        return restored.state, restored.meta

    def close(self):
        for m in self._managers.values():
            m.close()


def _reason(error: BaseException) -> str:
    """One short line from the innermost exception of a chain (orbax wraps TensorStore's)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    first = re.split(r"\.? See full TensorStore details", first)[0]
    return first if len(first) <= 200 else first[:197] + "..."


def _check_shapes(restored, like, where):
    got = jax.tree.map(np.shape, restored)  # np.shape: Python ints (a fresh state's step) too
    want = jax.tree.map(np.shape, like)
    if got != want:
        raise CheckpointError(
            f"checkpoint {where} holds arrays of other shapes than this run's model; "
            "it was written by a different model/config: delete it or use another --out"
        )
