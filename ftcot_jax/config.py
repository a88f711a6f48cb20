"""Run configuration: frozen dataclasses, YAML/dict loading, dotted overrides.

A run is fully described by one `TrainConfig` (written as JSON into the run directory).
Loading is strict: an unknown key is an error that names the key and lists the valid ones, and every
value is type-checked, so a typo fails before anything is compiled.

    cfg = load_config("run.yaml", ["optim.lr=1e-4", "mesh.fsdp=2"])
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml


def _check_choice(name: str, value: str, choices: tuple[str, ...]):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (data, fsdp, tensor). -1 on one axis = all devices not used by the others."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    num_devices: int = 0   # 0 = every device; N = only the first N (single-device tests and benchmarks)

    def __post_init__(self):
        if self.num_devices < 0:
            raise ValueError(f"mesh.num_devices must be >= 0, got {self.num_devices}")
        sizes = (self.data, self.fsdp, self.tensor)
        if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
            raise ValueError(f"mesh: axis sizes must be positive (at most one -1 = 'the rest'), got {sizes}")

    def resolve(self, n_devices: int) -> tuple[int, int, int]:
        """Concrete (data, fsdp, tensor) for `n_devices`; a clear error when it cannot fit."""
        if self.num_devices:
            if self.num_devices > n_devices:
                raise ValueError(f"mesh.num_devices={self.num_devices} but only {n_devices} devices are available")
            n_devices = self.num_devices
        sizes = [self.data, self.fsdp, self.tensor]
        known = 1
        for s in sizes:
            if s != -1:
                known *= s
        if -1 in sizes:
            if n_devices % known:
                raise ValueError(f"mesh {tuple(sizes)} does not fit {n_devices} devices "
                                 f"({n_devices} is not divisible by {known})")
            sizes[sizes.index(-1)] = n_devices // known
        if sizes[0] * sizes[1] * sizes[2] != n_devices:
            raise ValueError(f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) has "
                             f"{sizes[0] * sizes[1] * sizes[2]} devices but {n_devices} are available; "
                             "the product must equal the device count (use -1 for one axis)")
        return tuple(sizes)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW; defaults are torch.optim.AdamW's with the reference lr (spec 4.2): no schedule, no clipping."""

    lr: float = 3e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 0
    decay: str = "none"          # none | linear | cosine (down to min_lr_ratio * lr at the last step)
    min_lr_ratio: float = 0.0
    clip_grad_norm: float = 0.0  # 0 = no clipping (reference)

    def __post_init__(self):
        if self.lr <= 0 or self.eps <= 0 or self.weight_decay < 0:
            raise ValueError(f"optim: lr and eps must be > 0 and weight_decay >= 0, got lr={self.lr}, "
                             f"eps={self.eps}, weight_decay={self.weight_decay}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"optim: betas must be in [0, 1), got ({self.b1}, {self.b2})")
        _check_choice("optim.decay", self.decay, ("none", "linear", "cosine"))
        if self.warmup_steps < 0 or self.clip_grad_norm < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("optim: warmup_steps and clip_grad_norm must be >= 0, min_lr_ratio in [0, 1]")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """jax.distributed.initialize() arguments. On Cloud TPU VMs `enabled: true` alone is enough."""

    enabled: bool = False
    coordinator_address: str = ""   # "host:port" of process 0 (GPU / CPU clusters)
    num_processes: int = 0           # 0 = let JAX detect
    process_id: int = -1             # -1 = let JAX detect
    local_device_ids: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One student fine-tuning run. Defaults follow the reference trainer (spec 4.2)."""

    run_dir: str = ""
    # Student: an HF dir / hub id / "smollm2-135m-instruct" / .gguf path (ftcot_jax.models.load) ...
    model: str = ""
    # ... or, with `from_scratch`, a random init of that model's config (model = a dir with config.json,
    # or model_config = an HF config dict); `tokenizer` then names the tokenizer dir (default: model).
    from_scratch: bool = False
    model_config: dict | None = None
    tokenizer: str = ""
    # Data: fine-tune sample files (records.write_samples); empty = build them from the dataset's gold
    # answers / gold rationales for `task` + `method` (written to run_dir/samples/ first).
    task: str = ""
    method: str = "ft_cot"           # ft | ft_cot
    samples: tuple[str, ...] = ()
    split_name: str = "default"
    seed: int = 0
    epochs: int = 20
    max_steps: int = 0               # 0 = epochs * steps_per_epoch
    batch_size: int = 8              # global batch (all hosts, all micro-batches)
    grad_accum: int = 1              # micro-batches per step (batch_size must be divisible by it)
    max_length: int = 512            # prompt and label are each truncated to this (reference); counted
    bucket: int = 64                 # sequence lengths are padded up to a multiple of this
    precision: str = "fp32"          # fp32 | bf16 (bf16 compute; fp32 params, optimizer, logits, loss)
    dropout: bool = True             # the model's own dropout in training (reference: train mode; T5 has it)
    # Decoder students: the LM head runs only on label tokens, this many at a time (ftcot_jax/head_loss.py);
    # 0 = full [B, L, V] logits as the reference computes them. Same loss either way.
    head_chunk: int = 256
    # Decoder students with the label-only head: projections and MLPs run only on the tokens the loss
    # depends on, padding dropped (models.layers.Packing); the packed length per data shard is rounded
    # up to a multiple of this (bounds the compiled shapes). 0 = compute on the padded batch. Same loss.
    pack_multiple: int = 128
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()
    distributed: DistributedConfig = DistributedConfig()
    eval_every_epochs: int = 1       # 0 = no evaluation during training
    eval_batch_size: int = 32
    eval_max_new_tokens: int = 256
    eval_limit: int = 0              # 0 = whole test split
    checkpoint_every_steps: int = 0  # 0 = only at epoch ends
    keep_last: int = 2
    keep_best: int = 1               # best by eval accuracy, kept in addition to the last `keep_last`
    async_checkpointing: bool = True
    log_every_steps: int = 10
    export: bool = True              # models.save_hf(...) into run_dir/export at the end

    def __post_init__(self):
        _check_choice("method", self.method, ("ft", "ft_cot"))
        _check_choice("precision", self.precision, ("fp32", "bf16"))
        for name in ("epochs", "batch_size", "grad_accum", "max_length", "bucket", "eval_batch_size",
                     "eval_max_new_tokens", "keep_last", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("head_chunk", "pack_multiple", "max_steps", "eval_every_epochs", "eval_limit",
                     "checkpoint_every_steps", "keep_best"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")

    @property
    def template(self) -> str:
        return {"ft": "ft_token", "ft_cot": "ft_cot_token"}[self.method]


# ----------------------------------------------------------------------------- loading


def _coerce(where: str, tp: Any, value: Any) -> Any:
    """Type-check `value` against annotation `tp` (with the few conversions YAML needs)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(where, a, value)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"config key '{where}' expects a mapping, got {value!r}")
        return from_dict(tp, value, prefix=where + ".")
    if origin is tuple:
        (elem, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key '{where}' expects a list, got {value!r}")
        return tuple(_coerce(f"{where}[{i}]", elem, v) for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key '{where}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"config key '{where}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"config key '{where}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"config key '{where}' expects a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ValueError(f"config key '{where}' expects a mapping, got {value!r}")
    raise TypeError(f"config key '{where}': unsupported annotation {tp!r}")


def from_dict(cls, data: dict | None, *, prefix: str = ""):
    """Build dataclass `cls` from a (nested) dict; unknown keys raise ValueError naming them."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ValueError(f"unknown config key '{prefix}{key}'; expected one of: {', '.join(fields)}")
    kwargs = {k: _coerce(prefix + k, hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `a.b=value` strings (value parsed as YAML) to a nested dict; returns a new dict."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: '{p}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                cls=TrainConfig, base: dict | None = None):
    """YAML (or JSON) file + dotted overrides -> validated frozen config."""
    data = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must contain a mapping at the top level")
        data.update(loaded)
    return from_dict(cls, apply_overrides(data, overrides))


def replace(cfg, **changes):
    """dataclasses.replace that also accepts dotted keys: replace(cfg, **{"optim.lr": 1e-4})."""
    return from_dict(type(cfg), apply_overrides(to_dict(cfg), [f"{k}={json.dumps(v)}" for k, v in changes.items()]))


def save_config(cfg, path: str | Path):
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
