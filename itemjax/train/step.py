"""The jitted training step and what it updates: the model, its parameters and optimiser state.

Functional core: :func:`train_step` is a module-level pure function
``train_step(state, batch, key) -> (state, metrics)``, jitted once per run. All sampling
happens inside it on the device (the objective, :mod:`itemjax.objective.objectives`); per-step
randomness is ``fold_in(key, state.step)``, so a run resumed from a checkpoint draws exactly
the batches the uninterrupted run would have. The loop around it is :func:`itemjax.train.run.fit`.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from itemjax.objective import sampling
from itemjax.config import TrainConfig
from itemjax.errors import ConfigError
from itemjax.model.models import MODELS
from itemjax.objective.objectives import Batch, make_objective, steps_per_epoch
from itemjax.graph.propagation import DeviceGraph

__all__ = ["Batch", "TrainState", "create_state", "host_lr_scale", "host_scaled", "learning_rate", "make_model",
           "make_optimizer", "train_step", "with_lr_scale"]


class TrainState(train_state.TrainState):
    """Flax TrainState plus the (static) objective ``objective(params, apply_fn, batch, key, step)``."""

    objective: Callable = flax.struct.field(pytree_node=False)


@jax.jit
def train_step(state: TrainState, batch: Batch, key: jax.Array):
    """One optimisation step. Returns ``(new_state, {"loss": scalar, ...})``."""
    step_key = jax.random.fold_in(key, state.step)

    def objective(params):
        return state.objective(params, state.apply_fn, batch, step_key, state.step)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, {"loss": loss, **aux}


# ----------------------------------------------------------------------------- model and state


def make_model(config: TrainConfig, n_users: int, n_items: int, n_user_features: int = 0, n_item_features: int = 0):
    """The ``config.model`` module for the given sizes (side features: :mod:`itemjax.data.features`)."""
    cls = MODELS[config.model]
    kwargs = dict(n_users=n_users, n_items=n_items, dim=config.dim, n_user_features=n_user_features,
                  n_item_features=n_item_features)
    if "n_layers" in cls.__dataclass_fields__:
        kwargs["n_layers"] = config.layers
    if config.compute_dtype != "float32":  # propagation and scoring dtype; params stay float32
        if "dtype" not in cls.__dataclass_fields__:
            raise ConfigError(f"--compute-dtype {config.compute_dtype} is not supported by --model {config.model}; "
                              "use --compute-dtype float32")
        kwargs["dtype"] = jnp.dtype(config.compute_dtype)
    return cls(**kwargs)


def host_scaled(config: TrainConfig) -> bool:
    """Whether the run's learning rate has a factor set by the host loop (:func:`host_lr_scale`):
    ``--lr-schedule plateau``, or ``cosine`` over a ``--time-budget`` (no ``--decay-epochs``)."""
    return config.lr_schedule == "plateau" or (config.lr_schedule == "cosine" and config.decay_epochs is None
                                               and config.time_budget is not None)


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The step-driven part of the learning rate, ``lr(t)`` (``t`` = optimiser steps taken), from
    ``config`` (resolved). With ``W = warmup_epochs * steps_per_epoch``, ``D = decay_epochs * steps_per_epoch``:

    * warmup (``W > 0``): ``lr * t / W`` for ``t < W``, then the schedule below at ``t - W``;
    * ``constant``, ``plateau`` and ``cosine`` over a time budget: ``lr`` (the host multiplies it by
      :func:`host_lr_scale`);
    * ``cosine``: ``lr * (m + (1 - m) * (1 + cos(pi * min(t, D) / D)) / 2)``, ``m = lr_min_ratio``,
      ``D`` by default ``epochs * steps_per_epoch - W`` (the epoch cap);
    * ``exponential``: ``lr * max(m, 0.5 ** (t / D))`` (``D``: the half-life).
    """
    base, spe = config.lr, steps_per_epoch
    warmup = int(round(config.warmup_epochs * spe))
    if config.lr_schedule == "constant" or host_scaled(config):
        main = optax.constant_schedule(base)
    elif config.lr_schedule == "cosine":
        horizon = config.decay_epochs * spe if config.decay_epochs is not None else config.epochs * spe - warmup
        main = optax.cosine_decay_schedule(base, max(1, int(round(horizon))), alpha=config.lr_min_ratio)
    else:
        main = optax.exponential_decay(base, transition_steps=max(1.0, config.decay_epochs * spe), decay_rate=0.5,
                                       end_value=config.lr_min_ratio * base)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


#: ``--lr-schedule plateau`` halves at most this many times (to lr / 1024): a stalled model keeps training
MAX_HALVINGS = 10


def host_lr_scale(config: TrainConfig, *, progress: float, halvings: int) -> float:
    """The host's factor on :func:`learning_rate` (1 unless :func:`host_scaled`).

    ``plateau``: ``max(m, 0.5 ** min(halvings, MAX_HALVINGS))`` (``halvings``: how often validation
    stalled for ``lr_patience`` epochs); ``cosine`` over a time budget: ``m + (1 - m) * (1 + cos(pi * p)) / 2``
    with ``p = min(1, progress)`` the share of the budget spent (training + validation seconds).
    ``m = lr_min_ratio``.
    """
    m = config.lr_min_ratio
    if config.lr_schedule == "plateau":
        return max(m, 0.5 ** min(halvings, MAX_HALVINGS))
    if host_scaled(config):
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return 1.0


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam at :func:`learning_rate` (AdamW with ``weight_decay > 0``: ``p <- p - lr(t) * (adam_update +
    weight_decay * p)``), after ``optax.clip_by_global_norm(clip_norm)`` when it is set, and when
    :func:`host_scaled` followed by ``optax.scale`` with an injected factor (:func:`with_lr_scale`)."""
    schedule = learning_rate(config, steps_per_epoch)
    adam = optax.adamw(schedule, weight_decay=config.weight_decay) if config.weight_decay else optax.adam(schedule)
    parts = ([optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm is not None else []) + [adam]
    if host_scaled(config):
        parts.append(optax.inject_hyperparams(optax.scale)(step_size=1.0))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def with_lr_scale(state: TrainState, value) -> TrainState:
    """``state`` with the host's learning-rate factor set to ``value`` (an array placed like the state's
    scalars); only for :func:`host_scaled` runs, whose optimiser state ends with the injected scale."""
    inner = state.opt_state[-1]
    return state.replace(opt_state=(*state.opt_state[:-1],
                                    inner._replace(hyperparams={**inner.hyperparams, "step_size": value})))


def create_state(config: TrainConfig, model, graph: DeviceGraph, data: sampling.TrainData, key) -> TrainState:
    params = model.init(key, graph)["params"]
    spe = steps_per_epoch(config, data)
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=make_optimizer(config, spe),
        objective=make_objective(config, spe),
    )
