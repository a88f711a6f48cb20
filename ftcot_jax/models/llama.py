"""Llama-family decoders (Llama 2/3.x, SmolLM2, Qwen2/2.5) in Flax NNX: RoPE (default, llama3),
RMSNorm, grouped-query attention with a fused group-major qkv kernel, SwiGLU, optional biases, tied head."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftcot_jax.models.api import Family
from ftcot_jax.models.cpu_xla import grad_barrier
from ftcot_jax.models.dense import dense
from ftcot_jax.models.hf import HFMap, HFName
from ftcot_jax.models.layers import (
    DecoderLM,
    DropoutKeys,
    RMSNorm,
    dot_attention,
    init_kv_cache,
    normal_init,
    param,
    prepare_inputs,
    remat_block,
    update_cache,
    zeros_init,
)
from ftcot_jax.models.sharding import constrain

HF_MODEL_TYPES = ("llama", "qwen2", "mistral")
ROPE_TYPES = ("default", "linear", "llama3")
_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


@dataclasses.dataclass(frozen=True)
class Config:
    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # (("factor", 8.0), ("rope_type", "llama3"), ...) sorted items, hashable (the config is static under jit)
    rope_scaling: tuple | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2: True; Llama: attention_bias
    o_bias: bool = False  # Llama attention_bias also biases o_proj
    mlp_bias: bool = False
    hidden_act: str = "silu"
    attention_dropout: float = 0.0  # on the attention probabilities, train mode only (as HF)
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | tuple | None = 2
    pad_token_id: int | None = None
    is_encoder_decoder: bool = False

    def __post_init__(self):
        if isinstance(self.rope_scaling, Mapping):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.model_type not in HF_MODEL_TYPES:
            raise ValueError(f"llama.Config: model_type '{self.model_type}' not in {HF_MODEL_TYPES}")
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"{self.model_type} config: num_attention_heads={self.num_attention_heads} is not a "
                f"multiple of num_key_value_heads={self.num_key_value_heads}"
            )
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(
                f"{self.model_type} config: attention_dropout={self.attention_dropout} is not a probability in [0, 1)"
            )
        if self.hidden_act != "silu":
            raise ValueError(
                f"{self.model_type} config: hidden_act '{self.hidden_act}' is not supported; expected 'silu'"
            )
        rope_type = self.rope.get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ValueError(
                f"{self.model_type} config: rope_type '{rope_type}' is not supported; "
                f"expected one of: {', '.join(ROPE_TYPES)}"
            )

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def rope(self) -> dict:
        """rope_scaling as a dict ({} = default RoPE)."""
        return dict(self.rope_scaling or ())

    @classmethod
    def from_hf_config(cls, hf: Mapping) -> Config:
        mt = hf.get("model_type", "llama")
        if mt not in HF_MODEL_TYPES:
            raise ValueError(f"llama.Config got model_type '{mt}'; expected one of: {', '.join(HF_MODEL_TYPES)}")
        if mt == "qwen2" and hf.get("use_sliding_window"):
            raise ValueError("qwen2 config: use_sliding_window=True (sliding-window attention) is not supported")
        if mt == "mistral" and hf.get("sliding_window") is not None:
            raise ValueError(
                f"mistral config: sliding_window={hf['sliding_window']} is not supported; "
                "only full attention (sliding_window: null)"
            )
        # transformers v5 keeps theta and scaling in rope_parameters; older configs use rope_theta/rope_scaling.
        rope = dict(hf.get("rope_parameters") or {})
        if any(isinstance(v, dict) for v in rope.values()):
            raise ValueError(f"{mt} config: per-layer rope_parameters are not supported")
        theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = dict(hf.get("rope_scaling") or {}) | rope
        scaling.pop("rope_theta", None)
        if "type" in scaling:
            scaling.setdefault("rope_type", scaling.pop("type"))
        rope_type = scaling.get("rope_type", "default")
        if rope_type == "llama3":
            scaling.setdefault(
                "original_max_position_embeddings",
                hf.get("original_max_position_embeddings", hf.get("max_position_embeddings", 2048)),
            )
        scaling = None if rope_type == "default" and len(scaling) <= 1 else scaling
        bias = bool(hf.get("attention_bias", False))
        names = {f.name for f in dataclasses.fields(cls)} - {
            "is_encoder_decoder",
            "rope_theta",
            "rope_scaling",
            "qkv_bias",
            "o_bias",
            "model_type",
        }
        kw = {k: hf[k] for k in names if k in hf}
        return cls(
            model_type=mt,
            rope_theta=float(theta),
            rope_scaling=scaling,
            qkv_bias=True if mt == "qwen2" else bias,
            o_bias=False if mt == "qwen2" else bias,
            **kw,
        )

    def to_hf_config(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("qkv_bias", "o_bias", "rope_scaling", "is_encoder_decoder"):
            d.pop(k)
        if isinstance(d["eos_token_id"], tuple):
            d["eos_token_id"] = list(d["eos_token_id"])
        rope = {"rope_type": "default", **self.rope, "rope_theta": self.rope_theta}
        out = {"architectures": [_ARCH[self.model_type]], **d, "rope_parameters": rope, "is_encoder_decoder": False}
        if self.model_type == "llama":
            out["attention_bias"] = self.qkv_bias
        if self.model_type == "qwen2":
            out["use_sliding_window"] = False
        if self.model_type == "mistral":
            out["sliding_window"] = None
        return out


def rope_inv_freq(cfg: Config) -> np.ndarray:
    """Inverse frequencies (K/2,) for the config's RoPE type, as transformers computes them."""
    K = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, K, 2, dtype=np.int64).astype(np.float32) / K))
    s = cfg.rope
    rope_type = s.get("rope_type", "default")
    if rope_type == "linear":
        inv = inv / s["factor"]
    elif rope_type == "llama3":
        factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old_len = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old_len / lo, inv / factor, inv)
        smooth = (old_len / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / hi) & ~(wavelen > old_len / lo)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def apply_rope(x_PxNx_xK, cos_PxNxK, sin_PxNxK):
    """x*cos + rotate_half(x)*sin (HF's half-split layout); x has head axes between N and K."""
    half = x_PxNx_xK.shape[-1] // 2
    rot = jnp.concatenate([-x_PxNx_xK[..., half:], x_PxNx_xK[..., :half]], axis=-1)
    extra = (None,) * (x_PxNx_xK.ndim - 3)
    c = cos_PxNxK[(slice(None), slice(None), *extra)]
    s = sin_PxNxK[(slice(None), slice(None), *extra)]
    return (x_PxNx_xK * c + rot * s).astype(x_PxNx_xK.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: Config, *, dtype, rngs: nnx.Rngs):
        D, G, K = cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim
        R = cfg.num_attention_heads // G
        init = normal_init(cfg.initializer_range)
        # Group-major fused kernel: per kv head g, its R query heads then k then v; shards on kv_heads.
        self.qkv_kernel = param(rngs, init, (D, G, R + 2, K), ("embed", "kv_heads", "qkv", "head_dim"))
        self.qkv_bias = (
            param(rngs, zeros_init, (G, R + 2, K), ("kv_heads", "qkv", "head_dim")) if cfg.qkv_bias else None
        )
        self.o_kernel = param(rngs, init, (G * R, K, D), ("heads", "head_dim", "embed"))
        self.o_bias = param(rngs, zeros_init, (D,), ("embed",)) if cfg.o_bias else None
        self.G, self.R, self.K, self.dtype, self.dropout_rate = G, R, K, dtype, cfg.attention_dropout

    def __call__(self, x_PxNxD, cos_PxNxK, sin_PxNxK, mask_BxTxS, cache, cache_index, packing=None, rng=None):
        dt, G, R = self.dtype, self.G, self.R
        qkv_PxNxGxCxK = dense(x_PxNxD, self.qkv_kernel[...].astype(dt))
        if self.qkv_bias is not None:
            qkv_PxNxGxCxK = qkv_PxNxGxCxK + self.qkv_bias[...].astype(dt)
        q_PxNxGxRxK = apply_rope(qkv_PxNxGxCxK[:, :, :, :R], cos_PxNxK, sin_PxNxK)
        k_PxNxGxK = apply_rope(qkv_PxNxGxCxK[:, :, :, R], cos_PxNxK, sin_PxNxK)
        v_PxNxGxK = qkv_PxNxGxCxK[:, :, :, R + 1]
        # attention runs on the padded rows: with `packing` (x is [P, N, D]) unpacked before it, packed after
        q_BxTxGxRxK, k_BxTxGxK, v_BxTxGxK = (
            (q_PxNxGxRxK, k_PxNxGxK, v_PxNxGxK)
            if packing is None
            else map(packing.unpack, (q_PxNxGxRxK, k_PxNxGxK, v_PxNxGxK))
        )
        B, T = q_BxTxGxRxK.shape[:2]
        q_BxTxHxK = constrain(q_BxTxGxRxK.reshape(B, T, G * R, self.K), ("batch", "length", "heads", "head_dim"))
        k, v, cache = update_cache(cache, k_BxTxGxK, v_BxTxGxK, cache_index)
        out_BxTxHxK = dot_attention(q_BxTxHxK, k, v, mask_BxTxS, 1.0 / math.sqrt(self.K), dt, self.dropout_rate, rng)
        out_PxNxHxK = out_BxTxHxK if packing is None else packing.pack(out_BxTxHxK)
        y_PxNxD = dense(out_PxNxHxK, self.o_kernel[...].astype(dt), n_in=2)
        if self.o_bias is not None:
            y_PxNxD = y_PxNxD + self.o_bias[...].astype(dt)
        return y_PxNxD, cache


