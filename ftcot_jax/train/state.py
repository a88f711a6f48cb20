"""The train state: a typed pytree of what one step reads and writes, and its on-disk form.

`TrainState` goes through `jax.jit` (donated), carries its shardings as a `TrainState` of `NamedSharding`s,
and is saved by orbax as the plain dict `{params, opt_state, step, rng}` (`to_tree` / `from_tree`), the
layout every checkpoint has had, so runs saved before the state was typed restore unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class TrainState:
    params: Any  # pure dict of arrays (nnx.to_pure_dict of the model's Params)
    opt_state: Any  # the optax state (moments sharded like their params)
    step: jax.Array  # int32 scalar: steps taken
    rng: jax.Array  # uint32 key data (jax.random.key_data): dropout keys are folded in from it per step

    @property
    def key(self) -> jax.Array:
        return jax.random.wrap_key_data(self.rng)

    def to_tree(self) -> dict:
        """The checkpoint layout (orbax saves and restores this dict)."""
        return {"params": self.params, "opt_state": self.opt_state, "step": self.step, "rng": self.rng}

    @classmethod
    def from_tree(cls, tree: dict) -> TrainState:
        return cls(params=tree["params"], opt_state=tree["opt_state"], step=tree["step"], rng=tree["rng"])


def abstract_rng() -> jax.ShapeDtypeStruct:
    """Shape and dtype of `TrainState.rng`."""
    return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))


def abstract_step() -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((), jnp.int32)
