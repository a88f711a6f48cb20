"""Evaluate a model on task examples: build each prompt, decode, score with the reference's answer parsing.

`generate_and_score` is the one greedy decode-and-score loop: the trainer's per-epoch evaluation, the
pipeline's zero-shot baseline and the comparison's JAX worker all call it. `sample_and_vote` is its
self-consistency counterpart (K sampled rows per question in the same decode calls, then a vote:
`self_consistency`); `evaluate` runs both as an `EvalSection` asks (the trainer, `ftcot evaluate`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ftcot_jax import decode, prompts, scoring, self_consistency
from ftcot_jax.config import EvalSection
from ftcot_jax.models.api import model_kind


def _decode(model, tokenizer, examples: Sequence, template: str, *, repeat: int = 1, mesh=None, stop=None, **kw):
    """The one place prompts are built and decoded: `template`'s prompt for each example, `repeat` rows of it
    in a row, decoded (`decode.generate`, `kw` its settings) under `mesh`. Returns (prompts, generations)."""
    kind = model_kind(model)
    texts = [prompts.prompt(template, kind, ex.question) for ex in examples]
    rows = [t for t in texts for _ in range(repeat)]
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        gens = decode.generate(model, tokenizer, rows, stop=list(stop) if stop else None, **kw)
    return texts, gens


def _scored(task: str, template: str, answer, g) -> dict:
    """One completion's fields: its text, finish reason and the reference scorer's verdict."""
    r = scoring.evaluate_completion(task, g.text, answer, template, g.finish_reason)
    return {"completion": g.text, "finish_reason": g.finish_reason, **r}


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
    texts, gens = _decode(
        model, tokenizer, examples, template, mesh=mesh, stop=stop, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    records = [
        {
            "sample_index": ex.sample_index,
            "question": ex.question,
            "answer": ex.answer,
            "prompt": prompt,
            **_scored(task, template, ex.answer, g),
        }
        for ex, prompt, g in zip(examples, texts, gens, strict=True)
    ]
    return scoring.summarize(records), records


def sample_and_vote(
    model,
    tokenizer,
    examples: Sequence,
    *,
    task: str,
    template: str,
    samples: int,
    temperature: float,
    rng,
    batch_size: int,
    max_new_tokens: int,
    top_k: int = 0,
    top_p: float = 1.0,
    stop: Sequence[str] | None = None,
    mesh=None,
) -> tuple[dict, list[dict]]:
    """Self-consistency: `samples` (K) sampled completions per example, decoded as K rows of the same batch
    (batches hold whole questions: K * max(1, batch_size // K) rows), each scored by the task's reference
    rule, then a vote (`self_consistency.vote`). Sample j of example q has its own key, `fold_in(rng, q * K + j)`
    (`decode.generate`'s per-prompt keys), so it decodes as a separate call with that key would.
    Returns (summary: `self_consistency.summarize_votes`, one vote record per example with its
    sample_index, question and answer)."""
    self_consistency.check_samples(samples, temperature)
    _, gens = _decode(
        model,
        tokenizer,
        examples,
        template,
        repeat=samples,
        mesh=mesh,
        stop=stop,
        max_new_tokens=max_new_tokens,
        batch_size=samples * max(1, batch_size // samples),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        rng=jax.vmap(jax.random.fold_in, (None, 0))(rng, jnp.arange(len(examples) * samples)),  # a key per row
    )
    votes = [
        {
            "sample_index": ex.sample_index,
            "question": ex.question,
            "answer": ex.answer,
            **self_consistency.vote(
                [_scored(task, template, ex.answer, g) for g in gens[q * samples : (q + 1) * samples]]
            ),
        }
        for q, ex in enumerate(examples)
    ]
    return self_consistency.summarize_votes(votes), votes


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation: the summary (greedy fields, plus samples / maj_accuracy / pass_accuracy / maj_by_k
    with self-consistency), the greedy records, the vote records (None without self-consistency) and the
    wall seconds of each decode (kept out of the summary, which must not depend on timing)."""

    summary: dict
    records: list[dict]
    votes: list[dict] | None
    seconds: dict


def evaluate(
    model, tokenizer, examples: Sequence, *, task: str, template: str, eval_cfg: EvalSection, epoch: int = 0, mesh=None
) -> Evaluation:
    """Greedy decoding and scoring (`generate_and_score`) and, when `eval_cfg.samples` > 1, self-consistency
    with the section's sampling settings and the key `fold_in(key(eval_cfg.seed), epoch)`."""
    t0 = time.perf_counter()
    summary, records = generate_and_score(
        model,
        tokenizer,
        examples,
        task=task,
        template=template,
        batch_size=eval_cfg.batch_size,
        max_new_tokens=eval_cfg.max_new_tokens,
        mesh=mesh,
    )
    seconds = {"greedy_decode_seconds": time.perf_counter() - t0}
    if eval_cfg.samples <= 1:
        return Evaluation(summary, records, None, seconds)
    t0 = time.perf_counter()
    sc, votes = sample_and_vote(
        model,
        tokenizer,
        examples,
        task=task,
        template=template,
        samples=eval_cfg.samples,
        temperature=eval_cfg.temperature,
        top_k=eval_cfg.top_k,
        top_p=eval_cfg.top_p,
        rng=jax.random.fold_in(jax.random.key(eval_cfg.seed), epoch),
        batch_size=eval_cfg.batch_size,
        max_new_tokens=eval_cfg.max_new_tokens,
        mesh=mesh,
    )
    seconds["sample_decode_seconds"] = time.perf_counter() - t0
    return Evaluation({**summary, **sc}, records, votes, seconds)