class Mlp(nnx.Module):
    def __init__(self, cfg: Config, *, dtype, rngs: nnx.Rngs):
        D, F = cfg.hidden_size, cfg.intermediate_size
        init = normal_init(cfg.initializer_range)
        # gate and up fused along a size-2 axis: one matmul reads both.
        self.gate_up_kernel = param(rngs, init, (D, 2, F), ("embed", None, "mlp"))
        self.down_kernel = param(rngs, init, (F, D), ("mlp", "embed"))
        self.gate_up_bias = param(rngs, zeros_init, (2, F), (None, "mlp")) if cfg.mlp_bias else None
        self.down_bias = param(rngs, zeros_init, (D,), ("embed",)) if cfg.mlp_bias else None
        self.dtype = dtype

    def __call__(self, x_PxNxD):
        dt = self.dtype
        gu_PxNx2xF = jnp.einsum("pnd,dcf->pncf", x_PxNxD, self.gate_up_kernel[...].astype(dt))
        if self.gate_up_bias is not None:
            gu_PxNx2xF = gu_PxNx2xF + self.gate_up_bias[...].astype(dt)
        h_PxNxF = constrain(jax.nn.silu(gu_PxNx2xF[:, :, 0]) * gu_PxNx2xF[:, :, 1], ("batch", "length", "mlp"))
        y_PxNxD = dense(h_PxNxF, self.down_kernel[...].astype(dt))
        if self.down_bias is not None:
            y_PxNxD = y_PxNxD + self.down_bias[...].astype(dt)
        return y_PxNxD


