"""What a student model is: the interfaces the trainer and the decoder rely on, and the small facts about a
model that every stage asks (its kind, parameter count, pad/EOS ids, context length).

Two kinds of language model, each a `Protocol` (checked with `isinstance`, never by probing signatures):
- `CausalLM` (GPT-2, Llama-family): `features` gives the final hidden states, `head_VxD` the LM head, so the
  trainer can run the head on label tokens only; `init_cache` + `features(cache=...)` decode.
- `Seq2SeqLM` (T5): `encode` once, `cross_kv` once, then `decode_step` with a cache from `init_cache`;
  `decode` is the teacher-forced decoder for training.

Shape suffixes (the letters of models/layers.py): B batch, T query length, L input length, S cache slots,
D embed, V vocab.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import jax
from flax import nnx

ModelKind = Literal["decoder", "encoder_decoder"]
MAX_EOS = 4  # EOS ids travel as a fixed-size array (padded with -1) through the decode loop


@runtime_checkable
class ModelConfig(Protocol):
    """A family's frozen config: converts to and from an HF config.json dict."""

    is_encoder_decoder: bool

    @classmethod
    def from_hf_config(cls, hf: Mapping) -> ModelConfig: ...

    def to_hf_config(self) -> dict: ...


@runtime_checkable
class CausalLM(Protocol):
    """A decoder-only LM. `features(..., packing=, dropout_rng=)` returns (hidden_BxTxD, cache or None):
    with a `layers.Packing` only the packed tokens ([P, N, D]: P data shards of N packed tokens); with a
    `dropout_rng` the config's dropout is on."""

    config: Any
    dtype: Any

    def init_cache(self, batch: int, length: int, dtype=None) -> list[dict]: ...

    def features(
        self,
        input_ids_BxT,
        *,
        attention_mask_BxL=None,
        positions_BxL=None,
        cache=None,
        cache_index=None,
        packing=None,
        dropout_rng=None,
    ): ...

    def head_VxD(self) -> jax.Array: ...

    def logits(self, x_BxTxD) -> jax.Array: ...

    def __call__(
        self,
        input_ids_BxL,
        *,
        attention_mask_BxL=None,
        positions_BxL=None,
        cache=None,
        cache_index=None,
        dropout_rng=None,
    ): ...


@runtime_checkable
class Seq2SeqLM(Protocol):
    """An encoder-decoder LM (T5). `__call__` is the teacher-forced forward pass used in training."""

    config: Any
    dtype: Any

    def encode(self, input_ids_BxL, attention_mask_BxL=None, *, dropout_rng=None) -> jax.Array: ...

    def cross_kv(self, encoder_out_BxLxD) -> list: ...

    def init_cache(self, batch: int, length: int, dtype=None) -> list[dict]: ...

    def decode(
        self,
        decoder_input_ids_BxT,
        encoder_out_BxLxD,
        *,
        attention_mask_BxL=None,
        decoder_attention_mask_BxT=None,
        dropout_rng=None,
    ) -> jax.Array: ...

    def decode_step(self, token_ids_BxT, cache_index, cache, cross_kv, attention_mask_BxL): ...

    def logits(self, x_BxTxD) -> jax.Array: ...

    def __call__(
        self,
        input_ids_BxL,
        *,
        attention_mask_BxL=None,
        decoder_input_ids_BxT=None,
        decoder_attention_mask_BxT=None,
        dropout_rng=None,
    ): ...


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family: its HF model types, its Config and Model classes, and its HF checkpoint layout."""

    name: str
    hf_model_types: tuple[str, ...]
    config_cls: type
    model_cls: type
    hf_names: Callable[[Any], Any]  # config -> models.hf.HFMap (our param <-> HF tensor names, both directions)


def model_kind(model_or_config) -> ModelKind:
    """ "encoder_decoder" for a `Seq2SeqLM` (or its config), "decoder" otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    return "encoder_decoder" if getattr(config, "is_encoder_decoder", False) else "decoder"


def count_params(params_or_model) -> int:
    """Number of parameters of an NNX model, a params pytree, or a pytree of ShapeDtypeStructs."""
    tree = nnx.state(params_or_model, nnx.Param) if isinstance(params_or_model, nnx.Module) else params_or_model
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def eos_ids(model_or_config, tokenizer=None, eos_token_id=None) -> list[int]:
    """The EOS ids decoding stops at: `eos_token_id` if given, else the config's and the tokenizer's."""
    config = getattr(model_or_config, "config", model_or_config)
    ids: list[int] = []
    for e in (
        eos_token_id if eos_token_id is not None else getattr(config, "eos_token_id", None),
        None if tokenizer is None or eos_token_id is not None else tokenizer.eos_token_id,
    ):
        for i in e if isinstance(e, (list, tuple)) else [e]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if len(ids) > MAX_EOS:
        raise ValueError(f"at most {MAX_EOS} EOS token ids are supported, got {ids}")
    return ids


def pad_id(model_or_config, tokenizer=None) -> int:
    """The padding id: the config's, else the tokenizer's, else the first EOS id, else 0."""
    config = getattr(model_or_config, "config", model_or_config)
    for p in (
        getattr(config, "pad_token_id", None),
        None if tokenizer is None else tokenizer.pad_token_id,
        *eos_ids(config, tokenizer),
    ):
        if p is not None:
            return int(p)
    return 0


def tokenizer_pad_id(tokenizer) -> int:
    """The tokenizer's pad id, or its EOS id when it has none (GPT-2, Llama)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def max_positions(model_or_config) -> int | None:
    """The model's position limit (None when the architecture has none, e.g. T5's relative positions)."""
    config = getattr(model_or_config, "config", model_or_config)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
