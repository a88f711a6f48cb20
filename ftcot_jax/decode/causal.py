"""The decode loop for decoder-only students (`models.api.CausalLM`): a jitted prefill plus a
loop over a fixed-size KV cache (a `lax.while_loop` on CPU, fixed-length chunks elsewhere: `decode.sampling`).

Layout of one batch (B rows, prompt bucket P, generation bucket N, cache S = P + N slots):

    slot:  0 ........ P-1 | P ...... P+N-1
           pad pad p p p  | g g g g ...          kv_mask_BxS: 1 where a real token sits

Prompts are left-padded so every row's next token goes to the same slot; position ids skip padding
(cumsum of the mask), as HF generate does. Prompt lengths are rounded up by `prompt_bucket` (multiples of 16,
then 4 per octave), generation lengths to powers of two (`bucket`); everything else (max_new_tokens, the
`Sampling` values, the step to run until) is a traced value, so a run compiles a bounded number of shapes.
Params are passed to the jitted functions as arguments (nnx.split), never closed over. `_prefill` allocates
the cache once per batch; the loop runs on it in place (donated), to a given step, so `decode.text` can
return to the host between chunks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftcot_jax.decode.sampling import DecodeState, Sampling, emit, host_driver, loop_until
from ftcot_jax.models import api, cpu_xla

MIN_PROMPT_BUCKET = 16
MIN_NEW_BUCKET = 16


def bucket(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum)."""
    return 1 << (max(int(n), int(minimum), 1) - 1).bit_length()


