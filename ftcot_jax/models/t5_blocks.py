"""T5's layers below the model (models/t5.py): attention without score scaling, the (gated) feed-forward, the
pre-norm block (self-attention, cross-attention in the decoder, feed-forward) and the stack of blocks that owns
the relative position bias. Each takes the family's `t5.Config` as `cfg`.

Shape suffixes: as in models/t5.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftcot_jax.models.cpu_xla import grad_barrier
from ftcot_jax.models.layers import ACTIVATIONS, NEG_INF, RMSNorm, dropout, normal_init, param
from ftcot_jax.models.sharding import constrain
from ftcot_jax.models.t5_positions import position_bias_1xHxTxS, relative_position_bucket_table


class Attention(nnx.Module):
    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
        D, H, K = cfg.d_model, cfg.num_heads, cfg.d_kv
        # HF init: the missing 1/sqrt(K) score scaling is folded into q's std.
        self.q = param(rngs, normal_init((D * K) ** -0.5), (D, H, K), ("embed", "heads", "head_dim"))
        self.k = param(rngs, normal_init(D**-0.5), (D, H, K), ("embed", "heads", "head_dim"))
        self.v = param(rngs, normal_init(D**-0.5), (D, H, K), ("embed", "heads", "head_dim"))
        self.o = param(rngs, normal_init((H * K) ** -0.5), (H, K, D), ("heads", "head_dim", "embed"))
        self.dtype, self.dropout_rate = dtype, cfg.dropout_rate

    def project_kv(self, x_BxSxD):
        dt = self.dtype
        k_BxSxHxK = jnp.einsum("bsd,dhk->bshk", x_BxSxD.astype(dt), self.k[...].astype(dt))
        v_BxSxHxK = jnp.einsum("bsd,dhk->bshk", x_BxSxD.astype(dt), self.v[...].astype(dt))
        return k_BxSxHxK, v_BxSxHxK

    def __call__(self, x_BxTxD, k_BxSxHxK, v_BxSxHxK, bias_1xHxTxS, mask_BxTxS, rng=None):
        dt = self.dtype
        q_BxTxHxK = jnp.einsum("btd,dhk->bthk", x_BxTxD.astype(dt), self.q[...].astype(dt))
        q_BxTxHxK = constrain(q_BxTxHxK, ("batch", "length", "heads", "head_dim"))
        scores_BxHxTxS = jnp.einsum(
            "bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK.astype(dt), preferred_element_type=jnp.float32
        )  # no 1/sqrt(K): T5 folds it into init
        if bias_1xHxTxS is not None:
            scores_BxHxTxS = scores_BxHxTxS + bias_1xHxTxS
        scores_BxHxTxS = jnp.where(mask_BxTxS[:, None], scores_BxHxTxS, NEG_INF)
        probs = dropout(jax.nn.softmax(scores_BxHxTxS, axis=-1), self.dropout_rate, rng).astype(dt)
        out_BxTxHxK = jnp.einsum("bhts,bshk->bthk", probs, v_BxSxHxK.astype(dt))
        return jnp.einsum("bthk,hkd->btd", out_BxTxHxK, self.o[...].astype(dt))


class FeedForward(nnx.Module):
    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
        D, F = cfg.d_model, cfg.d_ff
        self.gated = cfg.is_gated
        self.wi = param(rngs, normal_init(D**-0.5), (D, F), ("embed", "mlp"))
        if self.gated:
            self.wi_gate = param(rngs, normal_init(D**-0.5), (D, F), ("embed", "mlp"))
        self.wo = param(rngs, normal_init(F**-0.5), (F, D), ("mlp", "embed"))
        self.act, self.dtype, self.dropout_rate = ACTIVATIONS[cfg.activation], dtype, cfg.dropout_rate

    def __call__(self, x_BxTxD, rng=None):
        dt = self.dtype
        x = x_BxTxD.astype(dt)
        if self.gated:  # HF wi_0 goes through the activation, wi_1 is the linear branch
            h_BxTxF = self.act(x @ self.wi_gate[...].astype(dt)) * (x @ self.wi[...].astype(dt))
        else:
            h_BxTxF = self.act(x @ self.wi[...].astype(dt))
        h_BxTxF = constrain(h_BxTxF, ("batch", "length", "mlp"))
        return dropout(h_BxTxF, self.dropout_rate, rng) @ self.wo[...].astype(dt)


class Block(nnx.Module):
    def __init__(self, cfg, *, decoder: bool, dtype, rngs: nnx.Rngs):
        eps = cfg.layer_norm_epsilon
        self.self_norm = RMSNorm(cfg.d_model, eps, dtype=dtype, rngs=rngs)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        if decoder:
            self.cross_norm = RMSNorm(cfg.d_model, eps, dtype=dtype, rngs=rngs)
            self.cross_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.ff_norm = RMSNorm(cfg.d_model, eps, dtype=dtype, rngs=rngs)
        self.ff = FeedForward(cfg, dtype=dtype, rngs=rngs)
        self.decoder, self.dropout_rate = decoder, cfg.dropout_rate

    def __call__(
        self,
        x_BxTxD,
        self_bias,
        self_mask_BxTxS,
        *,
        cache=None,
        cache_index=None,
        cross_kv=None,
        cross_mask_BxTxL=None,
        rng=lambda: None,
    ):
        """Residual stream stays fp32; sublayers compute in the model dtype.
        With `cache` (dict k, v: BxSxHxK) the T new keys/values are written at slot cache_index."""
        x_BxTxD = grad_barrier(x_BxTxD)
        h = self.self_norm(x_BxTxD)
        k, v = self.self_attn.project_kv(h)
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, cache_index, 0, 0))
            cache = {"k": k, "v": v}
        a = self.self_attn(h, k, v, self_bias, self_mask_BxTxS, rng())
        x_BxTxD = x_BxTxD + dropout(a, self.dropout_rate, rng()).astype(jnp.float32)
        if self.decoder:
            a = self.cross_attn(self.cross_norm(x_BxTxD), *cross_kv, None, cross_mask_BxTxL, rng())
            x_BxTxD = x_BxTxD + dropout(a, self.dropout_rate, rng()).astype(jnp.float32)
        f = self.ff(self.ff_norm(x_BxTxD), rng())
        x_BxTxD = x_BxTxD + dropout(f, self.dropout_rate, rng()).astype(jnp.float32)
        return constrain(x_BxTxD, ("batch", "length", "embed")), cache


class Stack(nnx.Module):
    """Encoder or decoder stack. The relative attention bias belongs to layer 0 and is shared by all layers."""

    def __init__(self, cfg, *, decoder: bool, dtype, rngs: nnx.Rngs):
        n = cfg.num_decoder_layers if decoder else cfg.num_layers
        self.rel_bias = param(
            rngs,
            normal_init(cfg.d_model**-0.5),
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            ("relpos_buckets", "heads"),
        )
        self.blocks = nnx.List([Block(cfg, decoder=decoder, dtype=dtype, rngs=rngs) for _ in range(n)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, dtype=jnp.float32, rngs=rngs)
        self.bucket_table = tuple(
            relative_position_bucket_table(
                not decoder, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
            ).tolist()
        )
        self.max_distance = cfg.relative_attention_max_distance

    def bias(self, q_pos_T, k_pos_S):
        return position_bias_1xHxTxS(
            self.rel_bias[...], np.asarray(self.bucket_table, np.int32), self.max_distance, q_pos_T, k_pos_S
        )
