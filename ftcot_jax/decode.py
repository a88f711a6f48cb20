"""Batched generation for decoder-only students: a jitted prefill plus a `lax.while_loop` over a fixed-size
KV cache. Encoder-decoder models (T5) dispatch to `ftcot_jax.decode_encdec`.

Layout of one batch (B rows, prompt bucket P, generation bucket N, cache S = P + N slots):

    slot:  0 ........ P-1 | P ...... P+N-1
           pad pad p p p  | g g g g ...          kv_mask_BxS: 1 where a real token sits

Prompts are left-padded so every row's next token goes to the same slot; position ids skip padding
(cumsum of the mask), as HF generate does. Batch sizes are bucketed by `batch_bucket`, generation lengths
rounded up to powers of two, prompt lengths to `prompt_bucket` (multiples of 16, then 4 per octave), and
everything else (max_new_tokens, temperature, top-k, top-p, EOS ids, the step to run until) is a traced
value, so a run compiles a bounded number of shapes. Params are passed to the jitted functions as arguments
(nnx.split), never closed over. `_prefill` allocates the cache once per batch; `_continue` runs the loop on
it in place (donated). Without stop strings one `_continue` call runs to EOS or max_new_tokens; with stop
strings the loop returns every `check_every` steps so the host can test the text and end rows (and the
whole loop) early.

    gens = generate(model, tokenizer, prompts, max_new_tokens=64, batch_size=8)   # list of Generation
    tokens_BxN, finished_B = generate_ids(model, ids_BxL, mask_BxL, max_new_tokens=64)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

MIN_PROMPT_BUCKET = 16
MIN_NEW_BUCKET = 16
MAX_EOS = 4  # EOS ids are passed as a fixed-size (padded with -1) array


@dataclasses.dataclass(frozen=True)
class Generation:
    text: str                 # completion text (stop string and EOS excluded)
    token_ids: list[int]      # completion tokens (EOS excluded; up to the token completing a stop string)
    finish_reason: str        # "stop" (EOS or stop string) | "length" (max_new_tokens reached)


def bucket(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum)."""
    return 1 << (max(int(n), int(minimum), 1) - 1).bit_length()


def batch_bucket(n: int) -> int:
    """Rows per compiled batch: powers of two up to 8, then multiples of 8 (a batch of 50 runs 56 rows, not
    64). `generate` pads every batch of a call, the last one included, to this one size."""
    n = max(int(n), 1)
    return bucket(n) if n <= 8 else -(-n // 8) * 8


def prompt_bucket(n: int, minimum: int = MIN_PROMPT_BUCKET) -> int:
    """Prompt-length bucket: multiples of 16 up to 128, then 4 buckets per power of two (<= 25% padding).
    Prefill cost grows with the padded length, so this is finer than powers of two, yet a run still
    compiles O(log max_length) prompt shapes."""
    n = max(int(n), int(minimum), 1)
    step = 16 if n <= 128 else 1 << (n.bit_length() - 3)
    return -(-n // step) * step


# ---------------------------------------------------------------------------------------------- sampling

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
    if greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits_BxV, temperature, top_k, top_p)).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------- the loop

def _compute_model(graphdef, state):
    """The model with its weights cast to the compute dtype once, outside the loop (not in every step)."""
    dtype = getattr(nnx.merge(graphdef, state), "dtype", jnp.float32)
    if dtype != jnp.float32:
        state = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    return nnx.merge(graphdef, state)


def _last_logits(model, x_BxTxD):
    """fp32 logits of the last position, as model.logits computes them. With the [V, D] head as the left
    operand of the dot, XLA:CPU streams it ~1.7x faster at a few rows (16 vs 9 GB/s for SmolLM2's head at
    8 rows; +6% tokens/s for the whole generation there, no change at 1 or 32 rows)."""
    if not hasattr(model, "head_VxD"):
        return model.logits(x_BxTxD[:, -1:])[:, 0]
    head_VxD = model.head_VxD().astype(x_BxTxD.dtype)
    return jnp.einsum("vd,bd->vb", head_VxD, x_BxTxD[:, -1], preferred_element_type=jnp.float32).T


def _pick(model, x_BxTxD, rng, temperature, top_k, top_p, greedy: bool):
    return next_token(_last_logits(model, x_BxTxD), rng, temperature, top_k, top_p, greedy=greedy)


