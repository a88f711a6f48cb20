"""The trainer's schema: one `TrainConfig` (with mesh, optimizer and distributed sections) describes a run
of `ftcot train` and is written as JSON into the run directory.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from ftcot_jax.config.loader import check_choice as _check_choice
from ftcot_jax.prompts import METHOD_TEMPLATE
from ftcot_jax.self_consistency import check_samples


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (data, fsdp, tensor). -1 on one axis = all devices not used by the others (resolved against
    the devices by `models.sharding.resolve_mesh_shape`, through `train.mesh.mesh_shape`)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    num_devices: int = 0  # 0 = every device; N = only the first N (single-device tests and benchmarks)

    def __post_init__(self):
        if self.num_devices < 0:
            raise ValueError(f"mesh.num_devices must be >= 0, got {self.num_devices}")
        sizes = (self.data, self.fsdp, self.tensor)
        if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
            raise ValueError(f"mesh: axis sizes must be positive (at most one -1 = 'the rest'), got {sizes}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW; defaults are torch.optim.AdamW's with the reference lr (3e-4): no schedule, no clipping."""

    lr: float = 3e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 0
    decay: str = "none"  # none | linear | cosine (down to min_lr_ratio * lr at the last step)
    min_lr_ratio: float = 0.0
    clip_grad_norm: float = 0.0  # 0 = no clipping (reference)

    def __post_init__(self):
        if self.lr <= 0 or self.eps <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"optim: lr and eps must be > 0 and weight_decay >= 0, got lr={self.lr}, "
                f"eps={self.eps}, weight_decay={self.weight_decay}"
            )
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"optim: betas must be in [0, 1), got ({self.b1}, {self.b2})")
        _check_choice("optim.decay", self.decay, ("none", "linear", "cosine"))
        if self.warmup_steps < 0 or self.clip_grad_norm < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("optim: warmup_steps and clip_grad_norm must be >= 0, min_lr_ratio in [0, 1]")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """jax.distributed.initialize() arguments. On Cloud TPU VMs `enabled: true` alone is enough."""

    enabled: bool = False
    coordinator_address: str = ""  # "host:port" of process 0 (GPU / CPU clusters)
    num_processes: int = 0  # 0 = let JAX detect
    process_id: int = -1  # -1 = let JAX detect
    local_device_ids: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class StudentSection:
    """The student: an HF dir / hub id / "smollm2-135m-instruct" / .gguf (ftcot_jax.models.load), or with
    `from_scratch` a random init of `model_config` (HF config dict) with the tokenizer dir `tokenizer`."""

    model: str = ""
    tokenizer: str = ""
    from_scratch: bool = False
    model_config: dict | None = None
    precision: str = "fp32"  # fp32 | bf16 (bf16 compute; fp32 params, optimizer, logits, loss)
    name: str = ""  # shown in reports; "" = derived from model

    def __post_init__(self):
        _check_choice("student.precision", self.precision, ("fp32", "bf16"))

    def check_given(self) -> None:
        """A student must be named (or described, from scratch) when no model object is passed in."""
        if not self.model and not (self.from_scratch and self.model_config):
            raise ValueError(
                "student.model is empty; expected an HF dir, hub id, smollm2-135m-instruct or .gguf "
                "(or student.from_scratch with student.model_config)"
            )

    @property
    def display_name(self) -> str:
        """The name reports show: `name`, else the model's last path part, else "<model_type>-from-scratch"."""
        if self.name:
            return self.name
        if self.model:
            return Path(self.model.rstrip("/")).name
        return f"{(self.model_config or {}).get('model_type', 'model')}-from-scratch"


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """Test-split evaluation: per epoch inside training (greedy); `zero_shot*` are the pipeline's zero-shot
    baseline (`ftcot run`), which `ftcot train` does not run."""

    limit: int = 0  # 0 = whole test split; N = its first N questions
    batch_size: int = 32
    max_new_tokens: int = 256  # fine-tuned students (rationale + answer)
    every_epochs: int = 1
    zero_shot: bool = True  # evaluate the student before fine-tuning ("Q: {q}\n\nA:")
    zero_shot_max_new_tokens: int = 64
    zero_shot_stop: tuple[str, ...] = ()  # reference: none (the whole completion is parsed)
    # Self-consistency (ftcot_jax/self_consistency.py): K > 1 also samples K completions per question, in the
    # same decode calls (K rows per question), and scores maj@K and pass@K beside the greedy accuracy.
    samples: int = 1  # K; 1 = greedy only (the reference)
    temperature: float = 0.7  # of the K samples
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int = 0  # the samples' PRNG seed (folded with the epoch)

    # Keys added after runs were made: left out of a run's stage hash while at their defaults.
    SAMPLING_KEYS: typing.ClassVar[tuple[str, ...]] = ("samples", "temperature", "top_k", "top_p", "seed")

    def __post_init__(self):
        if self.limit < 0 or self.every_epochs < 0:
            raise ValueError("eval.limit and eval.every_epochs must be >= 0")
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.zero_shot_max_new_tokens < 1:
            raise ValueError("eval.batch_size, max_new_tokens, zero_shot_max_new_tokens must be >= 1")
        try:
            check_samples(self.samples, self.temperature)
        except ValueError as e:
            raise ValueError(f"eval.{e}") from None
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(
                f"eval: temperature ({self.temperature}) and top_k ({self.top_k}) must be >= 0, top_p "
                f"({self.top_p}) in (0, 1]"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One student fine-tuning run. Defaults follow the reference trainer (`custom_train.py` and
    `src/custom/model.py` of github.com/itsnamgyu/reasoning-teacher)."""

    # Keys of earlier versions of this schema -> where they live now (the loader moves them there).
    RENAMED_KEYS: typing.ClassVar[dict[str, str]] = {
        "model": "student.model",
        "tokenizer": "student.tokenizer",
        "from_scratch": "student.from_scratch",
        "model_config": "student.model_config",
        "precision": "student.precision",
        "eval_limit": "eval.limit",
        "eval_batch_size": "eval.batch_size",
        "eval_max_new_tokens": "eval.max_new_tokens",
        "eval_every_epochs": "eval.every_epochs",
    }

    run_dir: str = ""
    student: StudentSection = StudentSection()
    # Data: fine-tune sample files (samples.write_samples); empty = build them from the dataset's gold
    # answers / gold rationales for `task` + `method` (written to run_dir/samples/ first).
    task: str = ""
    method: str = "ft_cot"  # ft | ft_cot | step_by_step (Distilling step-by-step: predict + explain)
    # step_by_step: the loss weight of each `predict` label token; `explain` label tokens weigh 1 - label_weight
    label_weight: float = 0.5
    samples: tuple[str, ...] = ()
    split_name: str = "default"
    seed: int = 0
    epochs: int = 20
    max_steps: int = 0  # 0 = epochs * steps_per_epoch
    batch_size: int = 8  # global batch (all hosts, all micro-batches)
    grad_accum: int = 1  # micro-batches per step (batch_size must be divisible by it)
    max_length: int = 512  # prompt and label are each truncated to this (reference); counted
    bucket: int = 64  # sequence lengths are padded up to a multiple of this
    dropout: bool = True  # the model's own dropout in training (reference: train mode; T5 has it)
    # Decoder students: the LM head runs only on label tokens, this many at a time (ftcot_jax/train/head_loss.py);
    # 0 = full [B, L, V] logits as the reference computes them. Same loss either way.
    head_chunk: int = 256
    # Decoder students with the label-only head: projections and MLPs run only on the tokens the loss
    # depends on, padding dropped (models.layers.Packing); the packed length per data shard is rounded
    # up to a multiple of this (bounds the compiled shapes). 0 = compute on the padded batch. Same loss.
    pack_multiple: int = 128
    # Rematerialisation per transformer block (models.layers.remat_block): none | block (keep only the block's
    # matmul outputs) | full (keep only its input). Less activation memory for more compute; same gradients.
    remat: str = "none"
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()
    distributed: DistributedConfig = DistributedConfig()
    eval: EvalSection = EvalSection()
    checkpoint_every_steps: int = 0  # 0 = only at epoch ends
    keep_last: int = 2
    keep_best: int = 1  # best by eval accuracy, kept in addition to the last `keep_last`
    async_checkpointing: bool = True
    log_every_steps: int = 10
    export: bool = True  # the best epoch as an HF dir in run_dir/export at the end (trained.train_and_export)

    def __post_init__(self):
        _check_choice("method", self.method, tuple(METHOD_TEMPLATE))
        if not 0.0 <= self.label_weight <= 1.0:
            raise ValueError(
                f"label_weight must be in [0, 1] (the predict task's share of the loss), got {self.label_weight}"
            )
        for name in ("epochs", "batch_size", "grad_accum", "max_length", "bucket", "keep_last", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("head_chunk", "pack_multiple", "max_steps", "checkpoint_every_steps", "keep_best"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        _check_choice("remat", self.remat, ("none", "block", "full"))

    @property
    def template(self) -> str:
        return METHOD_TEMPLATE[self.method]

    @property
    def precision(self) -> str:
        return self.student.precision
