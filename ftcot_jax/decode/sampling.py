"""Picking each row's next token, shared by both decode loops: HF-order logit filters, greedy or keyed
sampling, and the step both loops take once they have the logits (write the token, pad finished rows, end
rows at EOS).

Random numbers: token t of a batch (t = 0 is the first new token) is drawn with `jax.random.fold_in(rng, t)`,
for decoder-only and encoder-decoder models alike, so a key gives the same tokens however the loop is
chunked (stop-string checks return to the host between chunks). With one key per row (`rng` of shape [B]),
row r's token t is drawn with `fold_in(rng[r], t)` alone, so a row's tokens do not depend on the other rows of
its batch: K rows of one prompt with keys k_1..k_K decode as K calls with those keys do (self-consistency).

The loop state is a `DecodeState` (a typed pytree), donated between calls.

The shape of the device loop depends on the platform (`models.cpu_xla.decode_chunk`). On CPU one call is a
`lax.while_loop` to the requested step that exits as soon as every row is done. Elsewhere a while loop whose trip
count depends on data makes the runtime copy its predicate to the host every iteration, so one call is a
fixed-trip loop of `chunk` steps (a scan: no data-dependent loop); steps at or past the requested one change
nothing (masked), finished rows write padding, and `host_driver` checks between calls whether to go on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import multihost_utils

from ftcot_jax.models.api import MAX_EOS


class Sampling(NamedTuple):
    """Everything about picking tokens that may change between calls, as traced values (no recompiles).
    Greedy-vs-sampling is the one static choice (the `greedy` argument of the loops)."""

    rng: jax.Array  # PRNG key, or one key per row ([B]); unused when greedy
    temperature: jax.Array  # float32 > 0
    top_k: jax.Array  # int32; 0 = off
    top_p: jax.Array  # float32 in (0, 1]
    eos_E: jax.Array  # int32 [MAX_EOS]: the EOS ids, padded with -1
    pad_id: jax.Array  # int32: what rows emit once they are done


@struct.dataclass
class DecodeState:
    """The state of a decode loop between steps (and between chunked calls, donated): N is the generation
    bucket, S the causal loop's cache slots (prompt bucket + N)."""

    step: jax.Array  # int32: index of the next new token
    last_B: jax.Array  # int32: the token fed to the next step
    cache: Any  # the model's KV cache (its `init_cache`)
    tokens_BxN: jax.Array  # int32: the new tokens so far; padding after each row's end
    done_B: jax.Array  # bool: the row emitted an EOS id (or is batch filler)
    kv_mask_BxS: jax.Array | None = None  # int32, causal loop only: 1 where a real token sits in the cache


def make_sampling(rng, temperature: float, top_k: int, top_p: float, eos: list[int], pad: int) -> Sampling:
    """`Sampling` from host values; `rng` None is allowed for greedy decoding."""
    return Sampling(
        jax.random.key(0) if rng is None else rng,
        jnp.float32(max(temperature, 1e-6)),
        jnp.int32(top_k),
        jnp.float32(top_p),
        jnp.asarray(eos + [-1] * (MAX_EOS - len(eos)), jnp.int32),
        jnp.int32(pad),
    )


def filter_logits(logits_BxV, temperature, top_k, top_p):
    """HF order: temperature, then top-k (0 = off), then top-p (smallest set of most likely tokens whose
    mass reaches top_p; the most likely token always stays). Traced scalars: no recompiles."""
    logits_BxV = logits_BxV / temperature
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    rank_V = jnp.arange(sorted_BxV.shape[-1])
    keep_BxV = (top_k <= 0) | (rank_V < top_k)
    probs_BxV = jax.nn.softmax(jnp.where(keep_BxV, sorted_BxV, -jnp.inf), axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_BxV = (keep_BxV & (mass_before_BxV < top_p)) | (rank_V == 0)
    cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)


def next_token(logits_BxV, rng, temperature, top_k, top_p, *, greedy: bool):
    """Each row's next token: the argmax, or a draw from the filtered logits with one key for the batch or
    one key per row (`rng` of shape [B])."""
    if greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    filtered_BxV = filter_logits(logits_BxV, temperature, top_k, top_p)
    if rng.ndim == 1:
        return jax.vmap(jax.random.categorical)(rng, filtered_BxV).astype(jnp.int32)
    return jax.random.categorical(rng, filtered_BxV).astype(jnp.int32)


def emit(loop: DecodeState, logits_BxV, s: Sampling, *, greedy: bool, **updates) -> DecodeState:
    """The loop state after picking token `loop.step` of every row from `logits_BxV`: rows already done
    emit padding (as HF generate does), a row that emits an EOS id is done. `updates`: the fields the
    model step changed (cache, kv_mask_BxS)."""
    step = loop.step
    fold = jax.random.fold_in if s.rng.ndim == 0 else jax.vmap(jax.random.fold_in, (0, None))
    tok_B = next_token(logits_BxV, fold(s.rng, step), s.temperature, s.top_k, s.top_p, greedy=greedy)
    tok_B = jnp.where(loop.done_B, s.pad_id, tok_B)
    return loop.replace(
        **updates,
        step=step + 1,
        last_B=tok_B,
        tokens_BxN=jax.lax.dynamic_update_slice(loop.tokens_BxN, tok_B[:, None], (0, step)),
        done_B=loop.done_B | jnp.isin(tok_B, s.eos_E),
    )


def loop_until(loop: DecodeState, until, body, *, chunk: int | None = None) -> DecodeState:
    """`body` (loop state -> loop state) towards step `until` (at most N). `chunk` None: a while loop that runs
    until that step or until every row is done. `chunk` k: exactly k iterations (a fixed-trip loop), the ones
    at or past step `until` masked: they keep every entry but the cache, whose one write (the fed token's
    keys/values at its slot) is the one the next real step makes again, so tokens are the same either way."""
    until = jnp.minimum(until, loop.tokens_BxN.shape[1])
    if chunk is None:
        return jax.lax.while_loop(lambda c: (c.step < until) & ~jnp.all(c.done_B), body, loop)

    def masked(_, c):
        new, live = body(c), c.step < until
        kept = jax.tree.map(lambda v, old: jnp.where(live, v, old), new.replace(cache=None), c.replace(cache=None))
        return kept.replace(cache=new.cache)

    return jax.lax.fori_loop(0, chunk, masked, loop)


def gather_across_hosts(x) -> np.ndarray:
    """A device array on the host. When the model spans several processes (multi-host evaluation) the
    loop's arrays do too: every process gathers the whole array (each runs the same decode, so they agree)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def host_driver(call, step: int, chunk: int | None):
    """`advance(loop, until)`: `call(loop, until)` (one device call, see `loop_until`) repeated until step
    `until` or until every row is done. `step`: the loop's step now; with chunks the host counts the steps
    (a call from step s reaches min(s + chunk, until)) and reads only `done_B` between calls."""
    at = step

    def advance(loop, until: int):
        nonlocal at
        if chunk is None:
            return call(loop, until)
        while at < until:
            loop = call(loop, until)
            at = min(at + chunk, until)
            if at < until and gather_across_hosts(loop.done_B).all():
                break
        return loop

    return advance
