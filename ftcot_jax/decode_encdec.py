"""Generation for encoder-decoder students (T5): encoder once, then a `lax.while_loop` over a decoder cache.

One jitted function per (graphdef, batch, input-length bucket, cache-length bucket, sampling mode) runs the
encoder once, projects the cross-attention keys/values of every decoder layer once, and decodes one token
per step into a fixed-size self-attention cache until every row has emitted EOS or `max_new_tokens`
(a traced scalar, so it does not recompile) is reached. Params are passed as arguments (nnx.split), never
closed over. Prompt lengths, cache lengths and batch sizes are rounded up to powers of two so a run
compiles a bounded number of shapes.

    tokens_BxN, finished_B = generate_ids(model, ids_BxL, mask_BxL, max_new_tokens=64)
    gens = generate(model, tokenizer, prompts, max_new_tokens=64, batch_size=8)   # list of Generation
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Sampling, stop strings and Generation are shared with the decoder-only path (decode.py imports this
# module lazily, so there is no cycle).
from ftcot_jax import decode
from ftcot_jax.decode import (MAX_EOS, Generation, _compute_model, batch_bucket, batch_limits, fetch, finish,
                             next_token, row_settings)

MIN_BUCKET = 16


def bucket(n: int) -> int:
    return decode.bucket(n, MIN_BUCKET)


# ----------------------------------------------------------------------------------------------------------
# The jitted loop


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len"))
def _start(graphdef, state, input_ids_BxL, mask_BxL, empty_B, pad_id, start_id, *, cache_len: int):
    """Encoder and cross-attention keys/values, once per batch; an empty decoder cache of cache_len slots.
    Empty rows (batch filler) start out done so they never hold the loop open."""
    model = _compute_model(graphdef, state)
    B = input_ids_BxL.shape[0]
    cross_kv = model.cross_kv(model.encode(input_ids_BxL, mask_BxL))
    loop = {"step": jnp.int32(0), "last_B": jnp.full((B,), start_id, jnp.int32),
            "cache": model.init_cache(B, cache_len), "tokens_BxS": jnp.full((B, cache_len), pad_id, jnp.int32),
            "done_B": empty_B}
    return loop, cross_kv


@functools.partial(jax.jit, static_argnames=("graphdef", "greedy"), donate_argnames=("loop",))
def _continue(graphdef, state, loop, cross_kv, mask_BxL, until, rng, temperature, top_k, top_p, eos_E, pad_id,
              *, greedy: bool):
    """Decode until step `until` or until every row is done. Everything that may change between calls is
    traced; only shapes, the model and greedy-vs-sampling are static. The loop state is donated."""
    model = _compute_model(graphdef, state)
    until = jnp.minimum(until, loop["tokens_BxS"].shape[1])

    def cond(c):
        return (c["step"] < until) & ~jnp.all(c["done_B"])

    def body(c):
        step = c["step"]
        logits_Bx1xV, cache = model.decode_step(c["last_B"][:, None], step, c["cache"], cross_kv, mask_BxL)
        # fold_in(step): the same key gives the same sample whatever the chunking of the loop
        next_B = next_token(logits_Bx1xV[:, 0], jax.random.fold_in(rng, step), temperature, top_k, top_p,
                             greedy=greedy)
        next_B = jnp.where(c["done_B"], pad_id, next_B)  # finished rows emit padding, as HF generate does
        tokens_BxS = jax.lax.dynamic_update_slice(c["tokens_BxS"], next_B[:, None], (0, step))
        return {"step": step + 1, "last_B": next_B, "cache": cache, "tokens_BxS": tokens_BxS,
                "done_B": c["done_B"] | jnp.any(next_B[:, None] == eos_E[None, :], axis=1)}

    return jax.lax.while_loop(cond, body, loop)


def generate_ids(model, input_ids_BxL, attention_mask_BxL=None, *, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, rng=None, eos_token_id: int | list[int] | None = None,
                 stop_check=None, check_every: int = 32):
    """Token-level generation for one batch. Returns (tokens BxN int32 numpy, finished_B bool numpy):
    N = max_new_tokens; each row holds its tokens up to and including EOS, then pad_token_id.

    `stop_check(tokens_BxN so far) -> bool_B` (e.g. a stop-string test) is called every `check_every`
    steps; rows it flags stop there (finished_B stays False for them: they did not emit EOS).
    Rows whose attention mask is all zero are batch filler: they produce only padding and don't keep the
    loop running.
    The batch and input length are used as given; `generate` does the bucketing."""
    cfg = model.config
    if not getattr(cfg, "is_encoder_decoder", False):
        raise ValueError("decode_encdec.generate_ids needs an encoder-decoder model; use ftcot_jax.decode for "
                         "decoder-only models")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(f"bad sampling options: temperature={temperature} (>= 0), top_k={top_k} (>= 0), "
                         f"top_p={top_p} (in (0, 1])")
    ids = jnp.asarray(input_ids_BxL, jnp.int32)
    mask = np.ones(ids.shape, np.int32) if attention_mask_BxL is None else np.array(attention_mask_BxL, np.int32)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    empty = mask.sum(1) == 0
    mask[empty, 0] = 1  # one real position keeps the filler rows' attention well defined
    mask = jnp.asarray(mask)
    greedy = temperature == 0.0
    if rng is None:
        if not greedy:
            raise ValueError("sampling (temperature > 0) needs an explicit PRNG key: rng=jax.random.key(seed)")
        rng = jax.random.key(0)  # unused by the greedy path
    graphdef, state = nnx.split(model)
    eos = cfg.eos_token_id if eos_token_id is None else eos_token_id
    eos = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    if not 1 <= len(eos) <= MAX_EOS:
        raise ValueError(f"eos_token_id: expected 1 to {MAX_EOS} ids, got {eos}")
    pad = jnp.int32(cfg.pad_token_id)
    loop, cross_kv = _start(graphdef, state, ids, mask, jnp.asarray(empty), pad,
                            jnp.int32(cfg.decoder_start_token_id), cache_len=bucket(max_new_tokens))
    eos_E = jnp.asarray(eos + [-1] * (MAX_EOS - len(eos)), jnp.int32)  # fixed size: no recompiles
    args = (rng, jnp.float32(max(temperature, 1e-6)), jnp.int32(top_k), jnp.float32(top_p), eos_E, pad)
    step = max_new_tokens if stop_check is None else min(check_every, max_new_tokens)
    stopped = empty.copy()
    while True:
        loop = _continue(graphdef, state, loop, cross_kv, mask, jnp.int32(step), *args, greedy=greedy)
        if step >= max_new_tokens:
            break
        done = fetch(loop["done_B"])
        if done.all():
            break
        flags = np.asarray(stop_check(fetch(loop["tokens_BxS"])[:, :step]), bool) & ~done
        if flags.any():
            stopped |= flags
            loop = {**loop, "done_B": loop["done_B"] | jnp.asarray(flags)}
        step = min(step + check_every, max_new_tokens)
    return fetch(loop["tokens_BxS"])[:, :max_new_tokens], fetch(loop["done_B"]) & ~stopped


# ----------------------------------------------------------------------------------------------------------
# Text level


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens, batch_size: int, stop=None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=None,
             max_input_length: int | None = None, fill_batch: bool = False) -> list[Generation]:
    """Generations for `prompts` (order kept). Prompts are sorted by length into batches of up to
    `batch_size` rows, padded to power-of-two batch and input lengths (`fill_batch`: every batch has
    batch_bucket(batch_size) rows). `max_new_tokens` and `stop` as in decode.generate (per prompt or for
    all). finish_reason: "stop" (EOS or a stop string; the stop string is not part of the text) or
    "length". token_ids exclude EOS."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got a single string")
    budgets, stops = row_settings(len(prompts), max_new_tokens, stop)
    if not prompts:
        return []
    cfg = model.config
    eos, pad = int(cfg.eos_token_id), int(cfg.pad_token_id)
    enc = [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    if max_input_length is not None:
        enc = [e[:max_input_length] for e in enc]
    for i, e in enumerate(enc):
        if not e:
            enc[i] = [eos]  # an empty prompt still needs one real encoder position
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))
    B = batch_bucket(batch_size if fill_batch else min(batch_size, len(prompts)))
    out: list[Generation | None] = [None] * len(prompts)
    for n_batch, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start:start + batch_size]
        L = bucket(max(len(enc[i]) for i in rows))
        ids = np.full((B, L), pad, np.int32)
        mask = np.zeros((B, L), np.int32)
        for r, i in enumerate(rows):  # T5 is trained with right padding; filler rows keep an all-zero mask
            ids[r, :len(enc[i])], mask[r, :len(enc[i])] = enc[i], 1
        key = None if rng is None else jax.random.fold_in(rng, n_batch)
        n_new, stop_check = batch_limits(tokenizer, [budgets[i] for i in rows], [stops[i] for i in rows], B, [eos])
        tokens, _ = generate_ids(model, ids, mask, max_new_tokens=n_new, temperature=temperature,
                                 top_k=top_k, top_p=top_p, rng=key,
                                 stop_check=stop_check)
        for r, i in enumerate(rows):
            out[i] = finish(tokenizer, tokens[r].tolist(), budgets[i], stops[i], [eos])
    return out
