"""Cross-entropy of a decoder student computed only where the loss is: the LM head on label tokens.

A Fine-tune-CoT row is `prompt + rationale + answer + EOS + padding`, and only the label part carries loss
(in the reference's GSM8K batches of 8 x 256, 30-50% of the positions). The LM head is the largest matmul of a
small student (GPT-2 small: 31% of the step's FLOPs), and the full `[B, L, V]` logits are the largest tensor
(411 MB at 8 x 256 x 50257 in fp32). Here the label positions are packed to the front (on device, so no shape
depends on the data) and the head runs over them in chunks of `chunk` tokens inside a `lax.fori_loop` whose trip
count is the number of chunks holding labels; the gradients w.r.t. the hidden states and the head are formed in
the same pass (softmax - one-hot), so no logits tensor ever exists beyond one chunk. The loss is the same sum
of token cross-entropies as the full-logits path (tests/unit/test_head_loss.py compares both, values and gradients).

Rows are grouped by data-parallel shard (G groups): packing, chunks and the head gradient stay local to a
shard, so a mesh runs this without moving activations; the trip count is the largest over the groups.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _chunked_xent(h_GxMxD, head_VxD, targets_GxM, weights_GxM, n_chunks, chunk: int):
    return _chunked_xent_fwd(h_GxMxD, head_VxD, targets_GxM, weights_GxM, n_chunks, chunk)[0]


def _chunked_xent_fwd(h_GxMxD, head_VxD, targets_GxM, weights_GxM, n_chunks, chunk: int):
    G, M, D = h_GxMxD.shape
    V = head_VxD.shape[0]
    dt = h_GxMxD.dtype
    w_VxD = head_VxD.astype(dt)

    def body(i, carry):
        loss, dh_GxMxD, dw_GxVxD = carry
        start = i * chunk
        h_GxCxD = jax.lax.dynamic_slice_in_dim(h_GxMxD, start, chunk, axis=1)
        t_GxC = jax.lax.dynamic_slice_in_dim(targets_GxM, start, chunk, axis=1)
        w_GxC = jax.lax.dynamic_slice_in_dim(weights_GxM, start, chunk, axis=1)
        logits_GxCxV = jnp.einsum("gcd,vd->gcv", h_GxCxD, w_VxD, preferred_element_type=jnp.float32)
        lse_GxC = jax.nn.logsumexp(logits_GxCxV, axis=-1)
        target_logit_GxC = jnp.take_along_axis(logits_GxCxV, t_GxC[..., None], axis=-1)[..., 0]
        loss = loss + jnp.sum(w_GxC * (lse_GxC - target_logit_GxC))
        # d(loss)/d(logits) = weight * (softmax - one_hot(target))
        onehot_GxCxV = jnp.arange(V, dtype=t_GxC.dtype) == t_GxC[..., None]
        g_GxCxV = ((jnp.exp(logits_GxCxV - lse_GxC[..., None]) - onehot_GxCxV) * w_GxC[..., None]).astype(dt)
        dh_GxCxD = jnp.einsum("gcv,vd->gcd", g_GxCxV, w_VxD, preferred_element_type=jnp.float32)
        dh_GxMxD = jax.lax.dynamic_update_slice_in_dim(dh_GxMxD, dh_GxCxD.astype(dh_GxMxD.dtype), start, axis=1)
        dw_GxVxD = dw_GxVxD + jnp.einsum("gcv,gcd->gvd", g_GxCxV, h_GxCxD, preferred_element_type=jnp.float32)
        return loss, dh_GxMxD, dw_GxVxD

    init = (jnp.float32(0), jnp.zeros((G, M, D), dt), jnp.zeros((G, V, D), jnp.float32))
    loss, dh_GxMxD, dw_GxVxD = jax.lax.fori_loop(0, n_chunks, body, init)
    return loss, (dh_GxMxD, dw_GxVxD.sum(0).astype(head_VxD.dtype))


def _chunked_xent_bwd(chunk, residuals, g):
    dh_GxMxD, dw_VxD = residuals
    return (g.astype(dh_GxMxD.dtype) * dh_GxMxD, g.astype(dw_VxD.dtype) * dw_VxD, None, None, None)


_chunked_xent.defvjp(_chunked_xent_fwd, _chunked_xent_bwd)


def label_cross_entropy(x_BxLxD, head_VxD, targets_BxL, weights_BxL, *, groups: int = 1, chunk: int = 256):
    """(sum over label tokens of weight * cross-entropy, sum of weights), both fp32 scalars.

    x_BxLxD: final hidden states in the compute dtype; head_VxD: the LM head (fp32 param, cast to x's dtype,
    logits accumulated in fp32); weights_BxL: the loss mask (0 = no loss). `groups` must divide B."""
    B, L, D = x_BxLxD.shape
    G = groups if groups >= 1 and B % groups == 0 else 1
    M = (B // G) * L
    chunk = min(chunk, -(-M // 8) * 8)  # a batch smaller than one chunk runs one chunk of its own size
    M_pad = -(-M // chunk) * chunk
    w_GxM = weights_BxL.astype(jnp.float32).reshape(G, M)
    # stable argsort of "is not a label": label positions first, each group on its own
    order_GxM = jnp.argsort(w_GxM <= 0, axis=1, stable=True)

    def pack(a_GxMx_):  # gather in that order, then zero-pad the position axis to whole chunks (weight 0)
        extra = a_GxMx_.ndim - 2
        a_GxMx_ = jnp.take_along_axis(a_GxMx_, order_GxM.reshape(order_GxM.shape + (1,) * extra), axis=1)
        return jnp.pad(a_GxMx_, [(0, 0), (0, M_pad - M)] + [(0, 0)] * extra)

    h_GxMxD = pack(x_BxLxD.reshape(G, M, D))
    t_GxM, w_GxM_sorted = pack(targets_BxL.astype(jnp.int32).reshape(G, M)), pack(w_GxM)
    n_labels_G = jnp.sum(w_GxM > 0, axis=1)
    n_chunks = (jnp.max(n_labels_G) + chunk - 1) // chunk
    loss = _chunked_xent(h_GxMxD, head_VxD, t_GxM, w_GxM_sorted, n_chunks, chunk)
    return loss, jnp.sum(w_GxM)
