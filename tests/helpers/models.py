"""Tiny model configs, one set per family (HF config dicts), and helpers to run and compare the models.

TINY_* are the model tests' configs (special ids 0 pad, 1 bos, 2 eos for the decoders; T5's own 0 pad, 1 eos).
CHAR_* are the same families sized for `toy_tokenizers.char_tokenizer()`: its 80-id room (78 used), its EOS id 1,
and positions for training lengths; the trainer, pipeline and compare tests use them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

TINY_GPT2 = dict(
    model_type="gpt2", vocab_size=211, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=1,
    eos_token_id=2, pad_token_id=0,
)  # fmt: skip
TINY_LLAMA = dict(
    model_type="llama", vocab_size=223, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
    num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
    rope_theta=10000.0, tie_word_embeddings=True, hidden_act="silu",
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16},
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip
# the llama family's other flavour: qkv biases, an untied head, no RoPE scaling
TINY_QWEN2 = dict(
    model_type="qwen2", vocab_size=197, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6,
    rope_theta=1000000.0, tie_word_embeddings=False, hidden_act="silu", use_sliding_window=False,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip
# 8 buckets / max distance 12 so that 20-token inputs reach the logarithmic and the clipped buckets
TINY_T5 = dict(
    model_type="t5", vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
    relative_attention_num_buckets=8, relative_attention_max_distance=12, decoder_start_token_id=0,
    pad_token_id=0, eos_token_id=1, feed_forward_proj="relu",
)  # fmt: skip
TINY = {"gpt2": TINY_GPT2, "llama": TINY_LLAMA, "qwen2": TINY_QWEN2, "t5": TINY_T5}

# the decode tests that pin outputs of a random 30-token GPT-2 read it with toy_tokenizers.LetterTokenizer
LETTER_GPT2 = dict(TINY_GPT2, vocab_size=30)

CHAR_VOCAB_ROOM = 80  # >= toy_tokenizers.CHAR_VOCAB
CHAR_GPT2 = dict(TINY_GPT2, vocab_size=CHAR_VOCAB_ROOM, n_positions=256, eos_token_id=1)
CHAR_LLAMA = dict(TINY_LLAMA, vocab_size=CHAR_VOCAB_ROOM, max_position_embeddings=1024, eos_token_id=1)
CHAR_T5 = dict(TINY_T5, vocab_size=CHAR_VOCAB_ROOM)


def padded_batch(vocab: int, lengths=(7, 4, 1), seed: int = 0):
    """Left-padded ids/mask (pad id 0); real tokens avoid 0..2 (pad/bos/eos)."""
    rng = np.random.default_rng(seed)
    L = max(lengths)
    ids = np.zeros((len(lengths), L), np.int64)
    mask = np.zeros((len(lengths), L), np.int64)
    for i, n in enumerate(lengths):
        ids[i, L - n :] = rng.integers(3, vocab, n)
        mask[i, L - n :] = 1
    return ids, mask


def max_diff_on_real(a, b, mask):
    """Largest absolute difference over the positions the mask marks as real tokens."""
    m = mask.astype(bool)
    return float(np.abs(np.asarray(a)[m] - np.asarray(b)[m]).max())


def max_tree_diff(a, b) -> float:
    """Largest absolute difference between the leaves of two pytrees of the same structure."""
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def forward(model, ids, mask):
    """Jitted forward (one compile) instead of eager op-by-op dispatch, which compiles every op shape."""
    graphdef, state = nnx.split(model)
    return _forward_jit(graphdef, state, jnp.asarray(ids), jnp.asarray(mask))


@jax.jit(static_argnums=0)
def _forward_jit(graphdef, state, ids, mask):
    return nnx.merge(graphdef, state)(ids, attention_mask_BxL=mask)


def forward_seq2seq(model, ids, mask, dec, dmask):
    """`forward` of an encoder-decoder, teacher-forced on decoder ids `dec` (mask `dmask`)."""
    graphdef, state = nnx.split(model)
    return _forward_seq2seq_jit(graphdef, state, *map(jnp.asarray, (ids, mask, dec, dmask)))


@jax.jit(static_argnums=0)
def _forward_seq2seq_jit(graphdef, state, ids, mask, dec, dmask):
    return nnx.merge(graphdef, state)(
        ids, attention_mask_BxL=mask, decoder_input_ids_BxT=dec, decoder_attention_mask_BxT=dmask
    )


def decoder_batch(vocab: int, start_id: int, lengths=(5, 3, 1), seed: int = 1):
    """Right-padded teacher-forced decoder ids/mask (pad id 0), each row starting with `start_id`."""
    rng = np.random.default_rng(seed)
    T = max(lengths)
    dec = np.zeros((len(lengths), T), np.int64)
    dmask = np.zeros((len(lengths), T), np.int64)
    for i, n in enumerate(lengths):
        dec[i, :n] = np.concatenate([[start_id], rng.integers(2, vocab, n - 1)])
        dmask[i, :n] = 1
    return dec, dmask
