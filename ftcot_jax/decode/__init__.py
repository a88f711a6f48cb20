"""Batched generation for both kinds of student, with a jitted loop over a fixed-size cache.

- `decode.text`: the front end (`generate`, `generate_ids`, stop strings, per-row budgets, batching).
- `decode.causal`: prefill + loop for decoder-only models (`models.api.CausalLM`).
- `decode.seq2seq`: encoder + loop for encoder-decoder models (`models.api.Seq2SeqLM`, T5).
- `decode.sampling`: logit filters and the next-token step both loops share.

    gens = decode.generate(model, tokenizer, prompts, max_new_tokens=64, batch_size=8)   # list of Generation
    decode.generate(..., on_chunk=fn)   # streaming: fn(list of Partial) every check_every steps
    tokens_BxN, finished_B = decode.generate_ids(model, ids_BxL, mask_BxL, max_new_tokens=64)
"""

from __future__ import annotations

from ftcot_jax.decode.causal import MIN_NEW_BUCKET, MIN_PROMPT_BUCKET, bucket, left_align, prompt_bucket
from ftcot_jax.decode.sampling import filter_logits, next_token
from ftcot_jax.decode.text import (
    CHECK_EVERY,
    Generation,
    Partial,
    batch_bucket,
    batch_limits,
    check_options,
    cut_at_stop,
    finish,
    gather_across_hosts,
    generate,
    generate_ids,
    row_settings,
    stop_string_check,
    stream_text,
)

__all__ = [
    "CHECK_EVERY",
    "MIN_NEW_BUCKET",
    "MIN_PROMPT_BUCKET",
    "Generation",
    "Partial",
    "batch_bucket",
    "batch_limits",
    "bucket",
    "check_options",
    "cut_at_stop",
    "filter_logits",
    "finish",
    "gather_across_hosts",
    "generate",
    "generate_ids",
    "left_align",
    "next_token",
    "prompt_bucket",
    "row_settings",
    "stop_string_check",
    "stream_text",
]
