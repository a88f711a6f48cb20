"""HF checkpoint import/export (safetensors; .bin only through torch.load(weights_only=True))."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx


def family_of_model(model):
    from ftcot_jax.models import family_for, model_type_of

    return family_for(model_type_of(model))


def update_from_hf(model, tensors: Mapping) -> None:
    mod = family_of_model(model)
    params = mod.params_from_hf(model.config, tensors)
    nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params))
