"""T5 v1.0, T5 v1.1 and Flan-T5 (HF `T5ForConditionalGeneration`) in Flax NNX.

Facts that differ from the decoder families: pre-RMSNorm without mean or bias, no 1/sqrt(d) attention
scaling (it is folded into the init), relative position buckets whose bias lives only in the first
layer of each stack and is shared by all its layers (bidirectional in the encoder, causal in the decoder),
and a head that is either tied to the shared embedding (v1.0, decoder output scaled by d_model**-0.5)
or untied (v1.1 / Flan-T5, no scaling). This file holds the family's Config, Model and HF name table; the
layers below the model are in models/t5_blocks.py.

Shape suffixes (the letters of models/layers.py): B batch, L encoder length, T decoder length, S decoder
cache slots, D d_model, H heads, K d_kv, F d_ff, V vocab, U relative position buckets.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from ftcot_jax.models.api import Family
from ftcot_jax.models.hf import HFMap, HFName
from ftcot_jax.models.layers import ACTIVATIONS, DropoutKeys, dropout, normal_init, param, remat_block
from ftcot_jax.models.sharding import constrain
from ftcot_jax.models.t5_blocks import Stack

HF_MODEL_TYPES = ("t5", "mt5")  # mT5 is the T5 v1.1 architecture with another vocabulary


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # None = num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "relu" (v1.0) | "gated-gelu" (v1.1, Flan-T5) | "{act}" | "gated-{act}"
    tie_word_embeddings: bool = True  # head shares `shared` (v1.0) or has its own lm_head (v1.1)
    scale_decoder_outputs: bool | None = None  # None = tie_word_embeddings (HF v4 semantics)
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    model_type: str = "t5"
    is_encoder_decoder: bool = True

    def __post_init__(self):
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)
        if self.scale_decoder_outputs is None:
            object.__setattr__(self, "scale_decoder_outputs", self.tie_word_embeddings)
        if self.model_type not in HF_MODEL_TYPES:
            raise ValueError(
                f"t5 config: model_type '{self.model_type}' is not supported; expected one of: "
                f"{', '.join(HF_MODEL_TYPES)}"
            )
        _ = self.activation  # validates feed_forward_proj
        if self.model_type == "mt5" and (self.tie_word_embeddings or self.scale_decoder_outputs):
            raise ValueError("t5 config: mt5 has an untied, unscaled head; set tie_word_embeddings=False")
        if self.relative_attention_num_buckets < 4:
            raise ValueError(
                f"t5 config: relative_attention_num_buckets must be >= 4, got {self.relative_attention_num_buckets}"
            )

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(
                f"t5 config: feed_forward_proj '{self.feed_forward_proj}' is not of the form "
                "'{act}' or 'gated-{act}'"
            )
        act = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]  # as HF does
        if act not in ACTIVATIONS:
            raise ValueError(
                f"t5 config: feed_forward_proj '{self.feed_forward_proj}' uses an unsupported "
                f"activation '{act}'; expected one of: {', '.join(ACTIVATIONS)}"
            )
        return act

    @classmethod
    def from_hf_config(cls, hf: Mapping) -> Config:
        mt = hf.get("model_type", "t5")
        if mt not in HF_MODEL_TYPES:
            hint = " (UMT5 has a relative attention bias in every layer)" if mt == "umt5" else ""
            raise ValueError(f"t5.Config got model_type '{mt}'{hint}; supported: {', '.join(HF_MODEL_TYPES)}")
        names = {f.name for f in dataclasses.fields(cls)} - {
            "is_encoder_decoder",
            "tie_word_embeddings",
            "scale_decoder_outputs",
        }
        kw = {k: hf[k] for k in names if hf.get(k) is not None}
        for k in ("eos_token_id", "pad_token_id", "decoder_start_token_id"):
            if isinstance(kw.get(k), list):  # HF allows a list of eos ids; T5 checkpoints use one
                if len(kw[k]) > 1:
                    warnings.warn(f"t5 config: {k}={kw[k]}; using the first id ({kw[k][0]})", stacklevel=2)
                kw[k] = kw[k][0]
        tie = bool(hf.get("tie_word_embeddings", True))
        if "scale_decoder_outputs" in hf:
            # transformers v5 writes tie_word_embeddings=true for every T5 and keeps the v1.1 "no scaling,
            # own lm_head" switch in scale_decoder_outputs; no released T5 has a tied head without scaling.
            scale = bool(hf["scale_decoder_outputs"])
            tie = tie and scale
        else:
            scale = tie
        if mt == "mt5":
            # transformers v5 forces tie_word_embeddings=true for mT5 but never scales, and the checkpoints
            # have their own lm_head: mT5 is always untied and unscaled.
            tie = scale = False
        if "decoder_start_token_id" not in kw:
            kw["decoder_start_token_id"] = kw.get("pad_token_id", 0)  # T5 starts decoding with pad
        return cls(**kw, tie_word_embeddings=tie, scale_decoder_outputs=scale)

    def to_hf_config(self) -> dict:
        d = dataclasses.asdict(self)
        arch = "MT5ForConditionalGeneration" if self.model_type == "mt5" else "T5ForConditionalGeneration"
        return {
            **d,
            "architectures": [arch],
            "is_encoder_decoder": True,
            "dense_act_fn": self.activation,
            "is_gated_act": self.is_gated,
        }


# ----------------------------------------------------------------------------------------------------------
def shift_right(labels_BxT, decoder_start_token_id: int, pad_token_id: int = 0):
    """Teacher-forcing decoder inputs from labels (HF `_shift_right`): start token, then labels[:-1];
    -100 (ignored label) becomes pad."""
    shifted = jnp.concatenate([jnp.full_like(labels_BxT[:, :1], decoder_start_token_id), labels_BxT[:, :-1]], 1)
    return jnp.where(shifted == -100, pad_token_id, shifted)


class Model(nnx.Module):
    """`model(input_ids_BxL, attention_mask_BxL=..., decoder_input_ids_BxT=..., decoder_attention_mask_BxT=...)
    -> fp32 logits_BxTxV`.

    Generation: `encode` once, `cross_kv` once, then `decode_step` with a cache from `init_cache`.
    Pass `dropout_rng` (a PRNG key) to train with the config's dropout_rate; without it the model is
    deterministic.
    """

    def __init__(self, config: Config, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        # T5 activations overflow fp16 (google-research/text-to-text-transfer-transformer#539,
        # huggingface/transformers#10956).
        if jnp.dtype(dtype) == jnp.float16:
            raise ValueError("t5: dtype float16 is not supported (T5 overflows in fp16); use bfloat16 or float32")
        cfg = self.config = config
        self.dtype = dtype
        self.remat = "none"  # train.remat, set by the trainer (layers.remat_block)
        self.shared = param(rngs, normal_init(1.0), (cfg.vocab_size, cfg.d_model), ("vocab", "embed"))
        self.encoder = Stack(cfg, decoder=False, dtype=dtype, rngs=rngs)
        self.decoder = Stack(cfg, decoder=True, dtype=dtype, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = param(rngs, normal_init(1.0), (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))

    # -- encoder ------------------------------------------------------------------------------------------

    def encode(self, input_ids_BxL, attention_mask_BxL=None, *, dropout_rng=None):
        """Encoder output (after the final norm), fp32 BxLxD. attention_mask: 1 = real token."""
        B, L = input_ids_BxL.shape
        mask_BxL = jnp.ones((B, L), bool) if attention_mask_BxL is None else attention_mask_BxL > 0
        if mask_BxL.shape != (B, L):
            raise ValueError(f"t5: attention_mask shape {mask_BxL.shape} != input_ids shape {(B, L)}")
        rng = DropoutKeys(dropout_rng)
        x_BxLxD = jnp.take(self.shared[...], input_ids_BxL, axis=0)
        x_BxLxD = constrain(dropout(x_BxLxD, self.config.dropout_rate, rng()), ("batch", "length", "embed"))
        pos_L = jnp.arange(L)
        bias = self.encoder.bias(pos_L, pos_L)
        self_mask_BxLxL = jnp.broadcast_to(mask_BxL[:, None, :], (B, L, L))
        for block in self.encoder.blocks:  # layers.remat_block: rematerialised in training if train.remat says so
            run = remat_block(lambda x, b=block: b(x, bias, self_mask_BxLxL, rng=rng), self.remat)
            x_BxLxD, _ = run(x_BxLxD)
        return dropout(self.encoder.final_norm(x_BxLxD), self.config.dropout_rate, rng())

    # -- decoder ------------------------------------------------------------------------------------------

    def cross_kv(self, encoder_out_BxLxD) -> list[tuple[jax.Array, jax.Array]]:
        """Cross-attention keys/values of every decoder layer, computed once per encoder output."""
        return [block.cross_attn.project_kv(encoder_out_BxLxD) for block in self.decoder.blocks]

    def init_cache(self, batch: int, length: int, dtype=None) -> list[dict]:
        shape = (batch, length, self.config.num_heads, self.config.d_kv)
        dt = dtype or self.dtype
        return [{"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)} for _ in self.decoder.blocks]

    def _decoder_features(
        self,
        ids_BxT,
        q_pos_T,
        self_mask_BxTxS,
        k_pos_S,
        cross_kv,
        attention_mask_BxL,
        cache=None,
        cache_index=None,
        rng=lambda: None,
    ):
        B, T = ids_BxT.shape
        L = cross_kv[0][0].shape[1]
        enc_mask_BxL = jnp.ones((B, L), bool) if attention_mask_BxL is None else attention_mask_BxL > 0
        cross_mask_BxTxL = jnp.broadcast_to(enc_mask_BxL[:, None, :], (B, T, L))
        x_BxTxD = jnp.take(self.shared[...], ids_BxT, axis=0)
        x_BxTxD = constrain(dropout(x_BxTxD, self.config.dropout_rate, rng()), ("batch", "length", "embed"))
        bias = self.decoder.bias(q_pos_T, k_pos_S)
        new_cache = []
        for i, block in enumerate(self.decoder.blocks):

            def run(x, b=block, i=i):
                c = None if cache is None else cache[i]
                return b(x, bias, self_mask_BxTxS, cache=c, cache_index=cache_index, cross_kv=cross_kv[i],
                         cross_mask_BxTxL=cross_mask_BxTxL, rng=rng)  # fmt: skip

            x_BxTxD, c = (run if cache is not None else remat_block(run, self.remat))(x_BxTxD)
            new_cache.append(c)
        x_BxTxD = dropout(self.decoder.final_norm(x_BxTxD), self.config.dropout_rate, rng())
        return x_BxTxD, (None if cache is None else new_cache)

    def logits(self, x_BxTxD):
        dt = self.dtype
        if self.config.scale_decoder_outputs:
            x_BxTxD = x_BxTxD * (self.config.d_model**-0.5)
        if self.config.tie_word_embeddings:
            out = jnp.einsum(
                "btd,vd->btv", x_BxTxD.astype(dt), self.shared[...].astype(dt), preferred_element_type=jnp.float32
            )
        else:
            out = jnp.einsum(
                "btd,dv->btv", x_BxTxD.astype(dt), self.lm_head[...].astype(dt), preferred_element_type=jnp.float32
            )
        return constrain(out, ("batch", "length", "vocab"))

    def decode(
        self,
        decoder_input_ids_BxT,
        encoder_out_BxLxD,
        *,
        attention_mask_BxL=None,
        decoder_attention_mask_BxT=None,
        dropout_rng=None,
    ):
        """Teacher-forced decoder logits (causal; decoder_attention_mask masks padded keys)."""
        B, T = decoder_input_ids_BxT.shape
        dmask_BxT = jnp.ones((B, T), bool) if decoder_attention_mask_BxT is None else decoder_attention_mask_BxT > 0
        if dmask_BxT.shape != (B, T):
            raise ValueError(f"t5: decoder_attention_mask shape {dmask_BxT.shape} != decoder_input_ids shape {(B, T)}")
        pos_T = jnp.arange(T)
        causal_TxT = pos_T[None, :] <= pos_T[:, None]
        self_mask_BxTxT = causal_TxT[None] & dmask_BxT[:, None, :]
        x, _ = self._decoder_features(
            decoder_input_ids_BxT,
            pos_T,
            self_mask_BxTxT,
            pos_T,
            self.cross_kv(encoder_out_BxLxD),
            attention_mask_BxL,
            rng=DropoutKeys(dropout_rng),
        )
        return self.logits(x)

    def decode_step(self, token_ids_BxT, cache_index, cache, cross_kv, attention_mask_BxL):
        """T new decoder tokens at positions cache_index .. cache_index+T-1 (same for every row, as decoding
        starts from decoder_start_token_id at position 0). Returns (fp32 logits BxTxV, new cache)."""
        B, T = token_ids_BxT.shape
        S = cache[0]["k"].shape[1]
        index = jnp.asarray(cache_index, jnp.int32)
        q_pos_T = index + jnp.arange(T)
        k_pos_S = jnp.arange(S)
        self_mask_BxTxS = jnp.broadcast_to(k_pos_S[None, None, :] <= q_pos_T[None, :, None], (B, T, S))
        x, new_cache = self._decoder_features(
            token_ids_BxT,
            q_pos_T,
            self_mask_BxTxS,
            k_pos_S,
            cross_kv,
            attention_mask_BxL,
            cache=cache,
            cache_index=index,
        )
        return self.logits(x), new_cache

    def __call__(
        self,
        input_ids_BxL,
        *,
        attention_mask_BxL=None,
        decoder_input_ids_BxT=None,
        decoder_attention_mask_BxT=None,
        dropout_rng=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
    ):
        # The HF-style names are accepted as aliases of the shape-suffixed ones.
        attention_mask_BxL = attention_mask if attention_mask_BxL is None else attention_mask_BxL
        decoder_input_ids_BxT = decoder_input_ids if decoder_input_ids_BxT is None else decoder_input_ids_BxT
        if decoder_attention_mask_BxT is None:
            decoder_attention_mask_BxT = decoder_attention_mask
        if decoder_input_ids_BxT is None:
            raise ValueError(
                "t5: decoder_input_ids_BxT is required (shift the labels right, starting with "
                f"decoder_start_token_id={self.config.decoder_start_token_id})"
            )
        enc_rng, dec_rng = (None, None) if dropout_rng is None else tuple(jax.random.split(dropout_rng))
        enc_BxLxD = self.encode(input_ids_BxL, attention_mask_BxL, dropout_rng=enc_rng)
        return self.decode(
            decoder_input_ids_BxT,
            enc_BxLxD,
            attention_mask_BxL=attention_mask_BxL,
            decoder_attention_mask_BxT=decoder_attention_mask_BxT,
            dropout_rng=dec_rng,
        )


# ----------------------------------------------------------------------------- the HF checkpoint layout


def hf_names(c: Config) -> HFMap:
    """HF T5ForConditionalGeneration. One `shared` embedding (older checkpoints also store it as
    encoder/decoder.embed_tokens); the head is `shared` when tied, else lm_head (transformers v5 falls back to
    `shared` when lm_head is missing: so do we, loudly). The relative bias lives in block 0 of each stack."""
    D, H, K, F, V, U = c.d_model, c.num_heads, c.d_kv, c.d_ff, c.vocab_size, c.relative_attention_num_buckets
    shared = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    tied = c.tie_word_embeddings
    names = [HFName("shared", (V, D), shared[0], aliases=shared[1:], tied=("lm_head.weight",) if tied else ())]
    if not tied:
        names.append(HFName("lm_head", (D, V), "lm_head.weight", transpose=True, fallback=shared))
    for stack, n_blocks, decoder in (("encoder", c.num_layers, False), ("decoder", c.num_decoder_layers, True)):
        names += [
            HFName(
                f"{stack}.rel_bias", (U, H), f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            ),
            HFName(f"{stack}.final_norm.scale", (D,), f"{stack}.final_layer_norm.weight"),
        ]
        for i in range(n_blocks):
            b, h = f"{stack}.blocks.{i}.", f"{stack}.block.{i}.layer."
            parts = [("self", "0.SelfAttention.", "0.")] + ([("cross", "1.EncDecAttention.", "1.")] if decoder else [])
            for ours, attn, norm in parts:
                names += [HFName(f"{b}{ours}_norm.scale", (D,), f"{h}{norm}layer_norm.weight")]
                names += [
                    HFName(f"{b}{ours}_attn.{x}", (D, H, K), f"{h}{attn}{x}.weight", (H * K, D), transpose=True)
                    for x in "qkv"
                ]
                names += [HFName(f"{b}{ours}_attn.o", (H, K, D), f"{h}{attn}o.weight", (D, H * K), transpose=True)]
            ff = f"{h}{2 if decoder else 1}."
            names += [
                HFName(f"{b}ff_norm.scale", (D,), ff + "layer_norm.weight"),
                HFName(f"{b}ff.wo", (F, D), ff + "DenseReluDense.wo.weight", transpose=True),
            ]
            if c.is_gated:  # wi_0 goes through the activation (our wi_gate), wi_1 is the linear branch
                names += [
                    HFName(f"{b}ff.wi_gate", (D, F), ff + "DenseReluDense.wi_0.weight", transpose=True),
                    HFName(f"{b}ff.wi", (D, F), ff + "DenseReluDense.wi_1.weight", transpose=True),
                ]
            else:
                names.append(HFName(f"{b}ff.wi", (D, F), ff + "DenseReluDense.wi.weight", transpose=True))
    # Old checkpoints carry an unused cross-attention relative bias in decoder layer 0.
    return HFMap("t5", tuple(names), ignore=("EncDecAttention.relative_attention_bias",))


FAMILY = Family(name="t5", hf_model_types=HF_MODEL_TYPES, config_cls=Config, model_cls=Model, hf_names=hf_names)
