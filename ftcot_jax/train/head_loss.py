"""Cross-entropy of a decoder student computed only where the loss is: the LM head on label tokens.

A Fine-tune-CoT row is `prompt + rationale + answer + EOS + padding`, and only the label part carries loss
(in the reference's GSM8K batches of 8 x 256, 30-50% of the positions). The LM head is the largest matmul of a
small student (GPT-2 small: 31% of the step's FLOPs), and the full `[B, L, V]` logits are the largest tensor
(411 MB at 8 x 256 x 50257 in fp32). Here the label positions are packed to the front (on device, so no shape
depends on the data) and the head runs over them in chunks of `chunk` tokens inside a `lax.fori_loop` whose trip
count is the number of chunks holding labels; the gradients w.r.t. the hidden states and the head are formed in
the same pass (softmax - one-hot), so no logits tensor ever exists beyond one chunk. The loss is the same sum
of token cross-entropies as the full-logits path (tests/unit/test_head_loss.py compares both, values and gradients).

Rows are grouped by data-parallel shard (P groups): packing, chunks and the head gradient stay local to a
shard, so a mesh runs this without moving activations; the trip count is the largest over the groups.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _chunked_xent(h_PxMxD, head_VxD, targets_PxM, weights_PxM, n_chunks, chunk: int):
    return _chunked_xent_fwd(h_PxMxD, head_VxD, targets_PxM, weights_PxM, n_chunks, chunk)[0]


def _chunked_xent_fwd(h_PxMxD, head_VxD, targets_PxM, weights_PxM, n_chunks, chunk: int):
    P, M, D = h_PxMxD.shape
    V = head_VxD.shape[0]
    dt = h_PxMxD.dtype
    w_VxD = head_VxD.astype(dt)

    def body(i, carry):
        loss, dh_PxMxD, dw_PxVxD = carry
        start = i * chunk
        h_PxCxD = jax.lax.dynamic_slice_in_dim(h_PxMxD, start, chunk, axis=1)
        t_PxC = jax.lax.dynamic_slice_in_dim(targets_PxM, start, chunk, axis=1)
        w_PxC = jax.lax.dynamic_slice_in_dim(weights_PxM, start, chunk, axis=1)
        logits_PxCxV = jnp.einsum("pcd,vd->pcv", h_PxCxD, w_VxD, preferred_element_type=jnp.float32)
        lse_PxC = jax.nn.logsumexp(logits_PxCxV, axis=-1)
        target_logit_PxC = jnp.take_along_axis(logits_PxCxV, t_PxC[..., None], axis=-1)[..., 0]
        loss = loss + jnp.sum(w_PxC * (lse_PxC - target_logit_PxC))
        # d(loss)/d(logits) = weight * (softmax - one_hot(target))
        onehot_PxCxV = jnp.arange(V, dtype=t_PxC.dtype) == t_PxC[..., None]
        g_PxCxV = ((jnp.exp(logits_PxCxV - lse_PxC[..., None]) - onehot_PxCxV) * w_PxC[..., None]).astype(dt)
        dh_PxCxD = jnp.einsum("pcv,vd->pcd", g_PxCxV, w_VxD, preferred_element_type=jnp.float32)
        dh_PxMxD = jax.lax.dynamic_update_slice_in_dim(dh_PxMxD, dh_PxCxD.astype(dh_PxMxD.dtype), start, axis=1)
        dw_PxVxD = dw_PxVxD + jnp.einsum("pcv,pcd->pvd", g_PxCxV, h_PxCxD, preferred_element_type=jnp.float32)
        return loss, dh_PxMxD, dw_PxVxD

    init = (jnp.float32(0), jnp.zeros((P, M, D), dt), jnp.zeros((P, V, D), jnp.float32))
    loss, dh_PxMxD, dw_PxVxD = jax.lax.fori_loop(0, n_chunks, body, init)
    return loss, (dh_PxMxD, dw_PxVxD.sum(0).astype(head_VxD.dtype))


def _chunked_xent_bwd(chunk, residuals, g):
    dh_PxMxD, dw_VxD = residuals
    return (g.astype(dh_PxMxD.dtype) * dh_PxMxD, g.astype(dw_VxD.dtype) * dw_VxD, None, None, None)


_chunked_xent.defvjp(_chunked_xent_fwd, _chunked_xent_bwd)


def label_cross_entropy(x_BxLxD, head_VxD, targets_BxL, weights_BxL, *, groups: int = 1, chunk: int = 256):
    """(sum over label tokens of weight * cross-entropy, sum of weights), both fp32 scalars.

    x_BxLxD: final hidden states in the compute dtype; head_VxD: the LM head (fp32 param, cast to x's dtype,
    logits accumulated in fp32); weights_BxL: the loss mask (0 = no loss). `groups` must divide B."""
    B, L, D = x_BxLxD.shape
    P = groups if groups >= 1 and B % groups == 0 else 1
    M = (B // P) * L
    chunk = min(chunk, -(-M // 8) * 8)  # a batch smaller than one chunk runs one chunk of its own size
    M_pad = -(-M // chunk) * chunk
    w_PxM = weights_BxL.astype(jnp.float32).reshape(P, M)
    # stable argsort of "is not a label": label positions first, each group on its own
    order_PxM = jnp.argsort(w_PxM <= 0, axis=1, stable=True)

    def pack(a_PxMx_):  # gather in that order, then zero-pad the position axis to whole chunks (weight 0)
        extra = a_PxMx_.ndim - 2
        a_PxMx_ = jnp.take_along_axis(a_PxMx_, order_PxM.reshape(order_PxM.shape + (1,) * extra), axis=1)
        return jnp.pad(a_PxMx_, [(0, 0), (0, M_pad - M)] + [(0, 0)] * extra)

    h_PxMxD = pack(x_BxLxD.reshape(P, M, D))
    t_PxM, w_PxM_sorted = pack(targets_BxL.astype(jnp.int32).reshape(P, M)), pack(w_PxM)
    n_labels_P = jnp.sum(w_PxM > 0, axis=1)
    n_chunks = (jnp.max(n_labels_P) + chunk - 1) // chunk
    loss = _chunked_xent(h_PxMxD, head_VxD, t_PxM, w_PxM_sorted, n_chunks, chunk)
    return loss, jnp.sum(w_PxM)
