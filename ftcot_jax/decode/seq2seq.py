"""The decode loop for encoder-decoder students (`models.api.Seq2SeqLM`, T5): encoder once, then a
loop over a decoder cache (a `lax.while_loop` on CPU, fixed-length chunks elsewhere: `decode.sampling`).

`_start` runs the encoder once per batch, projects the cross-attention keys/values of every decoder layer
once, and allocates a fixed-size self-attention cache of N slots (the generation bucket); the loop then
decodes one token per step from the decoder start token, until every row is done or the step it was asked
to run to. Input lengths are used as given (`decode.text` buckets them). Params are passed as arguments
(nnx.split), never closed over; the loop state is donated. Rows whose attention mask is all zero are batch
filler: they produce only padding and never hold the loop open.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftcot_jax.decode.causal import MIN_NEW_BUCKET, bucket, compute_model
from ftcot_jax.decode.sampling import DecodeState, Sampling, emit, host_driver, loop_until
from ftcot_jax.models import cpu_xla


@functools.partial(jax.jit, static_argnames=("graphdef", "new_bucket"))
def _start(graphdef, state, input_ids_BxL, mask_BxL, done_B, pad_id, start_id, *, new_bucket: int):
    """Encoder and cross-attention keys/values, once per batch; an empty decoder cache of new_bucket slots.
    Rows already `done_B` (batch filler) never hold the loop open."""
    model = compute_model(graphdef, state)
    B = input_ids_BxL.shape[0]
    cross_kv = model.cross_kv(model.encode(input_ids_BxL, mask_BxL))
    loop = DecodeState(
        step=jnp.int32(0),
        last_B=jnp.full((B,), start_id, jnp.int32),
        cache=model.init_cache(B, new_bucket),
        tokens_BxN=jnp.full((B, new_bucket), pad_id, jnp.int32),
        done_B=done_B,
    )
    return loop, cross_kv


@functools.partial(jax.jit, static_argnames=("graphdef", "greedy", "chunk"), donate_argnames=("loop",))
def _continue(graphdef, state, loop, cross_kv, mask_BxL, until, s: Sampling, *, greedy: bool, chunk=None):
    """Decode until step `until` or until every row is done (`chunk` None), or `chunk` steps masked past
    `until` (`sampling.loop_until`). Everything that may change between calls is traced; only shapes, the
    model, greedy-vs-sampling and the chunk are static. The loop state is donated."""
    model = compute_model(graphdef, state)

    def body(c: DecodeState) -> DecodeState:
        logits_Bx1xV, cache = model.decode_step(c.last_B[:, None], c.step, c.cache, cross_kv, mask_BxL)
        return emit(c, logits_Bx1xV[:, 0], s, greedy=greedy, cache=cache)

    return loop_until(loop, until, body, chunk=chunk)


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
    """Runs the encoder. Returns (loop state, advance, filler_B): `advance(loop, until)` decodes to step
    `until`; filler_B also marks the rows with an all-zero mask."""
    mask = np.array(mask_BxL, np.int32)
    empty = mask.sum(1) == 0
    mask[empty, 0] = 1  # one real position keeps the filler rows' attention well defined
    filler = np.asarray(filler_B, bool) | empty
    graphdef, state = nnx.split(model)
    mask = jnp.asarray(mask)
    loop, cross_kv = _start(
        graphdef,
        state,
        jnp.asarray(ids_BxL, jnp.int32),
        mask,
        jnp.asarray(filler),
        jnp.int32(pad),
        jnp.int32(model.config.decoder_start_token_id),
        new_bucket=bucket(max_new_tokens, MIN_NEW_BUCKET),
    )

    chunk = cpu_xla.decode_chunk(cpu_xla.platform_of(state))

    def call(loop, until: int):
        return _continue(graphdef, state, loop, cross_kv, mask, jnp.int32(until), s, greedy=greedy, chunk=chunk)

    return loop, host_driver(call, 0, chunk), filler
