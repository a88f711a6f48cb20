"""What a run will ask its teacher, before anything is asked: the questions of each teach stage, how many
of their answers are already cached, and the requests and estimated cost of the rest.

The teach stages ask only for what the run uses: the train questions curation keeps (the first
`curate.max_train_questions` when set), plus the test split only when `teacher.split` asks for it (the
teacher's own test accuracy, as the paper reports it).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ftcot_jax import prompts
from ftcot_jax.config import RunConfig
from ftcot_jax.paths import as_path
from ftcot_jax.pipeline.curate import methods_of
from ftcot_jax.teacher.backend import TeachItem
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.pricing import estimate_cost
from ftcot_jax.teacher.run import select_items

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text under BPE tokenizers; an estimate only
STEPS_PER_SAMPLE = 2  # Zero-shot-CoT: one request for the rationale, one for the answer


@dataclasses.dataclass(frozen=True)
class TeachPlan:
    """One teach stage: `questions` x `samples` (question, completion) pairs, two requests each."""

    task: str
    kind: str  # "greedy" | "diverse"
    temperature: float
    questions: int
    test_questions: int  # of `questions`: asked only for the teacher's own test accuracy
    samples: int
    cached: int  # pairs already in the cache: never asked again
    prompt_tokens: int  # estimated, for the pairs still to ask
    completion_tokens: int  # at most: max_tokens per request
    cost: float | None  # USD, None when the model has no price
    source: str = "endpoint"  # endpoint | program (the reference teacher) | import (teacher.import_from)

    @property
    def pairs(self) -> int:
        return self.questions * self.samples

    @property
    def requests(self) -> int:
        """Requests to the teacher's endpoint: none for a program or an imported file."""
        return (self.pairs - self.cached) * STEPS_PER_SAMPLE if self.source == "endpoint" else 0


def cache_root(cfg: RunConfig) -> Path:
    """The run's teacher cache: teacher.cache_dir (shared between runs), else <run_dir>/teacher_cache."""
    return as_path(cfg.teacher.cache_dir) if cfg.teacher.cache_dir else as_path(cfg.run_dir) / "teacher_cache"


def teach_items(cfg: RunConfig, task: str, kind: str) -> list[TeachItem]:
    """The questions a teach stage asks (kind "greedy": teacher.split; "diverse": the train questions)."""
    n = cfg.curate.max_train_questions or None
    split = "auto" if kind == "diverse" else cfg.teacher.split
    if split == "auto":
        return select_items(task, "train", limit=n, split_name=cfg.split_name)
    return select_items(task, split, split_name=cfg.split_name)


def stage_kinds(cfg: RunConfig) -> list[str]:
    """The teach stages a run has: "greedy" for ft_cot, "diverse" for diverse (ft needs no teacher)."""
    kinds = {m.teacher_kind for m in methods_of(cfg)}
    return [k for k in ("greedy", "diverse") if ("ft_cot" if k == "greedy" else k) in kinds]


def _tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def plan(cfg: RunConfig, *, prices: dict | None = None, batch: bool = False) -> list[TeachPlan]:
    """Every teach stage of `cfg`, with what its cache holds already and what the rest will cost (`prices`: a
    price table as `teacher.pricing.load_prices` returns; None = the built-in one)."""
    root = cache_root(cfg)
    t = cfg.teacher
    out = []
    for task in cfg.tasks:
        for kind in stage_kinds(cfg):
            diverse = kind == "diverse"
            temperature = t.diverse_temperature if diverse else t.temperature
            samples = max(cfg.curate.diverse_samples) if diverse else 1
            items = teach_items(cfg, task, kind)
            cache = TeacherCache(root, task=task, teacher_model=t.model, temperature=temperature)
            done = cache.done_keys()
            prompt_tokens = completion_tokens = cached = 0
            for it in items:
                step1 = _tokens(prompts.zs_cot_step1_prompt(it.question))
                for c in range(samples):
                    if (it.sample_index, c) in done:
                        cached += 1
                        continue
                    # step 2's prompt is step 1's plus the rationale (at most max_tokens) and the trigger
                    prompt_tokens += step1 + step1 + t.max_tokens + _tokens(prompts.ANSWER_TRIGGER)
                    completion_tokens += STEPS_PER_SAMPLE * t.max_tokens
            source = "import" if t.import_from else "program" if t.model == "reference" else "endpoint"
            free = source != "endpoint"
            cost = 0.0 if free else estimate_cost(t.model, prompt_tokens, completion_tokens, batch=batch, table=prices)
            out.append(
                TeachPlan(
                    task,
                    kind,
                    temperature,
                    len(items),
                    sum(it.split == "test" for it in items),
                    samples,
                    cached,
                    0 if free else prompt_tokens,
                    0 if free else completion_tokens,
                    cost,
                    source,
                )
            )
    return out
