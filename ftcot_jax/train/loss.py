"""The loss of one training micro-batch: one function per model kind, chosen once from the model's interface.

Each loss is `loss(model, mb, dropout_rng) -> (sum over label tokens of weight * cross-entropy, sum of
weights)`, both fp32, so gradient accumulation normalises once by the label tokens of the whole batch.
- `models.api.CausalLM` (GPT-2, Llama-family): the final hidden states, then the LM head on label tokens only
  (train/head_loss.py; `head_chunk` 0: the full logits instead). Padded and padding-free batches take the
  same path: a padding-free batch carries `pack_index`/`unpack_index`, the model computes only the packed
  tokens ([P, N, D] for P data shards) and the targets are packed the same way.
- `models.api.Seq2SeqLM` (T5): teacher-forced logits of the decoder inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from ftcot_jax.models.api import CausalLM, Seq2SeqLM
from ftcot_jax.models.layers import Packing
from ftcot_jax.train import head_loss
from ftcot_jax.train.mesh import data_shards

LossFn = Callable[..., tuple[jax.Array, jax.Array]]


def _current_data_shards() -> int:
    """Data-parallel shards of the mesh being traced under (1 outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else data_shards(mesh)


def token_cross_entropy(logits_BxLxV, targets_BxL, weights_BxL):
    """(sum of weight * cross-entropy, sum of weights) from full logits."""
    nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV.astype(jnp.float32), targets_BxL)
    return jnp.sum(nll_BxL * weights_BxL), jnp.sum(weights_BxL)


def causal_lm_loss(head_chunk: int) -> LossFn:
    """The loss of a decoder-only LM; `head_chunk` > 0 runs the head on label tokens in chunks of that size."""

    def loss(model, mb, dropout_rng=None):
        extra = {} if dropout_rng is None else {"dropout_rng": dropout_rng}
        targets, weights = mb["targets"], mb["loss_mask"]
        packing = None
        if "pack_index" in mb:  # padding-free: only the needed tokens, grouped by data shard
            packing = Packing(mb["pack_index"], mb["unpack_index"], *mb["input_ids"].shape)
            targets, weights = packing.pack(targets), packing.pack(weights)
        x, _ = model.features(
            mb["input_ids"],
            attention_mask_BxL=mb["attention_mask"],
            positions_BxL=mb["positions"],
            packing=packing,
            **extra,
        )
        if not head_chunk:
            return token_cross_entropy(model.logits(x), targets, weights)
        groups = packing.P if packing is not None else _current_data_shards()
        return head_loss.label_cross_entropy(x, model.head_VxD(), targets, weights, groups=groups, chunk=head_chunk)

    return loss


def seq2seq_loss(model, mb, dropout_rng=None):
    """The loss of an encoder-decoder LM: teacher-forced decoder logits."""
    extra = {} if dropout_rng is None else {"dropout_rng": dropout_rng}
    logits_BxTxV = model(
        mb["input_ids"],
        attention_mask_BxL=mb["attention_mask"],
        decoder_input_ids_BxT=mb["decoder_input_ids"],
        decoder_attention_mask_BxT=mb["decoder_attention_mask"],
        **extra,
    )
    return token_cross_entropy(logits_BxTxV, mb["targets"], mb["loss_mask"])


def loss_for(abstract_model, head_chunk: int) -> LossFn:
    """The loss of the model's kind (`abstract_model`: the model or its `nnx.eval_shape`)."""
    if isinstance(abstract_model, CausalLM):
        return causal_lm_loss(head_chunk)
    if isinstance(abstract_model, Seq2SeqLM):
        return seq2seq_loss
    raise TypeError(f"{type(abstract_model).__name__}: not a CausalLM or Seq2SeqLM (models.api), so no loss for it")
