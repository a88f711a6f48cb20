"""Student models: GPT-2, Llama-family (Llama, Qwen2, SmolLM2) and T5, as Flax NNX modules.

    model = from_config(hf_config_dict, seed=0)            # random init
    model, tokenizer = load("gpt2" | "/path/to/hf_dir" | "smollm2-135m-instruct" | "x.gguf")
    save_hf(model, tokenizer, out_dir)                     # loadable by transformers (PyTorch)

Each family module (`gpt2`, `llama`, `t5`) exports HF_MODEL_TYPES, Config, Model, params_from_hf, params_to_hf.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType

import jax.numpy as jnp

# Family modules, in the order they are searched for a model_type. "t5" is written by the T5 helper;
# the registry tolerates its absence (an error then names what is missing).
FAMILY_MODULES = ("gpt2", "llama", "t5")


def _family_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"ftcot_jax.models.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"ftcot_jax.models.{name}":
            return None
        raise


def registry() -> dict[str, ModuleType]:
    """HF model_type -> family module, for the families that are installed."""
    out = {}
    for fam in FAMILY_MODULES:
        mod = _family_module(fam)
        if mod is not None:
            for mt in mod.HF_MODEL_TYPES:
                out[mt] = mod
    return out


def family_for(model_type: str | None) -> ModuleType:
    reg = registry()
    if model_type not in reg:
        raise ValueError(f"unsupported architecture: model_type '{model_type}'; supported model types: "
                         f"{', '.join(sorted(reg))}")
    return reg[model_type]


def config_from_hf(hf_config: Mapping):
    """The family Config for an HF config.json dict."""
    return family_for(hf_config.get("model_type")).Config.from_hf_config(dict(hf_config))


def from_config(hf_config: Mapping, seed: int = 0, *, dtype=jnp.float32):
    """Random-init model for an HF config dict (or one of our Config objects)."""
    from flax import nnx

    if isinstance(hf_config, Mapping):
        mod = family_for(hf_config.get("model_type"))
        config = mod.Config.from_hf_config(dict(hf_config))
    else:
        config = hf_config
        mod = family_for(config.to_hf_config()["model_type"])
    return mod.Model(config, dtype=dtype, rngs=nnx.Rngs(seed))


def model_type_of(model) -> str:
    return model.config.to_hf_config()["model_type"]


def load(name_or_path: str, *, dtype=jnp.float32, revision: str | None = None):
    """(model, tokenizer) from an HF dir or hub id, "smollm2-135m-instruct", or a .gguf file."""
    from ftcot_jax.models import hf_io

    return hf_io.load(name_or_path, dtype=dtype, revision=revision)


def save_hf(model, tokenizer, out_dir) -> None:
    """Write config.json + model.safetensors (+ tokenizer files) that transformers loads in PyTorch."""
    from ftcot_jax.models import hf_io

    hf_io.save_hf(model, tokenizer, out_dir)


def load_params_from_hf(model, tensors: Mapping) -> None:
    """Copy HF-named tensors into `model` in place (names/shapes checked by the family module)."""
    from ftcot_jax.models import hf_io

    hf_io.update_from_hf(model, tensors)
