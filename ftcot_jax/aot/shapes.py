"""The architectures of the students users compile for a TPU before they have their weights: HF config.json
fields (public facts of each released checkpoint) by hub id, so `ftcot compile` needs no download.

`student_hf_config(student)` is what a compile builds its abstract student from: `student.model_config`, a
local directory's config.json, or this table (hub id or its last path part, case-insensitive).
"""

from __future__ import annotations

import json
from pathlib import Path

from ftcot_jax.config import StudentSection


def _gpt2(n_embd: int, n_layer: int, n_head: int) -> dict:
    return dict(
        model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=50256, eos_token_id=50256,
    )  # fmt: skip


def _t5(d_model: int, d_ff: int, d_kv: int, heads: int, layers: int, *, flan: bool) -> dict:
    return dict(
        model_type="t5", vocab_size=32128, d_model=d_model, d_ff=d_ff, d_kv=d_kv, num_heads=heads,
        num_layers=layers, num_decoder_layers=layers, relative_attention_num_buckets=32,
        relative_attention_max_distance=128, layer_norm_epsilon=1e-6, dropout_rate=0.1,
        feed_forward_proj="gated-gelu" if flan else "relu", tie_word_embeddings=not flan,
        decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip


def _llama(hidden: int, inter: int, layers: int, heads: int, kv: int, theta: float) -> dict:
    return dict(
        model_type="llama", vocab_size=49152, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=theta, tie_word_embeddings=True, hidden_act="silu", bos_token_id=1, eos_token_id=2,
        pad_token_id=2,
    )  # fmt: skip


KNOWN = {
    "gpt2": _gpt2(768, 12, 12),
    "gpt2-medium": _gpt2(1024, 24, 16),
    "gpt2-large": _gpt2(1280, 36, 20),
    "gpt2-xl": _gpt2(1600, 48, 25),
    "t5-small": _t5(512, 2048, 64, 8, 6, flan=False),
    "t5-base": _t5(768, 3072, 64, 12, 12, flan=False),
    "t5-large": _t5(1024, 4096, 64, 16, 24, flan=False),
    "t5-3b": _t5(1024, 16384, 128, 32, 24, flan=False),
    "flan-t5-small": dict(_t5(512, 1024, 64, 6, 8, flan=True)),
    "flan-t5-base": _t5(768, 2048, 64, 12, 12, flan=True),
    "flan-t5-large": _t5(1024, 2816, 64, 16, 24, flan=True),
    "flan-t5-xl": _t5(2048, 5120, 64, 32, 24, flan=True),
    "smollm2-135m": _llama(576, 1536, 30, 9, 3, 100000.0),
    "smollm2-360m": _llama(960, 2560, 32, 15, 5, 100000.0),
    "smollm2-1.7b": _llama(2048, 8192, 24, 32, 32, 130000.0),
}
for _size in ("135m", "360m", "1.7b"):
    KNOWN[f"smollm2-{_size}-instruct"] = KNOWN[f"smollm2-{_size}"]


def _key(name: str) -> str:
    return name.rstrip("/").split("/")[-1].lower()


def student_hf_config(student: StudentSection) -> dict:
    """The HF config of the configured student, without reading any weights."""
    if student.model_config is not None:
        return dict(student.model_config)
    name = student.model
    if not name:
        raise ValueError("no student: set student.model (an HF dir, a known hub id) or student.model_config")
    path = Path(name)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ValueError(f"student.model {name}: no config.json in it (compiling needs only that file)")
        return json.loads(cfg_file.read_text())
    if _key(name) in KNOWN:
        return dict(KNOWN[_key(name)])
    if name.endswith(".gguf"):
        raise ValueError(
            f"student.model {name}: compile from an HF dir or student.model_config (a .gguf holds weights)"
        )
    raise ValueError(
        f"student.model {name}: compiling needs its architecture: a local dir with config.json, student.model_config, "
        f"or one of the known students ({', '.join(sorted(KNOWN))})"
    )
