"""The teacher backend interface: one question in, cache records out.

Every teacher (an OpenAI-compatible server, the Batch API, the offline reference
teacher) produces `TeacherRecord`s through this interface so that
`teacher.run.run_teach` drives them all the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # cache.py (records helper) imports nothing from here; avoid a cycle at import time
    from ftcot_jax.teacher.cache import TeacherRecord


@dataclass(frozen=True)
class TeachItem:
    task: str
    split: str
    sample_index: int
    question: str
    gold_answer: str


class TeacherError(Exception):
    """A teacher request failed after the backend's own retries (message never carries the API key)."""


class Backend(Protocol):
    model: str
    endpoint: str
    protocol: str

    async def teach(
        self, item: TeachItem, completion_indices: list[int], temperature: float
    ) -> list[TeacherRecord]:
        """One record per completion index it could produce (may be fewer; the caller asks
        again for the rest). Raises TeacherError on failure after its own retries."""
        ...
