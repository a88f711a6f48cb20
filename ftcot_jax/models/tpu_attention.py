"""Attention on TPU: the Pallas splash-attention kernel (`jax.experimental.pallas.ops.tpu.splash_attention`, a
flash-attention kernel that skips fully masked blocks) for causal self-attention over padded rows.

A Mosaic kernel cannot be partitioned by XLA, so under a mesh it runs per device inside a `shard_map` over the
mesh's batch and head axes (the specs come from models/sharding.py's rules for "batch", "heads" and "kv_heads";
lengths and head dims are never split). Without a mesh it is called directly. models/layers.py picks it for a
computation lowered for TPU (`layers.attention_implementation`) where `supports` holds; elsewhere attention keeps
the XLA form.

What it takes: self-attention without a KV cache (T == S: training, evaluation's full forward), the causal mask
and padding on either side given as the keys' mask, grouped-query attention (G kv heads, H % G == 0), any head
dim, fp32 or bf16. Rows are padded up to a multiple of the kernel's 128-position block with padding positions,
so lengths under 128 keep the XLA form (padding would more than double their work). Not taken: an additive bias
(T5's relative positions), dropout on the probabilities, and decoding with a cache (prefill over the cache's
slots, a step of one token against S slots): those keep the XLA form.

Masking: a position's segment id is 1 for a real token and 0 for padding, and the kernel's causal mask is
and-ed with "same segment". A real query then sees exactly the real keys at or before it, as in ours; a padding
query sees the padding keys at or before it (its own slot at least, so no row is empty) where ours sees every
real key before it or, with nothing to see, every slot uniformly. Padding rows are never read (they carry no
loss and are not returned), so only their values differ, never a real row's or any gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

from ftcot_jax.models.sharding import logical_to_spec

BLOCK = 128  # the kernel's smallest tile along queries and keys (a TPU vector register's lanes)
BLOCK_SIZES = (512, 256, 128)  # the largest that divides the (padded) length is used


def supports(q_len: int, kv_len: int) -> bool:
    """Whether the kernel takes self-attention of `q_len` queries over `kv_len` keys: no cache (equal lengths),
    at least one full block."""
    return q_len == kv_len and q_len >= BLOCK


def _kernel(heads: int, length: int, interpret: bool) -> splash.SplashAttentionKernel:
    """The causal splash kernel for `heads` query heads over rows of `length` (a multiple of BLOCK)."""
    b = next(b for b in BLOCK_SIZES if length % b == 0)
    sizes = splash.BlockSizes(
        block_q=b, block_kv=b, block_kv_compute=b,
        block_q_dkv=b, block_kv_dkv=b, block_kv_dkv_compute=b,
        block_q_dq=b, block_kv_dq=b,
    )  # fmt: skip
    mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * heads)
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _local(q_BxTxHxK, k_BxGxTxK, v_BxGxTxK, segment_BxT, *, interpret: bool):
    """The kernel on the rows and heads one device holds (vmapped over rows; it takes one row)."""
    _, T, H, _ = q_BxTxHxK.shape
    kernel = _kernel(H, T, interpret)

    def row(q_HxTxK, k_GxTxK, v_GxTxK, segment_T):
        return kernel(q_HxTxK, k_GxTxK, v_GxTxK, segment_ids=splash.SegmentIds(segment_T, segment_T))

    out_BxHxTxK = jax.vmap(row)(q_BxTxHxK.transpose(0, 2, 1, 3), k_BxGxTxK, v_BxGxTxK, segment_BxT)
    return out_BxHxTxK.transpose(0, 2, 1, 3)


def _specs(q_shape, kv_shape, mesh_shape: dict) -> tuple[P, P, P]:
    """shard_map specs (q [B, T, H, K], k/v [B, G, T, K], segments [B, T]) from the sharding rules: rows on the
    batch axes, heads on the head axis only where both H and G divide by it (so each device keeps whole groups of
    R = H / G query heads with their kv head); lengths and head dims whole."""
    q_spec = logical_to_spec(("batch", "length", "heads", "head_dim"), q_shape, mesh_shape)
    kv_spec = logical_to_spec(("batch", "kv_heads", "kv_length", "head_dim"), kv_shape, mesh_shape)
    batch = q_spec[0]
    heads = q_spec[2] if q_spec[2] == kv_spec[1] else None
    return P(batch, None, heads, None), P(batch, heads, None, None), P(batch, None)


def splash_attention(q_BxTxHxK, k_BxGxTxK, v_BxGxTxK, kv_mask_BxT, *, scale: float, dtype, interpret: bool = False):
    """Causal self-attention of q [B, T, H, K] over keys/values in the cache layout [B, G, T, K], where
    `kv_mask_BxT` marks real tokens; softmax scaled by `scale`, computed in `dtype` with fp32 softmax statistics.
    Inside `jax.set_mesh(mesh)` it runs per device in a shard_map; `interpret` runs the kernel in Pallas's
    interpreter (tests on CPU)."""
    B, T, H, K = q_BxTxHxK.shape
    pad = -T % BLOCK
    q = (q_BxTxHxK.astype(jnp.float32) * scale).astype(dtype)  # the kernel does not scale
    k, v = k_BxGxTxK.astype(dtype), v_BxGxTxK.astype(dtype)
    segment_BxT = (kv_mask_BxT > 0).astype(jnp.int32)
    if pad:  # padding positions at the end of every row
        q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
        k, v = (jnp.pad(a, ((0, 0), (0, 0), (0, pad), (0, 0))) for a in (k, v))
        segment_BxT = jnp.pad(segment_BxT, ((0, 0), (0, pad)))
    run = functools.partial(_local, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is not None and not mesh.empty:
        q_spec, kv_spec, seg_spec = _specs(q.shape, k.shape, dict(mesh.shape))
        run = jax.shard_map(
            run, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec, check_vma=False
        )
    return run(q, k, v, segment_BxT)[:, :T]
