"""Student models: GPT-2, Llama-family (Llama, Qwen2, Mistral, SmolLM2) and T5, as Flax NNX modules.

    model = from_config(hf_config_dict, seed=0)            # random init
    model, tokenizer = load("gpt2" | "/path/to/hf_dir" | "smollm2-135m-instruct" | "x.gguf")
    tokenizer = load_tokenizer(any of the same names)      # without the weights
    save_hf(model, tokenizer, out_dir)                     # loadable by transformers (PyTorch)

Each family module (`gpt2`, `llama`, `t5`) declares its `FAMILY` (models.api.Family): HF model types, Config,
Model and its HF tensor-name table. `hf` reads and writes HF directories and converts HF names; `gguf` turns a
GGUF file into HF-named tensors; this module ties them together (neither imports the other). The interfaces
models implement are in `models.api`; adding a family follows the "New model family" list in docs/architecture.md.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from ftcot_jax.models import gguf, gpt2, hf, llama, t5
from ftcot_jax.models.api import Family
from ftcot_jax.paths import as_path, download_tree, is_remote, upload_tree

FAMILIES: tuple[Family, ...] = (gpt2.FAMILY, llama.FAMILY, t5.FAMILY)
REGISTRY: dict[str, Family] = {mt: fam for fam in FAMILIES for mt in fam.hf_model_types}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")  # what a config + tokenizer read can leave behind


def family_for(model_type: str | None) -> Family:
    """The family that implements an HF model_type; a ValueError listing the supported ones otherwise."""
    if model_type not in REGISTRY:
        raise ValueError(
            f"unsupported architecture: model_type '{model_type}'; supported model types: {', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[model_type]


def config_from_hf(hf_config: Mapping):
    """The family Config for an HF config.json dict."""
    return family_for(hf_config.get("model_type")).config_cls.from_hf_config(dict(hf_config))


def from_config(hf_config: Mapping, seed: int = 0, *, dtype=jnp.float32):
    """Random-init model for an HF config dict (or one of our Config objects)."""
    config = config_from_hf(hf_config) if isinstance(hf_config, Mapping) else hf_config
    return family_for(model_type_of(config)).model_cls(config, dtype=dtype, rngs=nnx.Rngs(seed))


def model_type_of(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return config.to_hf_config()["model_type"]


# ----------------------------------------------------------------------------- HF names <-> our params


def params_from_hf(config, tensors: Mapping) -> dict:
    """HF-named tensors -> our params (nested dict for `nnx.update`), names and shapes checked."""
    return hf.params_from_hf(family_for(model_type_of(config)).hf_names(config), tensors)


def params_to_hf(model) -> dict:
    """Our params -> HF-named float32 numpy tensors."""
    return hf.params_to_hf(family_for(model_type_of(model)).hf_names(model.config), model)


def load_params_from_hf(model, tensors: Mapping) -> None:
    """Copy HF-named tensors into `model` in place (names and shapes checked)."""
    nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params_from_hf(model.config, tensors)))


def build_model(config, tensors: Mapping, *, dtype=jnp.float32):
    """A model of `config` holding `tensors` (HF names), without paying for a random init first."""
    return hf.build_model(family_for(model_type_of(config)), config, tensors, dtype=dtype)


# ----------------------------------------------------------------------------- loading and saving


def _hf_dir(name: str, revision: str | None, *, weights: bool) -> Path:
    """The local HF directory `name` names: itself, or a hub snapshot for an "org/name" id."""
    if os.path.isdir(name):
        return Path(name)
    if os.path.exists(name):
        raise ValueError(f"{name}: expected an HF model directory or a .gguf file")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, not an "org/name" hub id
        raise FileNotFoundError(f"{name}: no such model directory")
    return hf.download(name, revision, weights=weights)


def load(name_or_path, *, dtype=jnp.float32, revision: str | None = None):
    """(model, tokenizer) from an HF dir (local or gs://), an HF hub id, "smollm2-135m-instruct", or a .gguf file."""
    if is_remote(name_or_path):  # read into memory from a local copy that is gone when this returns
        with tempfile.TemporaryDirectory(prefix="ftcot-load-") as tmp:
            return load_dir(download_tree(as_path(name_or_path), Path(tmp)), dtype=dtype)
    name = str(name_or_path)
    path = gguf.alias_gguf(name)
    if path is not None or name.endswith(".gguf"):
        return load_gguf(path or name, dtype=dtype)
    return load_dir(_hf_dir(name, revision, weights=True), dtype=dtype)


def load_dir(model_dir, *, dtype=jnp.float32):
    """(model, tokenizer) from an HF model directory; tokenizer None (with a warning) when it has none."""
    config = config_from_hf(hf.read_config(model_dir))
    model = build_model(config, hf.read_tensors(model_dir), dtype=dtype)
    try:
        tokenizer = hf.read_tokenizer(model_dir)
    except ValueError as e:
        warnings.warn(f"{e}; returning tokenizer=None", stacklevel=2)
        tokenizer = None
    return model, tokenizer


def load_gguf(path, *, dtype=jnp.float32, with_tokenizer: bool = True, use_cache: bool = True):
    """(model, tokenizer) from a Llama-family GGUF file, through its converted HF copy in the cache when
    allowed (the first load converts and writes it)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    cache = gguf.cached(path) if use_cache else None
    if cache is not None:
        model, tokenizer = load_dir(cache, dtype=dtype)
        return model, (tokenizer if with_tokenizer else None)
    hf_config, tensors = gguf.read_gguf(path)
    model = build_model(config_from_hf(hf_config), tensors, dtype=dtype)
    tokenizer = gguf.load_tokenizer(path) if (with_tokenizer or use_cache) else None
    if use_cache:
        gguf.store(path, lambda out_dir: save_hf(model, tokenizer, out_dir))
    return model, (tokenizer if with_tokenizer else None)


def load_tokenizer(name_or_path, *, revision: str | None = None):
    """The tokenizer of anything `load` accepts (HF dir, hub id, alias, .gguf), without loading weights;
    a ValueError when there is none."""
    if is_remote(name_or_path):
        with tempfile.TemporaryDirectory(prefix="ftcot-load-") as tmp:
            local = download_tree(as_path(name_or_path), Path(tmp), skip_suffixes=WEIGHT_SUFFIXES)
            return hf.read_tokenizer(local)
    name = str(name_or_path)
    path = gguf.alias_gguf(name)
    if path is not None or name.endswith(".gguf"):
        return gguf.load_tokenizer(path or name)
    return hf.read_tokenizer(_hf_dir(name, revision, weights=False))


def save_hf(model, tokenizer, out_dir) -> None:
    """Write config.json + model.safetensors (+ tokenizer files) that transformers loads in PyTorch. A store
    URL (gs://...) is written to a local temporary directory first, then uploaded file by file."""
    if not is_remote(out_dir):
        hf.write_dir(out_dir, model.config.to_hf_config(), params_to_hf(model), tokenizer)
        return
    with tempfile.TemporaryDirectory(prefix="ftcot-export-") as tmp:
        hf.write_dir(tmp, model.config.to_hf_config(), params_to_hf(model), tokenizer)
        upload_tree(Path(tmp), as_path(out_dir))
