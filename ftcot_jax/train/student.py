"""The student: the one path from a `TrainConfig` (or model/tokenizer objects) to what the trainer needs.

`build_student` resolves the model (loaded weights, or a random init of a config), builds it abstractly
(`nnx.eval_shape`: no memory) in the compute dtype, and splits it into a graph and a plain dict of parameters;
`param_shardings` places those parameters on a mesh by their logical axis names, and `make_param_init` makes
them there (the loaded weights put shard by shard, or a random init compiled with `out_shardings`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ftcot_jax import models
from ftcot_jax.config import TrainConfig
from ftcot_jax.models import sharding
from ftcot_jax.models.api import CausalLM, Family, ModelKind, count_params, model_kind


@dataclasses.dataclass
class Student:
    """Everything the trainer needs about the model, independent of where the weights came from."""

    family: Family
    config: Any  # the family's Config
    tokenizer: Any
    graphdef: Any  # nnx graph of the model with the compute dtype
    abstract_params: dict  # ShapeDtypeStructs (pure dict)
    param_logical: Any  # nnx.State with logical axis metadata (for the sharding rules)
    host_params: dict | None  # loaded weights (numpy/jax), or None for a random init
    make_model: Callable[[], nnx.Module]
    abstract_model: nnx.Module  # the model with ShapeDtypeStruct leaves: which interface it implements

    @property
    def model_type(self) -> ModelKind:
        return model_kind(self.config)

    @property
    def is_causal_lm(self) -> bool:
        """A decoder-only LM (models.api.CausalLM): its LM head can run on label tokens only."""
        return isinstance(self.abstract_model, CausalLM)

    @property
    def n_params(self) -> int:
        return count_params(self.abstract_params)


def build_student(cfg: TrainConfig, *, model: nnx.Module | None = None, tokenizer=None) -> Student:
    """Resolve the student of `cfg.student` (`model`, or `from_scratch` with `model_config`/`model`'s config.json), or
    of the `model`/`tokenizer` objects given to the Python API."""
    st = cfg.student
    compute = jnp.bfloat16 if st.precision == "bf16" else jnp.float32
    host_params = None
    if model is not None:
        config = model.config
        if not st.from_scratch:
            host_params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        if tokenizer is None:
            raise ValueError("train(model=...) also needs tokenizer=...")
    elif st.from_scratch:
        hf = st.model_config
        if hf is None:
            if not st.model:
                raise ValueError(
                    "student.from_scratch needs student.model_config (an HF config dict) or "
                    "student.model (a dir with config.json)"
                )
            path = Path(st.model) / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist (from_scratch reads the architecture from it)")
            hf = json.loads(path.read_text())
        config = models.config_from_hf(hf)
        if tokenizer is None:
            if not (st.tokenizer or st.model):
                raise ValueError(
                    "a from-scratch student needs student.tokenizer (or student.model) naming a tokenizer directory"
                )
            tokenizer = models.load_tokenizer(st.tokenizer or st.model)
    else:
        if not st.model:
            raise ValueError("no student given: set student.model (HF dir, hub id, smollm2-135m-instruct or .gguf)")
        model, loaded_tok = models.load(st.model)
        config = model.config
        tokenizer = tokenizer or loaded_tok
        host_params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    family = models.family_for(config.to_hf_config()["model_type"])

    def make_model():
        model = family.model_cls(config, dtype=compute, rngs=nnx.Rngs(cfg.seed))
        model.remat = cfg.remat  # the training forward's rematerialisation (models.layers.remat_block)
        return model

    abstract = nnx.eval_shape(make_model)
    graphdef, param_state, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(
            f"{family.name}: the model has non-Param state ({list(rest.keys())}); the trainer expects parameters only"
        )
    abstract_params = nnx.to_pure_dict(param_state)
    if host_params is not None:
        got = jax.tree.map(lambda x: tuple(x.shape), host_params)
        want = jax.tree.map(lambda x: tuple(x.shape), abstract_params)
        if got != want:
            raise ValueError("loaded weights do not match the model built from their config")
    if tokenizer is None:
        raise ValueError(f"the student {st.model!r} comes without a tokenizer")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token")
    return Student(family, config, tokenizer, graphdef, abstract_params, param_state, host_params, make_model, abstract)


def param_shardings(student: Student, mesh) -> dict:
    """NamedShardings of the parameters (pure dict), from their logical axis names and the sharding rules."""
    return nnx.to_pure_dict(sharding.logical_to_sharding(student.param_logical, mesh))


def make_param_init(student: Student, shardings: dict) -> Callable[[], dict]:
    """A function that makes the parameters with `shardings`: the loaded weights placed shard by shard, or a
    random init compiled with out_shardings (each device builds only its own shards). Make it once and call
    it for every fresh state (the jitted init compiles on its first call)."""
    if student.host_params is not None:
        return lambda: jax.device_put(student.host_params, shardings)

    def init():
        _, params, _ = nnx.split(student.make_model(), nnx.Param, ...)
        return nnx.to_pure_dict(params)

    return jax.jit(init, out_shardings=shardings)