class Block(nnx.Module):
    def __init__(self, cfg: Config, *, dtype, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.post_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x_PxNxD, cos_PxNxK, sin_PxNxK, mask_BxTxS, cache, cache_index, packing=None, rng=None):
        x_PxNxD = grad_barrier(x_PxNxD)
        h_PxNxD = self.input_norm(x_PxNxD)
        a_PxNxD, cache = self.attn(h_PxNxD, cos_PxNxK, sin_PxNxK, mask_BxTxS, cache, cache_index, packing, rng)
        x_PxNxD = x_PxNxD + a_PxNxD
        x_PxNxD = x_PxNxD + self.mlp(self.post_norm(x_PxNxD))
        return constrain(x_PxNxD, ("batch", "length", "embed")), cache


class Model(DecoderLM):
    """`model(ids_BxL, attention_mask_BxL=..., positions_BxL=None) -> fp32 logits_BxLxV`;
    with `cache`/`cache_index` (decoding) returns (logits, new_cache), see gpt2.Model."""

    def __init__(self, config: Config, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        cfg = self.config = config
        self.dtype = dtype
        init = normal_init(cfg.initializer_range)
        self.embed = param(rngs, init, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
        self.layers = nnx.List([Block(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.remat = "none"  # train.remat, set by the trainer (layers.remat_block)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else param(rngs, init, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
        )
        self.inv_freq = tuple(float(f) for f in rope_inv_freq(cfg))  # static, not a parameter

    def init_cache(self, batch: int, length: int, dtype=None) -> list[dict]:
        c = self.config
        return init_kv_cache(c.num_hidden_layers, batch, c.num_key_value_heads, length, c.head_dim, dtype or self.dtype)

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
        """Final hidden states and the updated cache: [B, T, D], or [P, N, D] with `packing` (see
        gpt2.Model.features). With `dropout_rng` (training) the config's attention_dropout is on (HF Llama has no
        other dropout)."""
        mask_BxTxS, positions_BxT = prepare_inputs(input_ids_BxT, attention_mask_BxL, positions_BxL, cache, cache_index)
        ids_PxN, positions_PxN = input_ids_BxT, positions_BxT
        if packing is not None:
            ids_PxN, positions_PxN = packing.pack(input_ids_BxT), packing.pack(positions_BxT)
        inv_freq_K = jnp.tile(jnp.asarray(self.inv_freq, jnp.float32), 2)  # K / 2 frequencies, each twice
        ang_PxNxK = positions_PxN.astype(jnp.float32)[..., None] * inv_freq_K
        cos_PxNxK, sin_PxNxK = jnp.cos(ang_PxNxK).astype(self.dtype), jnp.sin(ang_PxNxK).astype(self.dtype)
        x_PxNxD = jnp.take(self.embed[...], ids_PxN, axis=0).astype(self.dtype)
        x_PxNxD = constrain(x_PxNxD, ("batch", "length", "embed"))
        keys = DropoutKeys(dropout_rng)
        new_cache = []
        for i, layer in enumerate(self.layers):
            if cache is None:  # training: the block may be rematerialised (layers.remat_block)
                key = keys()
                run = remat_block(
                    lambda x, b=layer, k=key: b(x, cos_PxNxK, sin_PxNxK, mask_BxTxS, None, None, packing, k), self.remat
                )
                x_PxNxD, c = run(x_PxNxD)
            else:
                x_PxNxD, c = layer(x_PxNxD, cos_PxNxK, sin_PxNxK, mask_BxTxS, cache[i], cache_index, packing, keys())
            new_cache.append(c)
        return self.norm(x_PxNxD), (None if cache is None else new_cache)

    def head_VxD(self):
        """The LM head as [V, D] (fp32 param): the embedding when tied."""
        return self.embed[...] if self.lm_head is None else self.lm_head[...]


# ----------------------------------------------------------------------------- the HF checkpoint layout


def hf_names(c: Config) -> HFMap:
    """HF LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM. Our q/k/v kernel is fused group-major
    ([D, G, R + 2, K]: per kv head its R query heads, then k, then v), gate/up fused along a size-2 axis."""
    D, H, G, K, F, V = (
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size,
    )
    R = H // G
    tied = c.tie_word_embeddings
    names = [
        HFName("embed", (V, D), "model.embed_tokens.weight", tied=("lm_head.weight",) if tied else ()),
        HFName("norm.scale", (D,), "model.norm.weight"),
    ]
    if not tied:
        names.append(HFName("lm_head", (V, D), "lm_head.weight"))
    for i in range(c.num_hidden_layers):
        b, a, m = f"layers.{i}.", f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        qkv, gate_up = (a + "q_proj", a + "k_proj", a + "v_proj"), (m + "gate_proj", m + "up_proj")
        names += [
            HFName(b + "input_norm.scale", (D,), f"model.layers.{i}.input_layernorm.weight"),
            HFName(b + "post_norm.scale", (D,), f"model.layers.{i}.post_attention_layernorm.weight"),
            HFName(
                b + "attn.qkv_kernel",
                (D, G, R + 2, K),
                tuple(n + ".weight" for n in qkv),
                ((H * K, D), (G * K, D), (G * K, D)),
                transpose=True,
                axis=2,
            ),
            HFName(b + "attn.o_kernel", (H, K, D), a + "o_proj.weight", (D, H * K), transpose=True),
            HFName(
                b + "mlp.gate_up_kernel",
                (D, 2, F),
                tuple(n + ".weight" for n in gate_up),
                ((F, D), (F, D)),
                transpose=True,
                axis=1,
            ),
            HFName(b + "mlp.down_kernel", (F, D), m + "down_proj.weight", transpose=True),
        ]
        if c.qkv_bias:
            names.append(
                HFName(
                    b + "attn.qkv_bias",
                    (G, R + 2, K),
                    tuple(n + ".bias" for n in qkv),
                    ((H * K,), (G * K,), (G * K,)),
                    axis=1,
                )
            )
        if c.o_bias:
            names.append(HFName(b + "attn.o_bias", (D,), a + "o_proj.bias"))
        if c.mlp_bias:
            names += [
                HFName(b + "mlp.gate_up_bias", (2, F), tuple(n + ".bias" for n in gate_up), ((F,), (F,))),
                HFName(b + "mlp.down_bias", (D,), m + "down_proj.bias"),
            ]
    return HFMap(c.model_type, tuple(names), ignore=("rotary_emb.inv_freq",))


FAMILY = Family(name="llama", hf_model_types=HF_MODEL_TYPES, config_cls=Config, model_cls=Model, hf_names=hf_names)
