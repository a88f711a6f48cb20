"""The one decode front end, for both model kinds: option checks, per-row budgets and stop strings, batching
and bucketing, and the chunked host loop around the jitted loops of `decode.causal` (`models.api.CausalLM`)
and `decode.seq2seq` (`models.api.Seq2SeqLM`). The only module that knows both kinds.

Without stop strings (or per-row budgets) the loop runs to EOS or max_new_tokens; otherwise it returns every
`check_every` steps so the host can test the text and end rows (and the whole loop) early, and so can a
streaming caller (`on_chunk`: the tokens so far, `Partial`, `stream_text`). (Off CPU the device runs
fixed-length chunks, `models.cpu_xla.DECODE_CHUNK` steps, and the host also checks for EOS between them:
`decode.sampling`.)
Batch sizes are bucketed by `batch_bucket`; generation lengths and input lengths are rounded up (see the
kind's module), so a run compiles a bounded number of shapes.

    gens = generate(model, tokenizer, prompts, max_new_tokens=64, batch_size=8)   # list of Generation
    tokens_BxN, finished_B = generate_ids(model, ids_BxL, mask_BxL, max_new_tokens=64)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from ftcot_jax.decode import causal, seq2seq
from ftcot_jax.decode.causal import MIN_PROMPT_BUCKET, bucket
from ftcot_jax.decode.sampling import gather_across_hosts, make_sampling
from ftcot_jax.models import api

CHECK_EVERY = 16  # steps between the host's stop checks


@dataclasses.dataclass(frozen=True)
class Generation:
    text: str  # completion text (stop string and EOS excluded)
    token_ids: list[int]  # completion tokens (EOS excluded; up to the token completing a stop string)
    finish_reason: str  # "stop" (EOS or stop string) | "length" (max_new_tokens reached)


@dataclasses.dataclass(frozen=True)
class Partial:
    """One prompt's output so far, as `generate`'s `on_chunk` sees it between decode chunks."""

    index: int  # the prompt's position in `prompts`
    token_ids: list[int]  # new tokens so far (within the prompt's budget, EOS excluded)
    final: Generation | None  # the prompt's Generation once it is done (reported once), else None


def batch_bucket(n: int) -> int:
    """Rows per compiled batch: powers of two up to 8, then multiples of 8 (a batch of 50 runs 56 rows, not
    64). `generate` pads every batch of a call, the last one included, to this one size."""
    n = max(int(n), 1)
    return bucket(n) if n <= 8 else -(-n // 8) * 8


def _is_seq2seq(model) -> bool:
    if isinstance(model, api.Seq2SeqLM):
        return True
    if isinstance(model, api.CausalLM):
        return False
    raise TypeError(f"{type(model).__name__} is neither a models.api.CausalLM nor a models.api.Seq2SeqLM")


def check_options(max_new_tokens, temperature, top_k, top_p, rng) -> None:
    """ValueError for options no decode can run with (both `generate` and `generate_ids` check them first)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0.0 < top_p <= 1.0 or top_k < 0:
        raise ValueError(
            f"bad sampling options: temperature={temperature} (>= 0), top_k={top_k} (>= 0), top_p={top_p} (in (0, 1])"
        )
    if temperature > 0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs an explicit PRNG key: rng=jax.random.key(seed)")


# ---------------------------------------------------------------------------------------------- token level


