"""HF checkpoint import/export: config.json + safetensors (PyTorch .bin only via torch.load(weights_only=True)).

Dispatches on config.json's `model_type` through the family registry in `ftcot_jax.models`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SAFETENSORS_INDEX = "model.safetensors.index.json"


def family_of_model(model):
    from ftcot_jax.models import family_for, model_type_of

    return family_for(model_type_of(model))


def update_from_hf(model, tensors: Mapping) -> None:
    """Copy HF-named tensors into an existing model (names and shapes checked)."""
    mod = family_of_model(model)
    params = mod.params_from_hf(model.config, tensors)
    nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params))


def build_model(config, tensors: Mapping, *, dtype=jnp.float32):
    """A model of `config` holding `tensors` (HF names), without paying for a random init first."""
    from ftcot_jax.models import family_for

    mod = family_for(config.to_hf_config()["model_type"])
    params = mod.params_from_hf(config, tensors)
    model = nnx.eval_shape(lambda: mod.Model(config, dtype=dtype, rngs=nnx.Rngs(0)))
    abstract = {tuple(path): v.get_value() for path, v in nnx.to_flat_state(nnx.state(model))}
    given = {tuple(p.key if hasattr(p, "key") else p.idx for p in path): v
             for path, v in jax.tree_util.tree_leaves_with_path(params)}
    for k, a in abstract.items():
        name = ".".join(map(str, k))
        if k not in given:
            raise ValueError(f"{config.to_hf_config()['model_type']}: no value for parameter {name}")
        if tuple(np.shape(given[k])) != tuple(a.shape):
            raise ValueError(f"parameter {name}: converted shape {np.shape(given[k])} != model shape {a.shape}")
    nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params))
    return model


# ----------------------------------------------------------------------------- reading

def read_config(model_dir) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (expected an HF model directory)")
    return json.loads(path.read_text())


def read_tensors(model_dir) -> dict[str, np.ndarray]:
    """All tensors of an HF model dir: model.safetensors, sharded safetensors, or pytorch_model.bin."""
    from safetensors import safe_open

    d = Path(model_dir)
    if (d / SAFETENSORS_INDEX).is_file():
        files = sorted(set(json.loads((d / SAFETENSORS_INDEX).read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in d.glob("*.safetensors"))
    out: dict[str, np.ndarray] = {}
    if files:
        for f in files:
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d}: safetensors shard '{f}' listed in {SAFETENSORS_INDEX} is missing")
            try:
                with safe_open(str(d / f), framework="numpy") as sf:
                    for k in sf.keys():
                        out[k] = sf.get_tensor(k)
            except TypeError:  # bf16 tensors have no numpy dtype: go through torch
                with safe_open(str(d / f), framework="pt") as sf:
                    for k in sf.keys():
                        out[k] = sf.get_tensor(k).float().numpy()
        return out
    bins = sorted(d.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"{d}: no *.safetensors or pytorch_model*.bin weights found")
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{d} has only PyTorch .bin weights; reading them needs torch "
                          "(pip install 'ftcot-jax[torch]') or convert them to safetensors") from e
    for b in bins:
        # weights_only=True: a .bin is a pickle, never let it run code.
        sd = torch.load(str(b), map_location="cpu", weights_only=True)
        out.update({k: v.float().numpy() for k, v in sd.items()})
    return out


def load_tokenizer(model_dir, **kw):
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model", "tokenizer.model")
    if not any((Path(model_dir) / n).is_file() for n in names):
        # transformers v5 would build an empty tokenizer here; None is the honest answer.
        warnings.warn(f"{model_dir}: no tokenizer files ({', '.join(names)}); returning tokenizer=None")
        return None
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), **kw)
    except (OSError, ValueError) as e:
        warnings.warn(f"{model_dir}: no usable tokenizer ({str(e).splitlines()[0]}); returning tokenizer=None")
        return None
    if len(tok) == 0:
        warnings.warn(f"{model_dir}: tokenizer has an empty vocabulary; returning tokenizer=None")
        return None
    return tok


def load_dir(model_dir, *, dtype=jnp.float32):
    from ftcot_jax.models import config_from_hf

    config = config_from_hf(read_config(model_dir))
    model = build_model(config, read_tensors(model_dir), dtype=dtype)
    return model, load_tokenizer(model_dir)


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import list_repo_files, snapshot_download

    try:
        files = list_repo_files(repo_id, revision=revision)
        weights = ["*.safetensors", SAFETENSORS_INDEX] if any(f.endswith(".safetensors") for f in files) \
            else ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
    except Exception:  # offline: fall back to whatever is in the local cache
        weights = ["*.safetensors", SAFETENSORS_INDEX]
    patterns = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "vocab*",
                "merges.txt", "spiece.model", "*.model", "added_tokens.json", *weights]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as e:
        raise FileNotFoundError(f"'{repo_id}' is neither a local directory nor a downloadable HF hub model "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def load(name_or_path: str, *, dtype=jnp.float32, revision: str | None = None):
    """(model, tokenizer) from an HF dir, an HF hub id, "smollm2-135m-instruct", or a .gguf file."""
    from ftcot_jax.models import gguf_io

    name = str(name_or_path)
    if name.lower() in gguf_io.ALIASES:
        return gguf_io.load_alias(name.lower(), dtype=dtype)
    if name.endswith(".gguf"):
        return gguf_io.load_gguf(name, dtype=dtype)
    if os.path.isdir(name):
        return load_dir(name, dtype=dtype)
    if os.path.exists(name):
        raise ValueError(f"{name}: expected an HF model directory or a .gguf file")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, not an "org/name" hub id
        raise FileNotFoundError(f"{name}: no such model directory")
    return load_dir(_download(name, revision), dtype=dtype)


# ----------------------------------------------------------------------------- writing

def save_hf(model, tokenizer, out_dir) -> None:
    """config.json + model.safetensors (+ tokenizer files) loadable by transformers' PyTorch classes."""
    from safetensors.numpy import save_file

    mod = family_of_model(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(model.config.to_hf_config())
    cfg.setdefault("dtype", "float32")
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in mod.params_to_hf(model).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
