"""HF checkpoints: the directory format (config.json, safetensors or PyTorch .bin, tokenizer files, hub download)
and the one converter between HF tensor names and our params.

Each family's layout is a table (`HFMap`, one `HFName` per param) that its family file declares as
`hf_names(config)` (models/gpt2.py, llama.py, t5.py); `params_from_hf` and `params_to_hf` apply a table in
either direction, so import and export cannot drift apart.
Import is strict: a missing tensor is a KeyError naming it, a misshaped one a ValueError, an unused one a warning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from ftcot_jax.models.api import Family

SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model", "tokenizer.model")


# ----------------------------------------------------------------------------- the name table's entries


@dataclasses.dataclass(frozen=True)
class HFName:
    """One of our params (dotted path, shape) <-> the HF tensor(s) it is made of.

    To ours: each HF tensor is transposed when `transpose` (nn.Linear stores [out, in]), reshaped to its slice
    of `shape`, and the slices are concatenated along `axis` (fused q/k/v or gate/up); one tensor is a reshape.
    To HF: the inverse. Export writes only `hf`; on import, `aliases` are names the same tensor may be stored
    under instead, `tied` names tensors that must equal it when present (a tied head), and `fallback` is used,
    with a warning, when the tensor and its aliases are missing.
    """

    param: str
    shape: tuple[int, ...]
    hf: str | tuple[str, ...]
    hf_shape: tuple[int, ...] | tuple[tuple[int, ...], ...] | None = None  # None: `shape` (transposed)
    transpose: bool = False
    axis: int = 0
    aliases: tuple[str, ...] = ()
    tied: tuple[str, ...] = ()
    fallback: tuple[str, ...] = ()

    def __post_init__(self):
        names = (self.hf,) if isinstance(self.hf, str) else tuple(self.hf)
        if self.hf_shape is None:
            shapes = (self.shape[::-1] if self.transpose else self.shape,)
        else:
            shapes = (self.hf_shape,) if len(names) == 1 else self.hf_shape
        object.__setattr__(self, "hf", names)
        object.__setattr__(self, "hf_shape", tuple(tuple(s) for s in shapes))
        if (
            len(names) != len(self.hf_shape)
            or (len(names) > 1 and (self.aliases or self.tied or self.fallback))
            or (self.transpose and any(len(s) != 2 for s in self.hf_shape))
        ):
            raise ValueError(f"HFName {self.param}: inconsistent entry {names} {self.hf_shape}")

    def sizes(self) -> list[int]:
        """Each HF tensor's extent along `axis` of our param."""
        rest = math.prod(self.shape) // self.shape[self.axis]
        return [math.prod(s) // rest for s in self.hf_shape]

    def to_ours(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        parts = [a.T if self.transpose else a for a in arrays]
        if len(parts) == 1:
            return parts[0].reshape(self.shape)
        part_shapes = [self.shape[: self.axis] + (n,) + self.shape[self.axis + 1 :] for n in self.sizes()]
        return np.concatenate([p.reshape(s) for p, s in zip(parts, part_shapes, strict=True)], axis=self.axis)

    def to_hf(self, value: np.ndarray) -> dict[str, np.ndarray]:
        pieces = np.split(value, np.cumsum(self.sizes())[:-1], axis=self.axis) if len(self.hf) > 1 else [value]
        return {
            n: np.ascontiguousarray(p.reshape(s[::-1]).T if self.transpose else p.reshape(s))
            for n, s, p in zip(self.hf, self.hf_shape, pieces, strict=True)
        }


@dataclasses.dataclass(frozen=True)
class HFMap:
    """A family's checkpoint layout for one config."""

    family: str  # names the checkpoint in errors ("gpt2", "qwen2", ...)
    names: tuple[HFName, ...]
    ignore: tuple[str, ...] = ()  # substrings of HF names that are buffers, never weights
    optional_prefix: str = ""  # import also accepts checkpoints whose names all lack it


# ----------------------------------------------------------------------------- the converter


class HFTensors:
    """Reads HF tensors by name, checks shapes, and reports names that were never used."""

    def __init__(self, tensors: Mapping[str, np.ndarray], family: str, strip_prefix: str = ""):
        self.tensors, self.family, self.strip, self.used = tensors, family, strip_prefix, set()

    def key(self, name: str) -> str:
        """The name a table entry has in these tensors (without the table's optional prefix when they lack it)."""
        return name[len(self.strip) :] if self.strip and name.startswith(self.strip) else name

    def has(self, name: str) -> bool:
        return self.key(name) in self.tensors

    def get(self, name: str, shape: Sequence[int], also: Sequence[str] = ()) -> np.ndarray:
        name = self.key(name)
        if name not in self.tensors:
            alt = f"; also accepted: {', '.join(repr(self.key(n)) for n in also)}" if also else ""
            raise KeyError(f"{self.family} checkpoint is missing tensor '{name}' (expected shape {tuple(shape)}{alt})")
        arr = np.asarray(self.tensors[name])
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(
                f"{self.family} checkpoint tensor '{name}' has shape {tuple(arr.shape)}, expected {tuple(shape)}"
            )
        self.used.add(name)
        return arr.astype(np.float32)

    def read(self, entry: HFName) -> list[np.ndarray]:
        """The HF arrays of one table entry (aliases and ties checked equal, the fallback used when missing)."""
        if len(entry.hf) > 1:
            return [self.get(n, s) for n, s in zip(entry.hf, entry.hf_shape, strict=True)]
        name, shape = entry.hf[0], entry.hf_shape[0]
        present = [n for n in (name, *entry.aliases) if self.has(n)]
        if not present and entry.fallback and any(self.has(n) for n in entry.fallback):
            fb = next(n for n in entry.fallback if self.has(n))
            warnings.warn(
                f"{self.family} checkpoint has no '{self.key(name)}'; using '{self.key(fb)}' in its place", stacklevel=4
            )
            return [self.get(fb, shape)]
        present = (present or [name]) + [n for n in entry.tied if self.has(n)]
        arrays = [self.get(n, shape, entry.aliases) for n in present]
        for n, a in zip(present[1:], arrays[1:], strict=True):
            if not np.array_equal(a, arrays[0]):
                why = " (tied weights: tie_word_embeddings)" if n in entry.tied else ""
                raise ValueError(
                    f"{self.family} checkpoint: '{self.key(n)}' differs from '{self.key(present[0])}', "
                    f"but this model keeps one tensor for both{why}"
                )
        return arrays[:1]

    def warn_unused(self, ignore: Sequence[str] = ()):
        unused = sorted(n for n in self.tensors if n not in self.used and not any(s in n for s in ignore))
        if unused:
            more = f" (+{len(unused) - 5} more)" if len(unused) > 5 else ""
            warnings.warn(
                f"{self.family}: {len(unused)} checkpoint tensors were not used: {', '.join(unused[:5])}{more}",
                stacklevel=4,
            )


def flat_params_from_hf(names: HFMap, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF-named tensors -> {our dotted param path: float32 array}, checked against the table."""
    p = names.optional_prefix
    strip = p if p and not any(k.startswith(p) for k in tensors) else ""
    t = HFTensors(tensors, names.family, strip)
    out = {e.param: e.to_ours(t.read(e)) for e in names.names}
    t.warn_unused(names.ignore)
    return out


def nest(flat: Mapping[str, np.ndarray]) -> dict:
    """{"blocks.0.attn.q": a} -> {"blocks": {0: {"attn": {"q": a}}}}: the nested state `nnx.update` takes."""
    out: dict = {}
    for path, value in flat.items():
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def params_from_hf(names: HFMap, tensors: Mapping[str, np.ndarray]) -> dict:
    """HF-named tensors -> our params as a nested dict for `nnx.update(model, ...)`."""
    return nest(flat_params_from_hf(names, tensors))


def _flat_state(model) -> dict[str, object]:
    return {".".join(map(str, path)): v.get_value() for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def params_to_hf(names: HFMap, model) -> dict[str, np.ndarray]:
    """Our params -> HF-named float32 tensors (aliases, ties and fallbacks are not written)."""
    flat = _flat_state(model)
    missing = sorted(set(flat) - {e.param for e in names.names})
    if missing:
        raise ValueError(f"{names.family}: no HF name for parameter(s) {', '.join(missing)}")
    out: dict[str, np.ndarray] = {}
    for e in names.names:
        out.update(e.to_hf(np.asarray(flat[e.param], np.float32)))
    return out


def build_model(family: Family, config, tensors: Mapping, *, dtype=jnp.float32):
    """A `family` model of `config` holding `tensors` (HF names), without paying for a random init first."""
    flat = flat_params_from_hf(family.hf_names(config), tensors)
    model = nnx.eval_shape(lambda: family.model_cls(config, dtype=dtype, rngs=nnx.Rngs(0)))
    for name, a in _flat_state(model).items():
        if name not in flat:
            raise ValueError(f"{config.to_hf_config()['model_type']}: no value for parameter {name}")
        if tuple(np.shape(flat[name])) != tuple(a.shape):
            raise ValueError(f"parameter {name}: converted shape {np.shape(flat[name])} != model shape {a.shape}")
    nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), nest(flat)))
    return model


# ----------------------------------------------------------------------------- the directory format


def read_config(model_dir) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (expected an HF model directory)")
    return json.loads(path.read_text())


def read_tensors(model_dir) -> dict[str, np.ndarray]:
    """All tensors of an HF model dir: model.safetensors, sharded safetensors, or pytorch_model.bin."""
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
        import torch  # optional (the torch extra): only .bin checkpoints need it
    except ImportError as e:
        raise ImportError(
            f"{d} has only PyTorch .bin weights; reading them needs torch "
            "(pip install 'ftcot-jax[torch]') or convert them to safetensors"
        ) from e
    for b in bins:
        # weights_only=True: a .bin is a pickle, never let it run code.
        sd = torch.load(str(b), map_location="cpu", weights_only=True)
        out.update({k: v.float().numpy() for k, v in sd.items()})
    return out


def read_tokenizer(model_dir):
    """The tokenizer of an HF dir; a ValueError saying why when it has no usable one."""
    # transformers takes about a second to import; only tokenizer loading needs it.
    from transformers import AutoTokenizer

    if not any((Path(model_dir) / n).is_file() for n in TOKENIZER_FILES):
        # transformers v5 would build an empty tokenizer here.
        raise ValueError(f"{model_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise ValueError(f"{model_dir}: no usable tokenizer ({str(e).splitlines()[0]})") from e
    if len(tok) == 0:
        raise ValueError(f"{model_dir}: tokenizer has an empty vocabulary")
    return tok


def download(repo_id: str, revision: str | None, *, weights: bool = True) -> Path:
    """A local snapshot of an HF hub model (config, tokenizer files and, with `weights`, its weights)."""
    # huggingface_hub's API module takes ~0.1 s to import; only hub downloads need it.
    from huggingface_hub import list_repo_files, snapshot_download

    patterns = [
        "config.json",
        "generation_config.json",
        "tokenizer*",
        "special_tokens_map.json",
        "vocab*",
        "merges.txt",
        "spiece.model",
        "*.model",
        "added_tokens.json",
    ]
    if weights:
        try:
            files = list_repo_files(repo_id, revision=revision)
            patterns += (
                ["*.safetensors", SAFETENSORS_INDEX]
                if any(f.endswith(".safetensors") for f in files)
                else ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
            )
        except Exception:  # offline: fall back to whatever is in the local cache
            patterns += ["*.safetensors", SAFETENSORS_INDEX]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as e:
        raise FileNotFoundError(
            f"'{repo_id}' is neither a local directory nor a downloadable HF hub model "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e


def write_dir(out_dir, hf_config: Mapping, tensors: Mapping[str, np.ndarray], tokenizer=None) -> None:
    """config.json + model.safetensors (+ tokenizer files) that transformers' PyTorch classes load."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(hf_config)
    cfg.setdefault("dtype", "float32")
    save_file(
        {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in tensors.items()},
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