def generate_ids(
    model,
    input_ids_BxL,
    attention_mask_BxL=None,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng=None,
    eos_token_id=None,
    pad_token_id=None,
    stop_check=None,
    check_every: int = CHECK_EVERY,
    filler_B=None,
    on_chunk: Callable[[np.ndarray, np.ndarray], np.ndarray | None] | None = None,
):
    """Token-level generation for one batch. Returns (tokens BxN int32 numpy, finished_B bool numpy) with
    N = max_new_tokens; each row holds its tokens up to and including EOS, then padding. EOS and pad ids
    default to the model config's (`models.api.eos_ids`, `pad_id`).

    Decoder-only: rows may be left- or right-padded (they are left-aligned here); the prompt length is
    bucketed, the batch is used as given; an empty row is an error. Encoder-decoder: the batch and input
    length are used as given; rows with an all-zero mask are batch filler.

    `stop_check(tokens_BxN so far) -> bool_B` (e.g. a stop-string test) is called every `check_every`
    steps; rows it flags stop there (finished_B stays False for them: they did not emit EOS), and the loop
    ends as soon as every row has stopped. `filler_B` (bool) marks rows that only pad the batch: they emit
    padding and never hold the loop open. Sampling draws token t with `jax.random.fold_in(rng, t)`.

    `on_chunk(tokens_BxT so far, done_B) -> bool_B or None` (streaming) is called every `check_every` steps
    too, after the stop check, while some row still decodes (not after the last step: the result follows);
    `done_B` marks rows that will emit nothing more (EOS, a stop, filler). Rows it returns True for end
    there like a stop (e.g. their client went away). Without `stop_check` and `on_chunk` the loop runs
    without returning to the host.

    `rng`: one key for the batch, or B keys, one per row (`decode.sampling`)."""
    check_options(max_new_tokens, temperature, top_k, top_p, rng)
    ids = np.asarray(input_ids_BxL)
    mask = np.ones_like(ids) if attention_mask_BxL is None else np.asarray(attention_mask_BxL)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"input_ids {ids.shape} and attention_mask {mask.shape} must be the same (B, L) shape")
    rng = None if rng is None else _typed_keys(rng)
    if rng is not None and rng.ndim == 1 and rng.shape[0] != len(ids):
        raise ValueError(
            f"rng holds {rng.shape[0]} keys for a batch of {len(ids)} rows; expected one key or one per row"
        )
    pad = api.pad_id(model) if pad_token_id is None else int(pad_token_id)
    s = make_sampling(rng, temperature, top_k, top_p, api.eos_ids(model, eos_token_id=eos_token_id), pad)
    filler = np.zeros(len(ids), bool) if filler_B is None else np.asarray(filler_B, bool)
    begin = seq2seq.begin if _is_seq2seq(model) else causal.begin
    loop, advance, filler = begin(
        model, ids, mask, filler, s, pad=pad, max_new_tokens=max_new_tokens, greedy=temperature == 0.0
    )
    host_checks = stop_check is not None or on_chunk is not None
    until = min(check_every, max_new_tokens) if host_checks else max_new_tokens
    stopped = filler.copy()
    while True:
        loop = advance(loop, until)
        if until >= max_new_tokens:
            break
        done = gather_across_hosts(loop.done_B)
        if done.all():
            break
        tokens = gather_across_hosts(loop.tokens_BxN)[:, :until]
        flags = np.zeros_like(done) if stop_check is None else np.asarray(stop_check(tokens), bool) & ~done
        if on_chunk is not None:
            ended = on_chunk(tokens, done | flags)
            if ended is not None:
                flags |= np.asarray(ended, bool) & ~done
        if flags.any():
            stopped |= flags
            loop = loop.replace(done_B=loop.done_B | jnp.asarray(flags))
        until = min(until + check_every, max_new_tokens)
    return gather_across_hosts(loop.tokens_BxN)[:, :max_new_tokens], gather_across_hosts(loop.done_B) & ~stopped


def _typed_keys(rng):
    """A typed key (or keys) from a typed key or a legacy uint32 `jax.random.PRNGKey` (or a stack of them)."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        if rng.ndim > 1:
            raise ValueError(f"rng: expected one key or one key per row, got keys of shape {rng.shape}")
        return rng
    return jax.random.wrap_key_data(jnp.asarray(rng, jnp.uint32))


def prompt_keys(rng, n: int):
    """`generate`'s `rng` as one key per prompt, or None (greedy, or one key for the whole call)."""
    if rng is None:
        return None
    keys = _typed_keys(rng)
    if keys.ndim == 0:
        return None
    if keys.shape[0] != n:
        raise ValueError(f"rng holds {keys.shape[0]} keys for {n} prompts; expected one key or one per prompt")
    return keys


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
        raise ValueError(
            f"max_new_tokens: got {len(budgets)} values for {n} prompts; expected an int or one per prompt"
        )
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


