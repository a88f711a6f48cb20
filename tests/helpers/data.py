"""Synthetic data for tests: last-letter fine-tuning samples and teacher cache records."""

from __future__ import annotations

import numpy as np

from ftcot_jax.samples import FinetuneSample
from ftcot_jax.teacher.records import TeacherRecord


def last_letter_samples(n: int, seed: int = 0, method: str = "ft", letters: str = "abcdef"):
    """Synthetic last-letter concatenation: question = two 3-letter words, answer = their last letters."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = ["".join(rng.choice(list(letters), 3)) for _ in range(2)]
        answer = "".join(w[-1] for w in words)
        rationale = " ".join(f"{w} ends with {w[-1]}." for w in words) if method == "ft_cot" else ""
        out.append(
            FinetuneSample(
                task="last_letter_concatenation",
                sample_index=i,
                completion_index=0,
                question=" ".join(words),
                answer=answer,
                rationale=rationale,
                method=method,
            )
        )
    return out


def teacher_record(s, c=0, task="coin_flip", model="org/Model-1", temperature=0.7, **kw) -> TeacherRecord:
    """A complete teacher cache record for sample `s`, completion `c`; keywords override fields."""
    base = dict(
        task=task,
        split="train",
        sample_index=s,
        completion_index=c,
        teacher_model=model,
        endpoint="http://127.0.0.1:8080/v1",
        protocol="chat",
        question=f"Q{s}?",
        gold_answer="yes",
        reasoning_prompt=f"Q: Q{s}?\nA: Let's think step by step.",
        rationale=f"Because {s}.",
        reasoning_finish_reason="stop",
        answer_prompt="...\nTherefore, the answer is",
        answer_text=" yes.",
        finish_reason="stop",
        temperature=temperature,
        seed=-1,
        prompt_tokens=12,
        completion_tokens=7,
        timestamp=1763770000.123456,
    )
    base.update(kw)
    return TeacherRecord(**base)
