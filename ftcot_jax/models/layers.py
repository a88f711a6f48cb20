"""Building blocks shared by the model families: named params, activations, norms, masked attention with a KV
cache, dropout, the padding-free `Packing`, and `DecoderLM` (what GPT-2 and Llama share above `features`).

Shape suffixes, one meaning per letter across models/:
- B batch rows, L positions of an input row, T query positions (this call's tokens), S key positions (cache
  slots), D embed, H query heads, G kv heads, R = H // G query heads per kv head, K head dim, C the projections
  one fused kernel makes (Llama's qkv: R + 2; GPT-2's is written 3), F mlp, V vocab, U T5's relative-position
  buckets.
- P x N, the token grid of a per-token tensor (embeddings, norms, projections, the MLP, the residual stream):
  P rows of N tokens, which are the B rows of T (or L) positions in the padded layout and, with `Packing`, the
  P data shards of N packed tokens each. Code that runs in both layouts names its tensors P x N; attention,
  its masks and the KV cache always see the padded B x T.
- M a data shard's positions in the padded layout (its B / P rows x L, flattened); E a tensor's trailing axes,
  flattened (`Packing` gathers [P, M, E] <-> [P, N, E]); `_` stands for any axes (`a_PxNx_`).
- A rows (leading axes flattened), I input features, O output features: models/dense.py's 2-D matmul.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ftcot_jax.models import tpu_attention
from ftcot_jax.models.sharding import constrain

NEG_INF = -1e30  # finite, so a fully masked row (left padding) gives a uniform softmax, not NaN

# HF activation names (GPT-2 activation_function, T5 feed_forward_proj) -> functions.
ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def param(rngs: nnx.Rngs, init, shape: Sequence[int], names: Sequence[str | None]) -> nnx.Param:
    """An fp32 nnx.Param carrying logical axis names (sharded later by sharding.logical_to_sharding)."""
    if len(shape) != len(names):
        raise ValueError(f"param shape {tuple(shape)} vs axis names {tuple(names)}")
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), out_sharding=tuple(names), eager_sharding=False)


normal_init = jax.nn.initializers.normal
zeros_init = jax.nn.initializers.zeros
ones_init = jax.nn.initializers.ones


def _gather_rows(a, index):
    """a[p, index[p, j]] with out-of-range indices giving zero rows: a [P, M, E] by a [P, N] index gives
    [P, N, E] (pack), a [P, N, E] by a [P, M] index gives [P, M, E] (unpack)."""
    return jnp.take_along_axis(a, index[..., None], axis=1, mode="fill", fill_value=0)


@jax.custom_vjp
def _select(a, index, inverse):
    """`_gather_rows(a, index)` whose gradient is the gather by `inverse`."""
    return _gather_rows(a, index)


def _select_fwd(a, index, inverse):
    return _gather_rows(a, index), (index, inverse)


def _select_bwd(res, g):
    # `index` and `inverse` are inverse partial permutations, so the transpose of one gather is the other
    # gather: no scatter-add in the backward pass.
    index, inverse = res
    return _select(g, inverse, index), None, None


_select.defvjp(_select_fwd, _select_bwd)


class Packing:
    """Padding-free layout of a training batch: only the tokens the loss depends on, per data shard.

    A Fine-tune-CoT batch of B rows x L positions holds 30-50% padding (right padding up to the longest
    row). Every projection, norm and MLP is per token, so it runs on the packed [P, N, ...] layout (P data
    shards, N = the shard's needed tokens rounded up); only attention, which mixes positions within a row,
    runs on the padded [B, L, ...] layout: `unpack` before it, `pack` after. Both directions are gathers
    (built on the host by `train.batches.packing_indices`), and each one's gradient is the other gather.
    The values are those of the padded computation: a dropped position has no loss weight and is never
    attended to by a kept one (it is padding, or after the row's last label token).
    """

    def __init__(self, index_PxN, inverse_PxM, batch: int, length: int):
        self.index_PxN, self.inverse_PxM = index_PxN, inverse_PxM
        self.B, self.L = batch, length
        self.P, self.N = index_PxN.shape
        if batch % self.P or (batch // self.P) * length != inverse_PxM.shape[1]:
            raise ValueError(
                f"packing indices {index_PxN.shape} / {inverse_PxM.shape} do not fit a {batch} x {length} batch"
            )

    def pack(self, a_BxLx_):
        """[B, L, ...] -> [P, N, ...] (slots past a shard's tokens are zeros)."""
        rest = a_BxLx_.shape[2:]
        a_PxMxE = a_BxLx_.reshape(self.P, (self.B // self.P) * self.L, math.prod(rest))
        if not jnp.issubdtype(a_PxMxE.dtype, jnp.floating):
            return _gather_rows(a_PxMxE, self.index_PxN).reshape(self.P, self.N, *rest)
        return _select(a_PxMxE, self.index_PxN, self.inverse_PxM).reshape(self.P, self.N, *rest)

    def unpack(self, a_PxNx_):
        """[P, N, ...] -> [B, L, ...] (dropped positions are zeros)."""
        rest = a_PxNx_.shape[2:]
        a_PxNxE = a_PxNx_.reshape(self.P, self.N, math.prod(rest))
        return _select(a_PxNxE, self.inverse_PxM, self.index_PxN).reshape(self.B, self.L, *rest)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, dtype, rngs: nnx.Rngs):
        self.scale = param(rngs, ones_init, (dim,), ("norm",))
        self.bias = param(rngs, zeros_init, (dim,), ("norm",))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x_PxNxD):
        x = x_PxNxD.astype(jnp.float32)  # statistics in fp32 whatever the compute dtype
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, dtype, rngs: nnx.Rngs):
        self.scale = param(rngs, ones_init, (dim,), ("norm",))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x_PxNxD):
        x = x_PxNxD.astype(jnp.float32)
        y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(self.dtype)


def attention_mask_BxTxS(kv_mask_BxS, q_slot_BxT):
    """Query at cache slot t sees key slot s iff s <= t and s holds a real token."""
    s_S = jnp.arange(kv_mask_BxS.shape[1])
    return (kv_mask_BxS[:, None, :] > 0) & (s_S[None, None, :] <= q_slot_BxT[:, :, None])


def dropout(x, rate: float, rng, token_ids=None):
    """Inverted dropout (kept values scaled by 1 / (1 - rate)), as torch's; identity without a key.
    With `token_ids` (ints of shape x.shape[:-1], each token's index in the padded batch) every token's mask
    comes from its own key: the padded and the padding-free layout, on any mesh, drop the same units."""
    if rng is None or rate == 0.0:
        return x
    if token_ids is None:
        keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    else:
        keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, token_ids.reshape(-1))
        keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, x.shape[-1:]))(keys).reshape(x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class DropoutKeys:
    """Hands out a fresh dropout key per call site: `keys()` -> key, or None when not training."""

    def __init__(self, key):
        self.key, self.n = key, 0

    def __call__(self):
        if self.key is None:
            return None
        self.n += 1
        return jax.random.fold_in(self.key, self.n)


NO_DROPOUT = DropoutKeys(None)  # stateless: hands out None (eval, decoding)


# ----------------------------------------------------------------------------- rematerialisation

REMAT_CHOICES = ("none", "block", "full")
_REMAT_POLICIES = {
    "block": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def remat_block(call, remat: str):
    """`call` (a transformer block's training forward: x -> (x, cache)) under `remat` (train.remat): "none" keeps
    every activation for the backward pass; "block" keeps only the block's matmul outputs (norms, activations,
    softmax and dropout are recomputed); "full" keeps only the block's input (the whole block is recomputed).
    Same values and gradients either way; less memory for more compute."""
    if remat == "none":
        return call
    if remat not in _REMAT_POLICIES:
        raise ValueError(f"remat {remat!r}: expected one of {', '.join(REMAT_CHOICES)}")
    return jax.checkpoint(call, policy=_REMAT_POLICIES[remat])


def _masked_softmax_attention(q_BxTxHxK, k_BxGxSxK, v_BxGxSxK, mask_BxTxS, *, scale, dtype, dropout_rate=0.0, rng=None):
    """Our hand-written form ("ours"): softmax in fp32, then dropout on the probabilities when `rng` is given.
    Keys/values are [B, G, S, K] (the cache layout): both dots then read them without a transpose."""
    B, T, H, K = q_BxTxHxK.shape
    G = k_BxGxSxK.shape[1]
    q_BxGxRxTxK = q_BxTxHxK.reshape(B, T, G, H // G, K).transpose(0, 2, 3, 1, 4).astype(dtype)
    logits_BxGxRxTxS = (
        jnp.einsum("bgrtk,bgsk->bgrts", q_BxGxRxTxK, k_BxGxSxK.astype(dtype), preferred_element_type=jnp.float32)
        * scale
    )
    logits_BxGxRxTxS = jnp.where(mask_BxTxS[:, None, None], logits_BxGxRxTxS, NEG_INF)
    probs = dropout(jax.nn.softmax(logits_BxGxRxTxS, axis=-1), dropout_rate, rng).astype(dtype)
    out_BxGxRxTxK = jnp.einsum("bgrts,bgsk->bgrtk", probs, v_BxGxSxK.astype(dtype))
    return out_BxGxRxTxK.transpose(0, 3, 1, 2, 4).reshape(B, T, H, K)


def library_attention(q_BxTxHxK, k_BxGxSxK, v_BxGxSxK, mask_BxTxS, *, scale, dtype, implementation: str):
    """`jax.nn.dot_product_attention` ("xla" or "cudnn") with our boolean mask, in its BTNH layout. Without a
    cache (T == S) the mask is causal, so `is_causal` is passed too: cuDNN then skips the masked blocks."""
    T, S = q_BxTxHxK.shape[1], k_BxGxSxK.shape[2]
    if implementation == "cudnn":
        # cuDNN adds the mask as a large negative bias; a query that sees no key (left padding) would subtract two
        # of those (NaN in cuDNN). It sees every key instead: its output is never read (it is padding).
        mask_BxTxS = mask_BxTxS | ~mask_BxTxS.any(-1, keepdims=True)
    return jax.nn.dot_product_attention(
        q_BxTxHxK.astype(dtype),
        k_BxGxSxK.transpose(0, 2, 1, 3).astype(dtype),
        v_BxGxSxK.transpose(0, 2, 1, 3).astype(dtype),
        mask=mask_BxTxS[:, None],
        scale=scale,
        is_causal=T == S,
        implementation=implementation,
    )


# cuDNN flash attention takes bf16/fp16 Q/K/V with a head dim that is a multiple of 8, up to 256 on Hopper (H100,
# H200); an older GPU refuses 129-256 when the call is traced, and the cuda branch then takes the XLA form.
CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
CUDNN_MAX_HEAD_DIM = 256
_cudnn_probe: dict[str, bool] = {}  # "works": whether cuDNN attention ran (fwd + bwd) on this process's GPU


def _cudnn_works() -> bool:
    """Whether cuDNN attention lowers, compiles and runs forward and backward on this process's GPU: tried once
    (a small bf16 call with a padding mask) and remembered, so a jaxlib where it fails (jax#32430) falls back to
    the XLA form for good. True when this process has no GPU (lowering ahead of time for one)."""
    if "works" not in _cudnn_probe:
        try:
            gpu = jax.devices("cuda")[0]
        except RuntimeError:
            return True

        def loss(q, mask):
            kv = q.transpose(0, 2, 1, 3)
            out = library_attention(q, kv, kv, mask, scale=0.125, dtype=q.dtype, implementation="cudnn")
            return out.astype(jnp.float32).sum()

        try:
            with jax.ensure_compile_time_eval():
                q = jax.device_put(jnp.ones((2, 16, 2, 64), jnp.bfloat16), gpu)
                mask = jax.device_put(
                    attention_mask_BxTxS(
                        jnp.ones((2, 16), jnp.int32).at[1, 12:].set(0), jnp.broadcast_to(jnp.arange(16), (2, 16))
                    ),
                    gpu,
                )
                jax.block_until_ready(jax.jit(jax.value_and_grad(loss))(q, mask))
            _cudnn_probe["works"] = True
        except Exception as e:  # any failure of the probe: this jaxlib/cuDNN cannot run it here
            warnings.warn(
                f"cuDNN attention does not run here ({type(e).__name__}: {e}); using the XLA form", stacklevel=2
            )
            _cudnn_probe["works"] = False
    return _cudnn_probe["works"]


def attention_implementation(platform: str, dtype, head_dim: int, *, dropout: bool = False, bias: bool = False) -> str:
    """The attention form for a computation on `platform` ("cpu", "cuda"/"gpu", "rocm", "tpu"; any other name is
    an accelerator without a kernel of ours): "ours" (the hand-written masked softmax: CPU, whose parity tests it
    is, and wherever attention dropout is on, which the library forms and kernels lack), "cudnn" (GPU, bf16/fp16,
    a head dim cuDNN takes, no additive bias), "splash" (TPU without an additive bias: the Pallas kernel of
    models/tpu_attention.py, where its shapes allow, see `attention_on`) or "xla" (the rest: fp32 on GPU, other
    head dims, a bias such as T5's, other accelerators, a GPU where cuDNN attention failed)."""
    if platform == "cpu" or dropout:
        return "ours"
    if platform == "tpu" and not bias:
        return "splash"
    cudnn_shape = head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM
    if platform in ("cuda", "gpu") and jnp.dtype(dtype) in CUDNN_DTYPES and cudnn_shape and not bias:
        return "cudnn"
    return "xla"


def attention_on(platform: str, q_BxTxHxK, k_BxGxSxK, v_BxGxSxK, mask_BxTxS, *, scale, dtype):
    """Attention as computed on `platform` (no dropout). A cuDNN call that raises when traced (a shape or jaxlib it
    does not take, no cuDNN here), or that failed the probe on this GPU, falls back to the XLA form. On TPU the
    splash kernel runs self-attention without a cache (T == S, at least its 128-position block: training and
    full forwards); decoding with a cache (prefill over the cache's slots, one token against S slots) and short
    rows keep the XLA form."""
    impl = attention_implementation(platform, dtype, q_BxTxHxK.shape[-1])
    args = (q_BxTxHxK, k_BxGxSxK, v_BxGxSxK, mask_BxTxS)
    if impl == "ours":
        return _masked_softmax_attention(*args, scale=scale, dtype=dtype)
    if impl == "splash" and tpu_attention.supports(q_BxTxHxK.shape[1], k_BxGxSxK.shape[2]):
        # Without a cache the mask is causal over the keys' mask (prepare_inputs): its last row is that mask.
        return tpu_attention.splash_attention(
            q_BxTxHxK, k_BxGxSxK, v_BxGxSxK, mask_BxTxS[:, -1], scale=scale, dtype=dtype
        )
    if impl == "cudnn" and _cudnn_works():
        try:
            return library_attention(*args, scale=scale, dtype=dtype, implementation="cudnn")
        except (RuntimeError, NotImplementedError, ValueError):
            pass
    return library_attention(*args, scale=scale, dtype=dtype, implementation="xla")


def dot_attention(
    q_BxTxHxK, k_BxGxSxK, v_BxGxSxK, mask_BxTxS, scale: float, dtype, dropout_rate: float = 0.0, rng=None
):
    """Grouped-query attention (G kv heads shared by R = H/G query heads) over keys/values in the cache layout
    [B, G, S, K]; softmax in fp32, then dropout on the probabilities when `rng` is given (HF's attn_pdrop /
    attention_dropout). The form is chosen by `attention_implementation` for the platform the computation is
    lowered for (`lax.platform_dependent`, not the default backend): CPU runs ours, a GPU in bf16 cuDNN's, a TPU
    the splash kernel (models/tpu_attention.py)."""
    args = (q_BxTxHxK, k_BxGxSxK, v_BxGxSxK, mask_BxTxS)
    if rng is not None and dropout_rate > 0.0:  # only ours drops attention probabilities, on every platform
        return _masked_softmax_attention(*args, scale=scale, dtype=dtype, dropout_rate=dropout_rate, rng=rng)
    return jax.lax.platform_dependent(
        *args,
        cpu=functools.partial(attention_on, "cpu", scale=scale, dtype=dtype),
        cuda=functools.partial(attention_on, "cuda", scale=scale, dtype=dtype),
        tpu=functools.partial(attention_on, "tpu", scale=scale, dtype=dtype),
        default=functools.partial(attention_on, "other", scale=scale, dtype=dtype),
    )


def init_kv_cache(n_layers: int, batch: int, kv_heads: int, length: int, head_dim: int, dtype) -> list[dict]:
    """A fixed-size decoder KV cache: per layer zeros of [B, G, S, K] (the layout dot_attention reads)."""
    shape = (batch, kv_heads, length, head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(n_layers)]


def update_cache(cache: dict | None, k_BxTxGxK, v_BxTxGxK, index):
    """Keys/values as [B, G, S, K]; with a fixed-size cache, this step's are written at slot `index`.
    Returns (k, v, new cache)."""
    k_BxGxTxK, v_BxGxTxK = k_BxTxGxK.transpose(0, 2, 1, 3), v_BxTxGxK.transpose(0, 2, 1, 3)
    if cache is None:
        return k_BxGxTxK, v_BxGxTxK, None
    k = jax.lax.dynamic_update_slice(cache["k"], k_BxGxTxK.astype(cache["k"].dtype), (0, 0, index, 0))
    v = jax.lax.dynamic_update_slice(cache["v"], v_BxGxTxK.astype(cache["v"].dtype), (0, 0, index, 0))
    return k, v, {"k": k, "v": v}


def default_positions(mask_BxL):
    """cumsum(mask) - 1 clipped at 0: position ids that skip left padding."""
    return jnp.maximum(jnp.cumsum(mask_BxL.astype(jnp.int32), axis=1) - 1, 0)


def prepare_inputs(input_ids_BxT, attention_mask_BxL, positions_BxL, cache, cache_index):
    """Shared mask/position logic of the decoder families.

    No cache: attention_mask is BxT (1 = real token), causal mask, default positions from the mask.
    With cache: attention_mask is BxS over all cache slots (prompt mask, then 1s for generated slots)
    and the T new tokens sit at slots cache_index .. cache_index+T-1.
    """
    B, T = input_ids_BxT.shape
    if cache is None:
        kv_mask = jnp.ones((B, T), jnp.int32) if attention_mask_BxL is None else attention_mask_BxL
        if kv_mask.shape != (B, T):
            raise ValueError(f"attention_mask shape {kv_mask.shape} != input_ids shape {(B, T)}")
        q_slot_BxT = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
        if positions_BxL is None:
            positions_BxL = default_positions(kv_mask)
    else:
        if attention_mask_BxL is None:
            raise ValueError("decoding with a cache needs attention_mask over all cache slots (B x S)")
        kv_mask = attention_mask_BxL
        index = jnp.asarray(cache_index, jnp.int32)
        q_slot_BxT = jnp.broadcast_to(index + jnp.arange(T)[None], (B, T))
        if positions_BxL is None:
            pos_BxS = jnp.cumsum(kv_mask.astype(jnp.int32), axis=1) - 1
            positions_BxL = jnp.maximum(jnp.take_along_axis(pos_BxS, q_slot_BxT, axis=1), 0)
    return attention_mask_BxTxS(kv_mask, q_slot_BxT), positions_BxL


def head_logits(x_BxTxD, head_VxD, vocab_multiple: int = 1):
    """fp32 logits (fp32 accumulation whatever the compute dtype). With `vocab_multiple` > 1 the head runs as
    [V_pad, D] (V rounded up to the multiple, the extra rows zero: aligned GEMM tiles on an accelerator) and the
    padded ids' logits are sliced off, so the values and shape are those of the [V, D] head."""
    V = head_VxD.shape[0]
    head_VxD = jnp.pad(head_VxD, ((0, -V % vocab_multiple), (0, 0)))
    return jnp.einsum("btd,vd->btv", x_BxTxD, head_VxD, preferred_element_type=jnp.float32)[..., :V]


class DecoderLM(nnx.Module):
    """The part of a decoder-only family (models.api.CausalLM) written once: the LM head matmul and `__call__`.
    A family supplies `config`, `dtype`, `features` and `head_VxD`; `vocab_multiple` > 1 pads the head for the
    logits matmul off CPU (`head_logits`)."""

    vocab_multiple = 1

    def logits(self, x_BxTxD):
        head_VxD = self.head_VxD().astype(self.dtype)
        if head_VxD.shape[0] % self.vocab_multiple == 0:
            return head_logits(x_BxTxD, head_VxD)
        # Padded only off CPU: there XLA:CPU's matmul gains nothing and the slice of the padded logits costs a copy.
        padded = functools.partial(head_logits, vocab_multiple=self.vocab_multiple)
        return jax.lax.platform_dependent(x_BxTxD, head_VxD, cpu=head_logits, default=padded)

    def __call__(
        self,
        input_ids_BxL,
        *,
        attention_mask_BxL=None,
        positions_BxL=None,
        cache=None,
        cache_index=None,
        attention_mask=None,
        positions=None,
        dropout_rng=None,
    ):
        """fp32 logits_BxLxV; with `cache` (decoding) (logits, new_cache). `attention_mask` / `positions` are
        accepted as aliases of the shape-suffixed names."""
        attention_mask_BxL = attention_mask if attention_mask_BxL is None else attention_mask_BxL
        positions_BxL = positions if positions_BxL is None else positions_BxL
        x, new_cache = self.features(
            input_ids_BxL,
            attention_mask_BxL=attention_mask_BxL,
            positions_BxL=positions_BxL,
            cache=cache,
            cache_index=cache_index,
            dropout_rng=dropout_rng,
        )
        logits_BxLxV = constrain(self.logits(x), ("batch", "length", "vocab"))
        return logits_BxLxV if cache is None else (logits_BxLxV, new_cache)
