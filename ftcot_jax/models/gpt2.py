"""GPT-2 (HF `GPT2LMHeadModel`) in Flax NNX: learned positions, pre-LayerNorm blocks, fused qkv, tied head."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax.numpy as jnp
from flax import nnx

from ftcot_jax.models.api import Family
from ftcot_jax.models.cpu_xla import grad_barrier
from ftcot_jax.models.dense import dense
from ftcot_jax.models.hf import HFMap, HFName
from ftcot_jax.models.layers import (
    ACTIVATIONS,
    NO_DROPOUT,
    DecoderLM,
    DropoutKeys,
    LayerNorm,
    dot_attention,
    dropout,
    init_kv_cache,
    normal_init,
    param,
    prepare_inputs,
    remat_block,
    update_cache,
    zeros_init,
)
from ftcot_jax.models.sharding import constrain

HF_MODEL_TYPES = ("gpt2",)


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    # HF GPT2Config's dropout (train mode only; the reference trains with these 0.1 defaults)
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None
    is_encoder_decoder: bool = False

    @property
    def d_ff(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def num_layers(self) -> int:
        return self.n_layer

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"gpt2 config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        for k in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            if not 0.0 <= getattr(self, k) < 1.0:
                raise ValueError(f"gpt2 config: {k}={getattr(self, k)} is not a probability in [0, 1)")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"gpt2 config: activation_function '{self.activation_function}' is not supported; "
                f"expected one of: {', '.join(ACTIVATIONS)}"
            )

    @classmethod
    def from_hf_config(cls, hf: Mapping) -> Config:
        if hf.get("model_type", "gpt2") not in HF_MODEL_TYPES:
            raise ValueError(f"gpt2.Config got model_type '{hf.get('model_type')}'")
        if hf.get("add_cross_attention"):
            raise ValueError("gpt2 config: add_cross_attention=True is not supported")
        names = {f.name for f in dataclasses.fields(cls)} - {"is_encoder_decoder"}
        return cls(**{k: hf[k] for k in names if k in hf})

    def to_hf_config(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("is_encoder_decoder")
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            **d,
            "tie_word_embeddings": True,
            "is_encoder_decoder": False,
        }


class Attention(nnx.Module):
    def __init__(self, cfg: Config, layer_idx: int, *, dtype, rngs: nnx.Rngs):
        D, H, K = cfg.n_embd, cfg.n_head, cfg.head_dim
        init = normal_init(cfg.initializer_range)
        self.qkv_kernel = param(rngs, init, (D, 3, H, K), ("embed", "qkv", "heads", "head_dim"))
        self.qkv_bias = param(rngs, zeros_init, (3, H, K), ("qkv", "heads", "head_dim"))
        self.out_kernel = param(rngs, init, (H, K, D), ("heads", "head_dim", "embed"))
        self.out_bias = param(rngs, zeros_init, (D,), ("embed",))
        scale = 1.0 / math.sqrt(K) if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale, self.dtype = scale, dtype
        self.attn_pdrop, self.resid_pdrop = cfg.attn_pdrop, cfg.resid_pdrop

    def __call__(self, x_PxNxD, mask_BxTxS, cache, cache_index, packing=None, keys=NO_DROPOUT, tokens=None):
        dt = self.dtype
        qkv_PxNx3xHxK = jnp.einsum("pnd,dchk->pnchk", x_PxNxD, self.qkv_kernel[...].astype(dt))
        qkv_PxNx3xHxK = qkv_PxNx3xHxK + self.qkv_bias[...].astype(dt)
        # attention runs on the padded rows: with `packing` (x is [P, N, D]) unpacked before it, packed after
        qkv_BxTx3xHxK = qkv_PxNx3xHxK if packing is None else packing.unpack(qkv_PxNx3xHxK)
        q, k, v = qkv_BxTx3xHxK[:, :, 0], qkv_BxTx3xHxK[:, :, 1], qkv_BxTx3xHxK[:, :, 2]
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k, v, cache = update_cache(cache, k, v, cache_index)
        out_BxTxHxK = dot_attention(q, k, v, mask_BxTxS, self.scale, dt, self.attn_pdrop, keys())
        out_PxNxHxK = out_BxTxHxK if packing is None else packing.pack(out_BxTxHxK)
        y_PxNxD = dense(out_PxNxHxK, self.out_kernel[...].astype(dt), n_in=2) + self.out_bias[...].astype(dt)
        return dropout(y_PxNxD, self.resid_pdrop, keys(), tokens), cache


class Mlp(nnx.Module):
    def __init__(self, cfg: Config, *, dtype, rngs: nnx.Rngs):
        D, F = cfg.n_embd, cfg.d_ff
        init = normal_init(cfg.initializer_range)
        self.fc_kernel = param(rngs, init, (D, F), ("embed", "mlp"))
        self.fc_bias = param(rngs, zeros_init, (F,), ("mlp",))
        self.proj_kernel = param(rngs, init, (F, D), ("mlp", "embed"))
        self.proj_bias = param(rngs, zeros_init, (D,), ("embed",))
        self.act, self.dtype, self.resid_pdrop = ACTIVATIONS[cfg.activation_function], dtype, cfg.resid_pdrop

    def __call__(self, x_PxNxD, keys=NO_DROPOUT, tokens=None):
        dt = self.dtype
        h_PxNxF = self.act(dense(x_PxNxD, self.fc_kernel[...].astype(dt)) + self.fc_bias[...].astype(dt))
        h_PxNxF = constrain(h_PxNxF, ("batch", "length", "mlp"))
        y_PxNxD = dense(h_PxNxF, self.proj_kernel[...].astype(dt)) + self.proj_bias[...].astype(dt)
        return dropout(y_PxNxD, self.resid_pdrop, keys(), tokens)


class Block(nnx.Module):
    def __init__(self, cfg: Config, layer_idx: int, *, dtype, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon, dtype=dtype, rngs=rngs)
        self.attn = Attention(cfg, layer_idx, dtype=dtype, rngs=rngs)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x_PxNxD, mask_BxTxS, cache, cache_index, packing=None, keys=NO_DROPOUT, tokens=None):
        x_PxNxD = grad_barrier(x_PxNxD)
        a_PxNxD, cache = self.attn(self.ln_1(x_PxNxD), mask_BxTxS, cache, cache_index, packing, keys, tokens)
        x_PxNxD = x_PxNxD + a_PxNxD
        x_PxNxD = x_PxNxD + self.mlp(self.ln_2(x_PxNxD), keys, tokens)
        return constrain(x_PxNxD, ("batch", "length", "embed")), cache


class Model(DecoderLM):
    """`model(ids_BxL, attention_mask_BxL=..., positions_BxL=None) -> fp32 logits_BxLxV`.

    Decoding passes `cache` (from `init_cache`) and `cache_index`; then attention_mask covers all cache
    slots and the call returns (logits, new_cache).
    """

    # The logits matmul runs on a head padded from 50257 to 50304 rows off CPU (layers.head_logits); params,
    # checkpoints, HF import/export and `head_VxD` stay at the real vocabulary.
    vocab_multiple = 128

    def __init__(self, config: Config, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        cfg = self.config = config
        self.dtype = dtype
        init = normal_init(cfg.initializer_range)
        self.wte = param(rngs, init, (cfg.vocab_size, cfg.n_embd), ("vocab", "embed"))
        self.wpe = param(rngs, normal_init(0.01), (cfg.n_positions, cfg.n_embd), ("positions", "embed"))
        self.blocks = nnx.List([Block(cfg, i, dtype=dtype, rngs=rngs) for i in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon, dtype=dtype, rngs=rngs)
        self.remat = "none"  # train.remat, set by the trainer (layers.remat_block)

    def init_cache(self, batch: int, length: int, dtype=None) -> list[dict]:
        c = self.config
        return init_kv_cache(c.n_layer, batch, c.n_head, length, c.head_dim, dtype or self.dtype)

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
    ):
        """Final hidden states (after ln_f) and the updated cache: [B, T, D], or with `packing` (training, no
        cache) only those of the packed tokens, [P, N, D] (layers.Packing). With `dropout_rng` (training) the
        config's embd/attn/resid dropout is on, as in HF's train mode."""
        mask_BxTxS, positions_BxT = prepare_inputs(input_ids_BxT, attention_mask_BxL, positions_BxL, cache, cache_index)
        keys, tokens_PxN = DropoutKeys(dropout_rng), None
        if dropout_rng is not None:  # per-token masks: the same units drop in the packed and padded layouts
            B, T = input_ids_BxT.shape
            tokens_PxN = jnp.arange(B * T, dtype=jnp.int32).reshape(B, T)  # each token's index in the padded batch
        ids_PxN, positions_PxN = input_ids_BxT, positions_BxT
        if packing is not None:
            ids_PxN, positions_PxN = packing.pack(input_ids_BxT), packing.pack(positions_BxT)
            tokens_PxN = None if tokens_PxN is None else packing.pack(tokens_PxN)
        x_PxNxD = (jnp.take(self.wte[...], ids_PxN, axis=0) + jnp.take(self.wpe[...], positions_PxN, axis=0)).astype(
            self.dtype
        )
        x_PxNxD = constrain(dropout(x_PxNxD, self.config.embd_pdrop, keys(), tokens_PxN), ("batch", "length", "embed"))
        new_cache = []
        for i, block in enumerate(self.blocks):
            if cache is None:  # training: the block may be rematerialised (layers.remat_block)
                run = remat_block(
                    lambda x, b=block: b(x, mask_BxTxS, None, None, packing, keys, tokens_PxN), self.remat
                )
                x_PxNxD, c = run(x_PxNxD)
            else:
                x_PxNxD, c = block(x_PxNxD, mask_BxTxS, cache[i], cache_index, packing, keys, tokens_PxN)
            new_cache.append(c)
        return self.ln_f(x_PxNxD), (None if cache is None else new_cache)

    def head_VxD(self):
        """The LM head as [V, D] (fp32 param): tied to the token embedding."""
        return self.wte[...]


# ----------------------------------------------------------------------------- the HF checkpoint layout


def hf_names(c: Config) -> HFMap:
    """HF GPT2LMHeadModel. Conv1D weights are [in, out] already: reshapes only. A stored `lm_head.weight` is
    the tied embedding; hub `gpt2` checkpoints name tensors without "transformer."."""
    D, H, K, F, V = c.n_embd, c.n_head, c.head_dim, c.d_ff, c.vocab_size
    names = [
        HFName("wte", (V, D), "transformer.wte.weight", tied=("lm_head.weight",)),
        HFName("wpe", (c.n_positions, D), "transformer.wpe.weight"),
        HFName("ln_f.scale", (D,), "transformer.ln_f.weight"),
        HFName("ln_f.bias", (D,), "transformer.ln_f.bias"),
    ]
    for i in range(c.n_layer):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        names += [
            HFName(b + "ln_1.scale", (D,), h + "ln_1.weight"),
            HFName(b + "ln_1.bias", (D,), h + "ln_1.bias"),
            HFName(b + "attn.qkv_kernel", (D, 3, H, K), h + "attn.c_attn.weight", (D, 3 * D)),
            HFName(b + "attn.qkv_bias", (3, H, K), h + "attn.c_attn.bias", (3 * D,)),
            HFName(b + "attn.out_kernel", (H, K, D), h + "attn.c_proj.weight", (D, D)),
            HFName(b + "attn.out_bias", (D,), h + "attn.c_proj.bias"),
            HFName(b + "ln_2.scale", (D,), h + "ln_2.weight"),
            HFName(b + "ln_2.bias", (D,), h + "ln_2.bias"),
            HFName(b + "mlp.fc_kernel", (D, F), h + "mlp.c_fc.weight"),
            HFName(b + "mlp.fc_bias", (F,), h + "mlp.c_fc.bias"),
            HFName(b + "mlp.proj_kernel", (F, D), h + "mlp.c_proj.weight"),
            HFName(b + "mlp.proj_bias", (D,), h + "mlp.c_proj.bias"),
        ]
    # attn.bias / attn.masked_bias are causal-mask buffers of old checkpoints, not weights.
    return HFMap("gpt2", tuple(names), ignore=(".attn.bias", ".attn.masked_bias"), optional_prefix="transformer.")


FAMILY = Family(name="gpt2", hf_model_types=HF_MODEL_TYPES, config_cls=Config, model_cls=Model, hf_names=hf_names)
