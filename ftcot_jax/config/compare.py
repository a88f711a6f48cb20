"""The comparison's schema: one `CompareSpec` describes a run of `ftcot compare` (ftcot-jax beside the PyTorch
reference trainer on the same job; docs/compare.md). `mode: steps` (default) times a few steps on the same
batches; `mode: to_the_end` trains a run config's student for whole epochs in both systems and scores each epoch
(`EndSection`).

    spec = load_compare_spec(None, ["model=t5-small", "precisions=[fp32]"])
    spec = load_compare_spec(None, ["mode=to_the_end", "end.task=single_eq", "end.method=ft"])

Loaded by the same strict loader as every schema (unknown keys are errors naming the key, values are
type-checked, `key=value` overrides).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ftcot_jax.config.loader import check_choice, load_config

# GPT-2 small (124M) and T5-small (60M) shapes, random init; dropout is off in both systems (docs/compare.md,
# "Noise").
GPT2_SMALL = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
T5_SMALL = dict(
    model_type="t5",
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=2048,
    num_layers=6,
    num_decoder_layers=6,
    num_heads=8,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="relu",
    layer_norm_epsilon=1e-6,
    tie_word_embeddings=True,
    dropout_rate=0.0,
    is_encoder_decoder=True,
)
PRESETS = {"gpt2-small": GPT2_SMALL, "t5-small": T5_SMALL}
DEFAULT_TOKENIZER = "smollm2-135m-instruct"  # the only tokenizer shipped in a package here (GGUF)

# `quick`: a development run (4 steps, 1 repeat, eager only, fp32, 8 eval prompts of 32 tokens at most).
QUICK_OVERRIDES = ("warmup_steps=1", "repeats=1", "precisions=[fp32]", "torch_modes=[eager]")


MODES = ("steps", "to_the_end")
SYSTEMS = ("jax", "torch")


@dataclasses.dataclass(frozen=True)
class EndSection:
    """`mode: to_the_end`: a run config's task, method, student, training and evaluation settings, trained for
    its epochs in both systems on the same curated samples and batches, each epoch scored on the test split."""

    run_config: str = "configs/paper/real_teacher_smollm2.yaml"  # a RunConfig (ftcot run) YAML
    overrides: tuple[str, ...] = ()  # key=value for the run config, e.g. teacher.import_from=DIR, train.epochs=1
    task: str = ""  # "" = the run config's first task
    method: str = "ft_cot"  # ft | ft_cot
    systems: tuple[str, ...] = SYSTEMS  # e.g. [jax] for a second data-order seed of ours only

    def __post_init__(self):
        check_choice("end.method", self.method, ("ft", "ft_cot"))
        if not self.systems:
            raise ValueError("end.systems is empty; expected some of: jax, torch")
        for s in self.systems:
            check_choice("end.systems", s, SYSTEMS)


@dataclasses.dataclass(frozen=True)
class CompareSpec:
    """One comparison. Defaults: GPT-2 small, batch 8 x 256, the reference's AdamW (lr 3e-4)."""

    out_dir: str = "runs/compare"
    mode: str = "steps"  # steps | to_the_end (the `end` section)
    model: str = "gpt2-small"  # gpt2-small | t5-small (random init) | smollm2-135m-instruct | HF dir | .gguf
    model_config: dict | None = None  # an HF config dict to random-init instead of `model` (tests)
    tokenizer: str = ""  # tokenizer dir / GGUF alias for random-init presets (default: smollm2's)
    task: str = "gsm8k"  # samples: the task's gold rationales (ft_cot) or answers (ft)
    method: str = "ft_cot"
    steps: int = 12
    warmup_steps: int = 2  # steps left out of the throughput numbers (compilation, caches)
    batch_size: int = 8
    seq_len: int = 256  # every batch is padded to exactly this length (longer samples left out)
    lr: float = 3e-4
    seed: int = 0
    precisions: tuple[str, ...] = ("fp32", "bf16")
    torch_modes: tuple[str, ...] = ("eager", "compile")
    repeats: int = 2  # A B A B: each configuration runs this many times, alternating
    eval_n: int = 32  # test prompts for the greedy evaluation (0 = no evaluation)
    eval_batch_size: int = 32
    max_new_tokens: int = 64
    threads: int = 0  # 0 = every core of this machine; the same for both systems
    jax_devices: int = 1  # devices for our run (1 = like the single-device PyTorch baseline)
    xla_flags: str = ""  # extra XLA_FLAGS for our runs (e.g. the CPU oneDNN/XNNPACK switches)
    # Our trainer's padding-free layout (TrainConfig.pack_multiple): 0 = ours computes on the padded batch
    # like the reference does. Same batches and losses either way.
    pack_multiple: int = 128
    timeout_s: int = 3600  # per worker subprocess
    # A run whose step would take longer than this (estimated from its own measured matmul rate at
    # its precision, before training) is not trained but reported with the estimate: e.g. PyTorch
    # bf16 on a CPU without bf16 matmul units runs at < 1 GFLOP/s.
    max_est_step_s: float = 600.0
    end: EndSection = EndSection()

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        for p in self.precisions:
            check_choice("precisions", p, ("fp32", "bf16"))
        for m in self.torch_modes:
            check_choice("torch_modes", m, ("eager", "compile"))
        check_choice("method", self.method, ("ft", "ft_cot"))
        for name in ("steps", "batch_size", "seq_len", "repeats", "eval_batch_size", "max_new_tokens", "jax_devices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}), got {self.warmup_steps}")
        if self.eval_n < 0 or self.threads < 0 or self.pack_multiple < 0:
            raise ValueError("eval_n, threads and pack_multiple must be >= 0")


def load_compare_spec(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *, quick: bool = False
) -> CompareSpec:
    """YAML file + `key=value` overrides -> a validated `CompareSpec` (`compare.prepare.check_model` checks that
    its `model` exists); `quick` makes it
    a development run (QUICK_OVERRIDES, at most 4 steps, 8 eval prompts and 32 new tokens)."""
    spec = load_config(path, [*overrides, *(QUICK_OVERRIDES if quick else ())], cls=CompareSpec)
    if quick:
        spec = dataclasses.replace(
            spec, steps=min(spec.steps, 4), eval_n=min(spec.eval_n, 8), max_new_tokens=min(spec.max_new_tokens, 32)
        )
    return spec