@functools.partial(jax.jit, static_argnames=("graphdef", "new_bucket", "greedy"))
def _prefill(graphdef, state, ids_BxP, mask_BxP, done_B, rng, temperature, top_k, top_p, eos_E, pad_id, *,
             new_bucket: int, greedy: bool):
    """All prompt slots at once into a fresh cache; the first new token comes from the last prompt slot.
    Returns the loop state. Rows already `done_B` (batch filler) emit only padding."""
    model = _compute_model(graphdef, state)
    B, P = ids_BxP.shape
    cache = model.init_cache(B, P + new_bucket)
    kv_mask_BxS = jnp.concatenate([mask_BxP, jnp.zeros((B, new_bucket), mask_BxP.dtype)], axis=1)
    rng, sub = jax.random.split(rng)
    x_BxPxD, cache = model.features(ids_BxP, attention_mask_BxL=kv_mask_BxS, cache=cache, cache_index=0)
    tok_B = jnp.where(done_B, pad_id, _pick(model, x_BxPxD, sub, temperature, top_k, top_p, greedy))
    return {"step": jnp.int32(1), "last_B": tok_B, "cache": cache, "kv_mask_BxS": kv_mask_BxS,
            "tokens_BxN": jnp.full((B, new_bucket), pad_id, jnp.int32).at[:, 0].set(tok_B),
            "done_B": done_B | jnp.isin(tok_B, eos_E), "rng": rng}


def _continue_impl(graphdef, state, loop, until, temperature, top_k, top_p, eos_E, pad_id, *, greedy: bool):
    """Decode until step `until` or until every row is done; the loop state is donated (the cache is
    updated in place). Everything that may change between calls is traced, so chunked runs (stop strings)
    reuse one compilation."""
    model = _compute_model(graphdef, state)
    B, N = loop["tokens_BxN"].shape
    P = loop["kv_mask_BxS"].shape[1] - N
    until = jnp.minimum(until, N)

    def cond(c):
        return (c["step"] < until) & ~jnp.all(c["done_B"])

    def body(c):
        step = c["step"]
        slot = P + step - 1  # where the previous token goes
        kv_mask_BxS = jax.lax.dynamic_update_slice(c["kv_mask_BxS"], jnp.ones((B, 1), c["kv_mask_BxS"].dtype),
                                                   (0, slot))
        rng, sub = jax.random.split(c["rng"])
        x_Bx1xD, cache = model.features(c["last_B"][:, None], attention_mask_BxL=kv_mask_BxS, cache=c["cache"],
                                        cache_index=slot)
        nxt_B = _pick(model, x_Bx1xD, sub, temperature, top_k, top_p, greedy)
        nxt_B = jnp.where(c["done_B"], pad_id, nxt_B)  # finished rows emit padding, as HF does
        tokens_BxN = jax.lax.dynamic_update_slice(c["tokens_BxN"], nxt_B[:, None], (0, step))
        return {"step": step + 1, "last_B": nxt_B, "cache": cache, "kv_mask_BxS": kv_mask_BxS,
                "tokens_BxN": tokens_BxN, "done_B": c["done_B"] | jnp.isin(nxt_B, eos_E), "rng": rng}

    return jax.lax.while_loop(cond, body, loop)


_LOOP_JIT = dict(static_argnames=("graphdef", "greedy"), donate_argnames=("loop",))
_continue = jax.jit(_continue_impl, **_LOOP_JIT)
# XLA:CPU's default (YNNPACK) dots are slow at a few rows: at 8 rows they stream SmolLM2's weights at ~8 GB/s,
# its Eigen dots at ~10. With Eigen dots for the loop, batch 8 and 16 decode 15-17% faster, batch 1 and 32 not
# (docs/compare.md, "Greedy decoding"). Other backends ignore this: they never take this path.
CPU_FEW_ROWS = (2, 16)
_CPU_FEW_ROWS_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_continue_cpu_few_rows = jax.jit(_continue_impl, compiler_options=_CPU_FEW_ROWS_OPTIONS, **_LOOP_JIT)
_few_rows_ok = [True]  # False once this jaxlib rejected the option (it is experimental and may be renamed)


