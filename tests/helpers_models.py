"""Tiny model configs and torch helpers shared by the model/decode tests."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

TINY_GPT2 = dict(model_type="gpt2", vocab_size=211, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0)
TINY_LLAMA = dict(model_type="llama", vocab_size=223, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                  rope_theta=10000.0, tie_word_embeddings=True, hidden_act="silu",
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
TINY_QWEN2 = dict(model_type="qwen2", vocab_size=197, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6,
                  rope_theta=1000000.0, tie_word_embeddings=False, hidden_act="silu", use_sliding_window=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)


def torch_model(hf_config: dict, seed: int = 0):
    """A random-init transformers PyTorch model in fp32 eval mode (biases randomized so they are tested)."""
    torch = pytest.importorskip("torch")
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.AutoConfig.for_model(**copy.deepcopy(hf_config))  # transformers edits rope dicts in place
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def torch_tensors(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def padded_batch(vocab: int, lengths=(7, 4, 1), seed: int = 0):
    """Left-padded ids/mask (pad id 0); real tokens avoid 0..2 (pad/bos/eos)."""
    rng = np.random.default_rng(seed)
    L = max(lengths)
    ids = np.zeros((len(lengths), L), np.int64)
    mask = np.zeros((len(lengths), L), np.int64)
    for i, n in enumerate(lengths):
        ids[i, L - n:] = rng.integers(3, vocab, n)
        mask[i, L - n:] = 1
    return ids, mask


def torch_logits(model, ids, mask):
    import torch

    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos))
    return out.logits.float().numpy()


def ours_from_torch(tmodel, hf_config: dict, dtype=jnp.float32):
    from flax import nnx

    from ftcot_jax import models

    ours = models.from_config(hf_config, seed=1, dtype=dtype)
    models.load_params_from_hf(ours, torch_tensors(tmodel))
    return ours


def max_diff_on_real(a, b, mask):
    m = mask.astype(bool)
    return float(np.abs(np.asarray(a)[m] - np.asarray(b)[m]).max())



def forward(model, ids, mask):
    """Jitted forward (one compile) instead of eager op-by-op dispatch, which compiles every op shape."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    return _forward_jit(graphdef, state, jnp.asarray(ids), jnp.asarray(mask))


def _forward(graphdef, state, ids, mask):
    from flax import nnx

    return nnx.merge(graphdef, state)(ids, attention_mask_BxL=mask)


_forward_jit = jax.jit(_forward, static_argnums=0)


T5_TINY = dict(model_type="t5", vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
               num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=12,
               decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, feed_forward_proj="relu")


class CharTokenizer:
    """Characters 'a'..'z' and ' ' as ids 3.., 2 = EOS; enough for the text-level path."""

    eos_token_id, pad_token_id = 2, 0
    chars = "abcdefghijklmnopqrstuvwxyz "

    def __call__(self, text, **kw):
        return {"input_ids": [3 + self.chars.index(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.chars[i - 3] if 3 <= i < 3 + len(self.chars) else "" for i in ids)
