"""Evaluate a model on task examples: build each prompt, decode, score with the reference's answer parsing.

`generate_and_score` is the one decode-and-score loop: the trainer's per-epoch evaluation, the pipeline's
zero-shot baseline and the comparison's JAX worker all call it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import jax

from ftcot_jax import decode, prompts, scoring
from ftcot_jax.models.api import model_kind


def generate_and_score(
    model,
    tokenizer,
    examples: Sequence,
    *,
    task: str,
    template: str,
    batch_size: int,
    max_new_tokens: int,
    stop: Sequence[str] | None = None,
    mesh=None,
) -> tuple[dict, list[dict]]:
    """Greedy-decode `template`'s prompt for each example and score the completions.

    `examples` are `tasks.Example`s (question, answer, sample_index). Returns (summary, records): the summary
    is `scoring.summarize`'s (accuracy, contains_answer, correct_format, complete, n); one record per example
    with its prompt, completion, finish reason and the scorer's fields. `mesh` decodes under that mesh.
    """
    kind = model_kind(model)
    texts = [prompts.prompt(template, kind, ex.question) for ex in examples]
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        gens = decode.generate(
            model,
            tokenizer,
            texts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            stop=list(stop) if stop else None,
        )
    records = []
    for ex, prompt, g in zip(examples, texts, gens, strict=True):
        r = scoring.evaluate_completion(task, g.text, ex.answer, template, g.finish_reason)
        records.append(
            {
                "sample_index": ex.sample_index,
                "question": ex.question,
                "answer": ex.answer,
                "prompt": prompt,
                "completion": g.text,
                "finish_reason": g.finish_reason,
                **r,
            }
        )
    return scoring.summarize(records), records
