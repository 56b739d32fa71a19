"""The jitted training step and what it updates: the model, its parameters and optimiser state.

Functional core: :func:`train_step` is a module-level pure function
``train_step(state, batch, key) -> (state, metrics)``, jitted once per run. All sampling
happens inside it on the device (the objective, :mod:`itemjax.objective.objectives`); per-step
randomness is ``fold_in(key, state.step)``, so a run resumed from a checkpoint draws exactly
the batches the uninterrupted run would have. The loop around it is :func:`itemjax.train.run.fit`.
"""

from __future__ import annotations

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

__all__ = ["Batch", "TrainState", "create_state", "make_model", "train_step"]


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


def create_state(config: TrainConfig, model, graph: DeviceGraph, data: sampling.TrainData, key) -> TrainState:
    params = model.init(key, graph)["params"]
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=optax.adam(config.lr),
        objective=make_objective(config, steps_per_epoch(config, data)),
    )
