"""The teacher backend interface: one question in, cache records out, and the report of a run.

Every teacher (an OpenAI-compatible server, the Batch API, the offline reference
teacher) produces `TeacherRecord`s through this interface so that
`teacher.run.run_teach` drives them all the same way; every kind of run ends in a `TeachReport`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from ftcot_jax import prompts
from ftcot_jax.teacher.pricing import format_cost
from ftcot_jax.teacher.records import TeacherRecord


@dataclass(frozen=True)
class TeachItem:
    task: str
    split: str
    sample_index: int
    question: str
    gold_answer: str


def zs_cot_record(
    item: TeachItem,
    completion_index: int,
    *,
    teacher: Backend,
    rationale: str,
    answer_text: str,
    temperature: float,
    protocol: str | None = None,
    reasoning_finish_reason: str = "stop",
    finish_reason: str = "stop",
    seed: int = -1,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> TeacherRecord:
    """The cache record of one two-step Zero-shot-CoT answer: the step-1 prompt, the rationale, the step-2
    prompt built from them and the answer text, stamped with the teacher's identity and the time."""
    step1 = prompts.zs_cot_step1_prompt(item.question)
    return TeacherRecord(
        task=item.task,
        split=item.split,
        sample_index=item.sample_index,
        completion_index=completion_index,
        teacher_model=teacher.model,
        endpoint=teacher.endpoint,
        protocol=protocol or teacher.protocol,
        question=item.question,
        gold_answer=item.gold_answer,
        reasoning_prompt=step1,
        rationale=rationale,
        reasoning_finish_reason=reasoning_finish_reason,
        answer_prompt=prompts.zs_cot_step2_prompt(step1, rationale),
        answer_text=answer_text,
        finish_reason=finish_reason,
        temperature=float(temperature),
        seed=seed,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        timestamp=time.time(),
    )


class TeacherError(Exception):
    """A teacher request failed after the backend's own retries (message never carries the API key)."""


class Backend(Protocol):
    model: str
    endpoint: str
    protocol: str

    async def teach(self, item: TeachItem, completion_indices: list[int], temperature: float) -> list[TeacherRecord]:
        """One record per completion index it could produce (may be fewer; the caller asks
        again for the rest). Raises TeacherError on failure after its own retries."""
        ...


@dataclass
class TeachReport:
    """What one teach run (live or Batch API) did; `summary()` is the text `ftcot teach` prints."""

    items: int = 0  # questions selected
    pairs: int = 0  # (sample, completion) pairs selected
    cached: int = 0  # pairs already in the cache before this run
    answered: int = 0  # pairs answered and appended by this run
    failed: int = 0  # pairs that failed this run (in the cache's failed list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None  # USD; None = unknown price
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # first few failure messages

    def summary(self) -> str:
        rate = self.answered / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"questions {self.items}, samples {self.pairs}: {self.cached} already cached, "
            f"{self.answered} answered, {self.failed} failed ({self.seconds:.1f}s, {rate:.2f} samples/s)",
            f"tokens: {self.prompt_tokens} prompt + {self.completion_tokens} completion; "
            f"estimated cost {format_cost(self.cost)}",
        ]
        if self.failed:
            lines.append("failed samples are kept in the cache's failed list and retried by the next run:")
            lines += [f"  {e}" for e in self.errors]
        return "\n".join(lines)