def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens,
    batch_size: int,
    stop=None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng=None,
    max_input_length: int | None = None,
    fill_batch: bool = False,
    on_chunk: Callable[[list[Partial]], Iterable[int] | None] | None = None,
    check_every: int = CHECK_EVERY,
) -> list[Generation]:
    """Generations for `prompts` (order kept). Prompts are sorted by length into batches of up to
    `batch_size` rows (batch padded by `batch_bucket`; with `fill_batch` every batch has
    batch_bucket(batch_size) rows, so a server compiles one batch shape). `max_new_tokens` is an int or one
    per prompt, `stop` a list of strings or one list per prompt (see `row_settings`); a batch decodes until
    every row has hit EOS, a stop string or its own budget. `max_input_length` keeps each prompt's first
    tokens. finish_reason: "stop" (EOS or a stop string; the stop string is not part of the text) or
    "length". Sampling: `rng` is one key (batch k of the call uses `jax.random.fold_in(rng, k)`) or one key
    per prompt, whose tokens then depend on that key only, not on the batch the prompt lands in
    (`decode.sampling`; self-consistency decodes K rows of a question so).

    Decoder-only models stop at the config's and the tokenizer's EOS ids; encoder-decoder models take EOS
    and pad from their config, as HF generate does, and an empty prompt becomes a lone EOS.

    Streaming: `on_chunk(partials)` is called every `check_every` steps while a batch decodes, with a
    `Partial` for each of the batch's prompts not yet reported done (`stream_text` turns its tokens into
    text that is safe to send); it may return indices of prompts to end there (their clients went away:
    their Generation holds the tokens they had, finish_reason "length").
    Without `on_chunk` nothing of this runs."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got a single string")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    budgets, stops = row_settings(len(prompts), max_new_tokens, stop)
    check_options(min(budgets, default=1), temperature, top_k, top_p, rng)
    if not prompts:
        return []
    keys = prompt_keys(rng, len(prompts))
    encoder_decoder = _is_seq2seq(model)
    eos = api.eos_ids(model) if encoder_decoder else api.eos_ids(model, tokenizer)
    pad = api.pad_id(model) if encoder_decoder else api.pad_id(model, tokenizer)
    enc = [list(tokenizer(p)["input_ids"])[:max_input_length] for p in prompts]
    for i, e in enumerate(enc):
        if not e and encoder_decoder:
            enc[i] = eos[:1]  # an empty prompt still needs one real encoder position
        elif not e:
            raise ValueError(f"prompt {i} encodes to no tokens; a decoder needs at least one prompt token")
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))
    B = batch_bucket(batch_size if fill_batch else min(batch_size, len(prompts)))
    out: list[Generation | None] = [None] * len(prompts)
    for n_batch, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start : start + batch_size]
        # right-padded to an input bucket (the encoder's input length; the causal loop re-buckets and
        # left-aligns); filler rows hold one real pad token and are marked as filler
        L = bucket(max(len(enc[i]) for i in rows), MIN_PROMPT_BUCKET)
        ids = np.full((B, L), pad, np.int32)
        mask = np.zeros((B, L), np.int32)
        for r, i in enumerate(rows):
            ids[r, : len(enc[i])], mask[r, : len(enc[i])] = enc[i], 1
        mask[len(rows) :, 0] = 1
        if keys is not None:  # one key per row; filler rows take any
            key = keys[np.array(rows + rows[:1] * (B - len(rows)))]
        else:
            key = None if rng is None else jax.random.fold_in(rng, n_batch)
        n_new, stop_check = batch_limits(tokenizer, [budgets[i] for i in rows], [stops[i] for i in rows], B, eos)
        hook = None if on_chunk is None else _ChunkHook(on_chunk, tokenizer, rows, budgets, stops, eos, B)
        tokens, _ = generate_ids(
            model,
            ids,
            mask,
            max_new_tokens=n_new,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            rng=key,
            eos_token_id=eos,
            pad_token_id=pad,
            stop_check=stop_check,
            check_every=check_every,
            filler_B=np.arange(B) >= len(rows),
            on_chunk=hook,
        )
        for r, i in enumerate(rows):
            row = tokens[r].tolist()[: None if hook is None else hook.ended_at.get(i)]
            out[i] = finish(tokenizer, row, budgets[i], stops[i], eos)
    return out


class _ChunkHook:
    """generate_ids' `on_chunk` for one batch of `generate`: token rows -> `Partial`s of the batch's prompts
    (each done prompt reported once, with its Generation); the prompt indices `on_chunk` returns -> rows to
    end, remembered in `ended_at` (prompt index -> tokens it had)."""

    def __init__(self, on_chunk, tokenizer, rows: list[int], budgets, stops, eos, batch: int):
        self.on_chunk, self.tokenizer, self.rows = on_chunk, tokenizer, rows
        self.budgets, self.stops, self.eos, self.batch = budgets, stops, eos, batch
        self.reported: set[int] = set()
        self.ended_at: dict[int, int] = {}

    def __call__(self, tokens_BxT, done_B):
        partials = []
        for r, i in enumerate(self.rows):
            if i in self.reported or i in self.ended_at:
                continue
            row = tokens_BxT[r].tolist()
            if done_B[r]:
                self.reported.add(i)
                final = finish(self.tokenizer, row, self.budgets[i], self.stops[i], self.eos)
                partials.append(Partial(index=i, token_ids=final.token_ids, final=final))
            else:
                partials.append(Partial(index=i, token_ids=row[: self.budgets[i]], final=None))
        ended = set(self.on_chunk(partials) or ()) - self.reported
        for i in ended:
            self.ended_at[i] = tokens_BxT.shape[1]
        return np.array([r < len(self.rows) and self.rows[r] in ended for r in range(self.batch)], bool)


def stream_text(tokenizer, token_ids: list[int], stop: list[str]) -> str:
    """The part of an unfinished row's text that later tokens cannot change, i.e. a prefix of its final
    Generation's text (for a tokenizer whose decoding of a prefix is a prefix of its decoding of the
    whole): the text before its first stop string, less a tail that could still change: an unfinished
    character (U+FFFD until its last byte arrives), trailing whitespace (a decoder may clean it up when
    the next token comes) and the longest end that begins one of the stop strings."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    if hits:
        return text[: min(hits)]
    text = text.rstrip("\ufffd").rstrip()
    keep = len(text)
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = min(keep, len(text) - k)
                break
    return text[:keep]