def prompt_bucket(n: int, minimum: int = MIN_PROMPT_BUCKET) -> int:
    """Prompt-length bucket: multiples of 16 up to 128, then 4 buckets per power of two (<= 25% padding).
    Prefill cost grows with the padded length, so this is finer than powers of two, yet a run still
    compiles O(log max_length) prompt shapes."""
    n = max(int(n), int(minimum), 1)
    step = 16 if n <= 128 else 1 << (n.bit_length() - 3)
    return -(-n // step) * step


def left_align(ids_BxL: np.ndarray, mask_BxL: np.ndarray, pad_id: int, length: int):
    """Rows rewritten as left-padded (real tokens flush right) in a (B, length) array."""
    B = ids_BxL.shape[0]
    ids = np.full((B, length), pad_id, np.int32)
    mask = np.zeros((B, length), np.int32)
    for r in range(B):
        real = ids_BxL[r][mask_BxL[r] > 0]
        if len(real):
            ids[r, length - len(real) :], mask[r, length - len(real) :] = real, 1
    return ids, mask


def compute_model(graphdef, state):
    """The model with its weights cast to the compute dtype once, outside the loop (not in every step)."""
    dtype = nnx.merge(graphdef, state).dtype
    if dtype != jnp.float32:
        state = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    return nnx.merge(graphdef, state)


def _last_logits(model, x_BxTxD):
    """fp32 logits of the last position, as model.logits computes them. The [V, D] head is the left operand
    of the dot: XLA:CPU streams it faster that way at a few rows (docs/compare.md has the measurements)."""
    head_VxD = model.head_VxD().astype(x_BxTxD.dtype)
    return jnp.einsum("vd,bd->vb", head_VxD, x_BxTxD[:, -1], preferred_element_type=jnp.float32).T


@functools.partial(jax.jit, static_argnames=("graphdef", "new_bucket", "greedy"))
def _prefill(graphdef, state, ids_BxP, mask_BxP, done_B, s: Sampling, *, new_bucket: int, greedy: bool):
    """All prompt slots at once into a fresh cache; the first new token comes from the last prompt slot.
    Returns the loop state. Rows already `done_B` (batch filler) emit only padding."""
    model = compute_model(graphdef, state)
    B, P = ids_BxP.shape
    kv_mask_BxS = jnp.concatenate([mask_BxP, jnp.zeros((B, new_bucket), mask_BxP.dtype)], axis=1)
    x_BxPxD, cache = model.features(
        ids_BxP, attention_mask_BxL=kv_mask_BxS, cache=model.init_cache(B, P + new_bucket), cache_index=0
    )
    loop = DecodeState(
        step=jnp.int32(0),
        last_B=jnp.full((B,), s.pad_id, jnp.int32),
        cache=cache,
        tokens_BxN=jnp.full((B, new_bucket), s.pad_id, jnp.int32),
        done_B=done_B,
        kv_mask_BxS=kv_mask_BxS,
    )
    return emit(loop, _last_logits(model, x_BxPxD), s, greedy=greedy)


def _continue(graphdef, state, loop, until, s: Sampling, *, greedy: bool, chunk: int | None = None):
    """Decode until step `until` or until every row is done (`chunk` None), or `chunk` steps masked past
    `until` (`sampling.loop_until`); the loop state is donated (the cache is updated in place)."""
    model = compute_model(graphdef, state)
    B, N = loop.tokens_BxN.shape
    P = loop.kv_mask_BxS.shape[1] - N

    def body(c: DecodeState) -> DecodeState:
        slot = P + c.step - 1  # where the previous token goes
        kv_mask_BxS = jax.lax.dynamic_update_slice(c.kv_mask_BxS, jnp.ones((B, 1), c.kv_mask_BxS.dtype), (0, slot))
        x_Bx1xD, cache = model.features(
            c.last_B[:, None], attention_mask_BxL=kv_mask_BxS, cache=c.cache, cache_index=slot
        )
        return emit(c, _last_logits(model, x_Bx1xD), s, greedy=greedy, cache=cache, kv_mask_BxS=kv_mask_BxS)

    return loop_until(loop, until, body, chunk=chunk)


@functools.cache
def _loop_jit(options: frozenset | None):
    return jax.jit(
        _continue,
        static_argnames=("graphdef", "greedy", "chunk"),
        donate_argnames=("loop",),
        compiler_options=None if options is None else dict(options),
    )


def loop_fn(options: dict | None):
    """The jitted loop compiled with these XLA options (None = XLA's defaults); one per option set."""
    return _loop_jit(None if options is None else frozenset(options.items()))


def begin(
    model,
    ids_BxL: np.ndarray,
    mask_BxL: np.ndarray,
    filler_B: np.ndarray,
    s: Sampling,
    *,
    pad: int,
    max_new_tokens: int,
    greedy: bool,
):
    """Checks the prompts, left-aligns them into their bucket and runs the prefill. Returns (loop state,
    advance, filler_B): `advance(loop, until)` decodes to step `until`; filler rows never hold the loop open."""
    lengths = mask_BxL.sum(1)
    if (lengths == 0).any():
        raise ValueError(f"prompt rows {np.flatnonzero(lengths == 0).tolist()} are empty (no real tokens)")
    limit = api.max_positions(model)
    if limit is not None and lengths.max() + max_new_tokens > limit:
        raise ValueError(
            f"prompt of {int(lengths.max())} tokens + max_new_tokens={max_new_tokens} exceeds the "
            f"model's {limit} positions"
        )
    ids, mask = left_align(ids_BxL, mask_BxL, pad, prompt_bucket(lengths.max()))
    graphdef, state = nnx.split(model)
    loop = _prefill(
        graphdef,
        state,
        jnp.asarray(ids),
        jnp.asarray(mask),
        jnp.asarray(filler_B),
        s,
        new_bucket=bucket(max_new_tokens, MIN_NEW_BUCKET),
        greedy=greedy,
    )
    platform = cpu_xla.platform_of(state)
    chunk = cpu_xla.decode_chunk(platform)

    def call(loop, until: int):
        options = cpu_xla.loop_compiler_options(len(ids), platform)
        return cpu_xla.run_with_compiler_options(
            lambda o: loop_fn(o)(graphdef, state, loop, jnp.int32(until), s, greedy=greedy, chunk=chunk), options
        )

    return loop, host_driver(call, 1, chunk), filler_B
