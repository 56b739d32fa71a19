"""Experiment tracking: TensorBoard scalars of a run (``--tensorboard``).

Written with tensorboardX (the ``tracking`` extra), which needs no TensorFlow, under
``<out>/tensorboard/``. The step axis is the optimiser step. Scalars: ``train/loss`` (the
epoch's mean), ``train/step_seconds`` (wall time per step), ``train/lr``, ``valid/<metric>``
at each evaluation, ``test/<metric>`` (and ``refit/<metric>``) once at the end, with ``@`` spelled
``_at_`` (``valid/ndcg_at_20``). ``--resume``
appends to the same event files, first purging events past the resumed step, so the curves
of a resumed run are those of an uninterrupted one.
"""

from __future__ import annotations

import pathlib

from itemjax.errors import require_extra
from itemjax.parallel.distributed import is_writer


def tag(prefix: str, name: str) -> str:
    """The TensorBoard tag of a scalar: ``valid/ndcg_at_20`` for ``("valid", "ndcg@20")`` (TensorBoard
    tags allow letters, digits, ``_ - . /`` only)."""
    return f"{prefix}/{name.replace('@', '_at_')}"


class Tracker:
    """Scalar logging for one run; a no-op when ``enabled`` is False, and in every process of a
    multi-process run but process 0 (:func:`itemjax.parallel.distributed.is_writer`)."""

    def __init__(self, out: pathlib.Path, enabled: bool, *, resume_step: int | None = None):
        self.writer = None
        if enabled and is_writer():
            tensorboardx = require_extra("tensorboardX", extra="tracking", feature="--tensorboard")
            self.writer = tensorboardx.SummaryWriter(logdir=str(pathlib.Path(out) / "tensorboard"),
                                                     purge_step=resume_step)

    def scalars(self, step: int, values: dict, prefix: str) -> None:
        """``<prefix>/<name>`` = value for every finite float-like entry of ``values``."""
        if self.writer is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag(prefix, name), float(value), global_step=int(step))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