def loop_compiler_options(batch: int) -> dict | None:
    """The XLA compile options the decode loop uses for `batch` rows (None = XLA's defaults)."""
    if _few_rows_ok[0] and jax.default_backend() == "cpu" and CPU_FEW_ROWS[0] <= batch <= CPU_FEW_ROWS[1]:
        return _CPU_FEW_ROWS_OPTIONS
    return None


def _run_loop(graphdef, state, loop, until, args, greedy: bool):
    if loop_compiler_options(loop["tokens_BxN"].shape[0]) is not None:
        try:
            return _continue_cpu_few_rows(graphdef, state, loop, until, *args, greedy=greedy)
        except jax.errors.JaxRuntimeError as e:  # compile error: nothing ran, the loop state is intact
            if "compile option" not in str(e):
                raise
            _few_rows_ok[0] = False
    return _continue(graphdef, state, loop, until, *args, greedy=greedy)


def fetch(x) -> np.ndarray:
    """A device array on the host. When the model spans several processes (multi-host evaluation) the
    loop's arrays do too: every process gathers the whole array (each runs the same decode, so they agree)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _eos_ids(model, tokenizer=None, eos_token_id=None) -> list[int]:
    ids = []
    for e in (eos_token_id if eos_token_id is not None else model.config.eos_token_id,
              None if tokenizer is None or eos_token_id is not None else tokenizer.eos_token_id):
        for i in (e if isinstance(e, (list, tuple)) else [e]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if len(ids) > MAX_EOS:
        raise ValueError(f"at most {MAX_EOS} EOS token ids are supported, got {ids}")
    return ids


def _pad_id(model, tokenizer=None) -> int:
    for p in (getattr(model.config, "pad_token_id", None), None if tokenizer is None else tokenizer.pad_token_id,
              *_eos_ids(model, tokenizer)):
        if p is not None:
            return int(p)
    return 0


def _check_options(max_new_tokens, temperature, top_k, top_p, rng):
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(f"bad sampling options: temperature={temperature} (>= 0), top_k={top_k} (>= 0), "
                         f"top_p={top_p} (in (0, 1])")
    if temperature > 0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs an explicit PRNG key: rng=jax.random.key(seed)")


def _max_positions(config) -> int | None:
    for k in ("n_positions", "max_position_embeddings"):
        v = getattr(config, k, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def left_align(ids_BxL: np.ndarray, mask_BxL: np.ndarray, pad_id: int, length: int):
    """Rows rewritten as left-padded (real tokens flush right) in a (B, length) array."""
    B = ids_BxL.shape[0]
    ids = np.full((B, length), pad_id, np.int32)
    mask = np.zeros((B, length), np.int32)
    for r in range(B):
        real = ids_BxL[r][mask_BxL[r] > 0]
        if len(real):
            ids[r, length - len(real):], mask[r, length - len(real):] = real, 1
    return ids, mask


def generate_ids(model, input_ids_BxL, attention_mask_BxL=None, *, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, rng=None, eos_token_id=None, pad_token_id=None,
                 stop_check=None, check_every: int = 16, filler_B=None):
    """Token-level generation for one batch. Returns (tokens BxN int32 numpy, finished_B bool numpy) with
    N = max_new_tokens; each row holds its tokens up to and including EOS, then padding. Rows may be left-
    or right-padded (they are left-aligned here); the prompt length is bucketed, the batch is used as given.

    `stop_check(tokens_BxN so far) -> bool_B` (e.g. a stop-string test) is called every `check_every`
    steps; rows it flags stop there (finished_B stays False for them: they did not emit EOS), and the loop
    ends as soon as every row has stopped. `filler_B` (bool) marks rows that only pad the batch: they emit
    padding and never hold the loop open."""
    if getattr(model.config, "is_encoder_decoder", False):
        from ftcot_jax import decode_encdec

        return decode_encdec.generate_ids(model, input_ids_BxL, attention_mask_BxL, max_new_tokens=max_new_tokens,
                                          temperature=temperature, top_k=top_k, top_p=top_p, rng=rng,
                                          eos_token_id=eos_token_id, stop_check=stop_check,
                                          check_every=check_every)
    _check_options(max_new_tokens, temperature, top_k, top_p, rng)
    ids = np.asarray(input_ids_BxL)
    mask = np.ones_like(ids) if attention_mask_BxL is None else np.asarray(attention_mask_BxL)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"input_ids {ids.shape} and attention_mask {mask.shape} must be the same (B, L) shape")
    lengths = mask.sum(1)
    if (lengths == 0).any():
        raise ValueError(f"prompt rows {np.flatnonzero(lengths == 0).tolist()} are empty (no real tokens)")
    limit = _max_positions(model.config)
    if limit is not None and lengths.max() + max_new_tokens > limit:
        raise ValueError(f"prompt of {int(lengths.max())} tokens + max_new_tokens={max_new_tokens} exceeds the "
                         f"model's {limit} positions")
    pad = _pad_id(model) if pad_token_id is None else int(pad_token_id)
    eos = _eos_ids(model, eos_token_id=eos_token_id)
    ids, mask = left_align(ids, mask, pad, prompt_bucket(lengths.max()))
    greedy = temperature == 0.0
    graphdef, state = nnx.split(model)
    filler = np.zeros(len(ids), bool) if filler_B is None else np.asarray(filler_B, bool)
    args = (jnp.float32(max(temperature, 1e-6)), jnp.int32(top_k), jnp.float32(top_p),
            jnp.asarray(eos + [-1] * (MAX_EOS - len(eos)), jnp.int32), jnp.int32(pad))
    loop = _prefill(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(filler),
                    jax.random.key(0) if rng is None else rng, *args, new_bucket=bucket(max_new_tokens, MIN_NEW_BUCKET),
                    greedy=greedy)
    until = max_new_tokens if stop_check is None else min(check_every, max_new_tokens)
    stopped = filler.copy()
    while True:
        loop = _run_loop(graphdef, state, loop, jnp.int32(until), args, greedy)
        if until >= max_new_tokens:
            break
        done = fetch(loop["done_B"])
        if done.all():
            break
        flags = np.asarray(stop_check(fetch(loop["tokens_BxN"])[:, :until]), bool) & ~done
        if flags.any():
            stopped |= flags
            loop = {**loop, "done_B": loop["done_B"] | jnp.asarray(flags)}
        until = min(until + check_every, max_new_tokens)
    return fetch(loop["tokens_BxN"])[:, :max_new_tokens], fetch(loop["done_B"]) & ~stopped


# ---------------------------------------------------------------------------------------------- text level

def cut_at_stop(tokenizer, token_ids: list[int], stop: list[str]):
    """(text, token_ids, stopped): text before the first stop string; tokens up to the one completing it."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    if not hits:
        return text, token_ids, False
    cut = min(hits)
    for k in range(1, len(token_ids) + 1):  # first prefix whose text reaches past the cut
        if any(s in tokenizer.decode(token_ids[:k], skip_special_tokens=True) for s in stop):
            return text[:cut], token_ids[:k], True
    return text[:cut], token_ids, True


