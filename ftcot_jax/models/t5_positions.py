"""T5's relative positions: the bucket of every (key - query) distance, and the per-head bias it selects.

Shape suffixes (the letters of models/layers.py): T query length, S key length, H heads, U relative position
buckets.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def relative_position_bucket_table(bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket id for every relative position (key - query) in [-max_distance, max_distance].

    Positions further away share the last bucket, so the table covers all lengths. Computed on the host
    with the same float32 op sequence as HF/Mesh-TF so bucket boundaries agree exactly.
    """
    rp = np.arange(-max_distance, max_distance + 1, dtype=np.int64)
    out = np.zeros_like(rp)
    nb = num_buckets
    if bidirectional:
        nb //= 2
        out += (rp > 0) * nb
        rp = np.abs(rp)
    else:
        rp = -np.minimum(rp, 0)
    max_exact = nb // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        large = np.log(np.maximum(rp, 1).astype(np.float32) / np.float32(max_exact))
        large = large / np.float32(math.log(max_distance / max_exact)) * np.float32(nb - max_exact)
    large = np.minimum(max_exact + large.astype(np.int64), nb - 1)
    return (out + np.where(rp < max_exact, rp, large)).astype(np.int32)


def position_bias_1xHxTxS(rel_bias_UxH, table: np.ndarray, max_distance: int, q_pos_T, k_pos_S):
    """The fp32 attention bias of every (query, key) pair: the learned bias of its distance's bucket."""
    rp_TxS = jnp.clip(k_pos_S[None, :] - q_pos_T[:, None], -max_distance, max_distance) + max_distance
    bucket_TxS = jnp.asarray(table)[rp_TxS]
    return jnp.take(rel_bias_UxH, bucket_TxS, axis=0).transpose(2, 0, 1)[None].astype(jnp.float32)