def row_settings(n: int, max_new_tokens, stop) -> tuple[list[int], list[list[str]]]:
    """Per-prompt (budgets, stop lists) from `max_new_tokens` (an int, or one per prompt) and `stop` (None,
    strings for every prompt, or one list of strings per prompt). Empty stop strings are ignored."""
    budgets = [max_new_tokens] * n if isinstance(max_new_tokens, (int, np.integer)) else list(max_new_tokens)
    if len(budgets) != n:
        raise ValueError(f"max_new_tokens: got {len(budgets)} values for {n} prompts; expected an int or one per prompt")
    for b in budgets:
        if not isinstance(b, (int, np.integer)) or b < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {b!r}")
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    if all(isinstance(x, str) for x in stop):
        stops = [[x for x in stop if x]] * n
    elif len(stop) == n and all(isinstance(x, (list, tuple)) and all(isinstance(y, str) for y in x) for x in stop):
        stops = [[y for y in x if y] for x in stop]
    else:
        raise ValueError(f"stop must be a list of strings or one list of strings per prompt ({n}), got {stop!r}")
    return [int(b) for b in budgets], stops


def stop_string_check(tokenizer, stops: list[list[str]], eos: list[int], budgets: list[int] | None = None):
    """A `stop_check` for generate_ids: rows whose text (before any EOS) contains one of their own stop
    strings, or that have decoded their own budget of tokens."""
    def check(tokens_BxN):
        flags = []
        for r, row in enumerate(tokens_BxN.tolist()):
            if budgets is not None and len(row) >= budgets[r]:
                flags.append(True)
                continue
            if not stops[r]:
                flags.append(False)
                continue
            ends = [row.index(e) for e in eos if e in row]
            text = tokenizer.decode(row[: min(ends)] if ends else row, skip_special_tokens=True)
            flags.append(any(s in text for s in stops[r]))
        return np.array(flags, bool)

    return check


def batch_limits(tokenizer, budgets: list[int], stops: list[list[str]], batch: int, eos: list[int]):
    """(max_new_tokens, stop_check or None) for one batch whose real rows have these budgets and stop lists;
    the batch's filler rows (up to `batch`) never stop it early. A stop_check only when some row can end
    before the longest budget."""
    n_new = max(budgets)
    filler = batch - len(budgets)
    row_budgets, row_stops = budgets + [n_new] * filler, stops + [[]] * filler
    if not any(row_stops) and min(row_budgets) == n_new:
        return n_new, None
    return n_new, stop_string_check(tokenizer, row_stops, eos, row_budgets)


def finish(tokenizer, row: list[int], budget: int, stop: list[str], eos: list[int]) -> Generation:
    """A decoded row (possibly longer than its budget) -> its Generation: cut at the budget, then at EOS,
    then before the first stop string."""
    row = row[:budget]
    ends = [row.index(e) for e in eos if e in row]
    hit_eos = bool(ends)
    row = row[: min(ends)] if hit_eos else row
    if stop:
        text, row, stopped = cut_at_stop(tokenizer, row, stop)
    else:
        text, stopped = tokenizer.decode(row, skip_special_tokens=True), False
    return Generation(text=text, token_ids=row, finish_reason="stop" if (hit_eos or stopped) else "length")


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens, batch_size: int, stop=None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=None,
             fill_batch: bool = False) -> list[Generation]:
    """Generations for `prompts` (order kept). Prompts are sorted by length into batches of up to
    `batch_size` rows (batch padded by `batch_bucket`; with `fill_batch` every batch has
    batch_bucket(batch_size) rows, so a server compiles one batch shape). `max_new_tokens` is an int or one
    per prompt, `stop` a list of strings or one list per prompt (see `row_settings`); a batch decodes until
    every row has hit EOS, a stop string or its own budget. finish_reason: "stop" (EOS or a stop string;
    the stop string is not part of the text) or "length"."""
    if getattr(model.config, "is_encoder_decoder", False):
        from ftcot_jax import decode_encdec

        return decode_encdec.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                      batch_size=batch_size, stop=stop, temperature=temperature, top_k=top_k,
                                      top_p=top_p, rng=rng, fill_batch=fill_batch)
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got a single string")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    budgets, stops = row_settings(len(prompts), max_new_tokens, stop)
    _check_options(min(budgets, default=1), temperature, top_k, top_p, rng)
    if not prompts:
        return []
    eos = _eos_ids(model, tokenizer)
    pad = _pad_id(model, tokenizer)
    enc = [list(tokenizer(p)["input_ids"]) for p in prompts]
    for i, e in enumerate(enc):
        if not e:
            raise ValueError(f"prompt {i} encodes to no tokens; a decoder needs at least one prompt token")
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))
    B = batch_bucket(batch_size if fill_batch else min(batch_size, len(prompts)))
    out: list[Generation | None] = [None] * len(prompts)
    for n_batch, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start:start + batch_size]
        L = max(len(enc[i]) for i in rows)
        ids = np.full((B, L), pad, np.int32)
        mask = np.zeros((B, L), np.int32)
        for r, i in enumerate(rows):
            ids[r, L - len(enc[i]):], mask[r, L - len(enc[i]):] = enc[i], 1
        mask[len(rows):, -1] = 1  # filler rows: one real (pad) token, output discarded
        key = None if rng is None else jax.random.fold_in(rng, n_batch)
        n_new, stop_check = batch_limits(tokenizer, [budgets[i] for i in rows], [stops[i] for i in rows], B, eos)
        tokens, _ = generate_ids(model, ids, mask, max_new_tokens=n_new, temperature=temperature,
                                 top_k=top_k, top_p=top_p, rng=key, eos_token_id=eos, pad_token_id=pad,
                                 stop_check=stop_check,
                                 filler_B=np.arange(B) >= len(rows))
        for r, i in enumerate(rows):
            out[i] = finish(tokenizer, tokens[r].tolist(), budgets[i], stops[i], eos)
    return out
