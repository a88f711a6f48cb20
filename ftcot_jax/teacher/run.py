"""Teach a task: select the questions, build the backend, run it into the cache (the same for every Backend).

For each question it asks the backend for the (sample, completion) pairs that are not
in the cache yet, appends every record the moment it arrives (the cache flushes each
append), and records pairs that still fail as failed (retried on the next run, never
dropped). Workers are bounded by `concurrency`; a fatal backend error (bad key,
unknown model) stops the run instead of failing every item the same way. `teach` picks
live requests or the OpenAI Batch API (teacher/batch.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from collections.abc import Callable

from tqdm import tqdm

from ftcot_jax.tasks import load_task
from ftcot_jax.teacher import pricing
from ftcot_jax.teacher.backend import Backend, TeacherError, TeachItem, TeachReport
from ftcot_jax.teacher.batch import BatchOptions, run_batch
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.openai_backend import OpenAIBackend, RetryPolicy
from ftcot_jax.teacher.reference import ReferenceBackend

SPLIT_CHOICES = ("train", "test", "all")

CostFn = Callable[[int, int], float | None]  # (prompt tokens, completion tokens) -> USD, None = unknown


def default_split(temperature: float) -> str:
    """The reference ran the greedy teacher on train+test and diverse reasoning (T>0) on train only
    (the reference's notebooks/old/All Experiments.ipynb)."""
    return "all" if temperature == 0 else "train"


def select_items(
    task_name: str, split: str, *, limit: int | None = None, split_name: str = "default"
) -> list[TeachItem]:
    """The questions of `split` ("train" | "test" | "all") of the split file `split_name`, in split order, at
    most `limit` of them."""
    if split not in SPLIT_CHOICES:
        raise ValueError(f"unknown split {split!r}; expected one of: {', '.join(SPLIT_CHOICES)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    task = load_task(task_name)
    items = []
    for part in ("train", "test") if split == "all" else (split,):
        for ex in task.split(part, split_name):
            items.append(TeachItem(task_name, part, ex.sample_index, ex.question, ex.answer))
            if limit is not None and len(items) >= limit:
                return items
    return items


def _tokens(backend: Backend, report: TeachReport) -> tuple[int, int]:
    usage = getattr(backend, "usage", None)  # billed usage incl. requests whose sibling step failed
    if usage is not None:
        return usage.prompt_tokens, usage.completion_tokens
    return report.prompt_tokens, report.completion_tokens


class _Progress:
    def __init__(self, total: int, enabled: bool, backend: Backend, cost_fn):
        self.backend, self.cost_fn = backend, cost_fn
        self.inflight = 0
        self.bar = None
        if enabled:
            self.bar = tqdm(total=total, unit="sample", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def update(self, report: TeachReport, n: int = 0) -> None:
        if self.bar is None:
            return
        pt, ct = _tokens(self.backend, report)
        self.bar.set_postfix_str(
            f"done={report.answered} failed={report.failed} in-flight={self.inflight} "
            f"tok={pt + ct} cost={pricing.format_cost(self.cost_fn(pt, ct))}",
            refresh=False,
        )
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def run_teach_async(
    backend: Backend,
    cache,
    items: list[TeachItem],
    *,
    samples: int = 1,
    temperature: float = 0.0,
    concurrency: int = 8,
    rounds: int = 3,
    progress: bool = True,
    cost_fn: CostFn | None = None,
    max_failed_in_a_row: int | None = None,
) -> TeachReport:
    """Teach `items` (D=`samples` each) into `cache`. After `max_failed_in_a_row` questions failed
    in a row (default max(10, 2 x concurrency)) the run stops with TeacherError: a dead server or a
    wrong URL should not cost hours of retries (everything answered so far stays cached)."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    cost_fn = cost_fn or (lambda pt, ct: None)
    limit = max_failed_in_a_row or max(10, 2 * concurrency)
    streak = [0]  # questions failed in a row
    t0 = time.perf_counter()
    done = cache.done_keys()
    report = TeachReport(items=len(items), pairs=len(items) * samples)
    queue: list[tuple[TeachItem, list[int]]] = []
    seen: set[int] = set()
    for it in items:
        if it.sample_index in seen:
            raise ValueError(f"sample_index {it.sample_index} selected twice")
        seen.add(it.sample_index)
        missing = [c for c in range(samples) if (it.sample_index, c) not in done]
        report.cached += samples - len(missing)
        if missing:
            queue.append((it, missing))
    queue.reverse()  # pop() from the end keeps split order
    bar = _Progress(sum(len(m) for _, m in queue), progress, backend, cost_fn)

    def fail(item: TeachItem, indices: list[int], message: str) -> None:
        for c in indices:
            cache.mark_failed(item.sample_index, c, message)
        report.failed += len(indices)
        if len(report.errors) < 5:
            report.errors.append(f"{item.task}#{item.sample_index} {indices}: {message}")
        bar.update(report, len(indices))

    async def teach_one(item: TeachItem, missing: list[int]) -> None:
        remaining = list(missing)
        message = "the teacher returned no record for these completions"
        for _ in range(rounds):  # a backend may return fewer records than asked: ask again
            try:
                records = await backend.teach(item, remaining, temperature)
            except TeacherError as e:
                message = str(e)
                if getattr(e, "fatal", False):
                    fail(item, remaining, message)
                    raise
                break
            produced = []
            for rec in records:
                c = rec.completion_index
                if rec.sample_index != item.sample_index or rec.task != item.task or c not in remaining:
                    raise ValueError(
                        f"backend {backend.model!r} returned a record for {rec.task}#{rec.sample_index}/{c}, "
                        f"asked for {item.task}#{item.sample_index}/{remaining}"
                    )
                cache.append(rec)  # written and flushed now: a crash loses at most in-flight items
                remaining.remove(c)
                produced.append(c)
                report.answered += 1
                report.prompt_tokens += rec.prompt_tokens
                report.completion_tokens += rec.completion_tokens
            bar.update(report, len(produced))
            if not remaining or not produced:
                break
        if remaining:
            fail(item, remaining, message)
        if len(remaining) == len(missing):
            streak[0] += 1
            if streak[0] >= limit:
                raise TeacherError(f"stopped: {streak[0]} questions failed in a row; last error: {message}")
        else:
            streak[0] = 0

    async def worker() -> None:
        while queue:
            item, missing = queue.pop()
            bar.inflight += 1
            try:
                await teach_one(item, missing)
            finally:
                bar.inflight -= 1

    try:
        workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(queue)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
    finally:
        bar.close()
        aclose = getattr(backend, "aclose", None)
        if aclose is not None:
            await aclose()
        report.seconds = time.perf_counter() - t0
        report.prompt_tokens, report.completion_tokens = _tokens(backend, report)
        report.cost = cost_fn(report.prompt_tokens, report.completion_tokens)
    return report


def run_teach(backend: Backend, cache, items: list[TeachItem], **kwargs) -> TeachReport:
    """Synchronous entry point; see run_teach_async for the arguments."""
    return asyncio.run(run_teach_async(backend, cache, items, **kwargs))


def make_backend(
    model: str,
    *,
    protocol: str = "completions",
    base_url: str | None = None,
    api_key_env: str | None = None,
    max_tokens: int = 128,
    stop: tuple[str, ...] | list[str] = ("END",),
    concurrency: int = 8,
    timeout: float = 60.0,
    max_attempts: int = 8,
    seed: int | None = None,
) -> Backend:
    """The Backend for `model`: "reference" is the offline non-LLM teacher (the other arguments do not
    apply), anything else a model name on an OpenAI-compatible server. `api_key_env` names the environment
    variable holding the key (default OPENAI_API_KEY); empty stop strings are dropped ("" = no stop)."""
    if model == "reference":
        return ReferenceBackend()
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(f"environment variable {api_key_env} is not set (it should hold the teacher's API key)")
    return OpenAIBackend(
        model,
        protocol=protocol,
        base_url=base_url,
        api_key=api_key,
        max_tokens=max_tokens,
        stop=tuple(s for s in stop if s),
        concurrency=concurrency,
        timeout=timeout,
        retry=RetryPolicy(max_attempts=max_attempts),
        seed=seed,
    )


def cost_estimator(backend: Backend, *, batch: bool = False, table: dict | None = None) -> CostFn:
    """Estimated USD for a token count: 0 for the reference teacher (a program), None for an unpriced model."""
    if backend.protocol == "reference":
        return lambda pt, ct: 0.0
    return lambda pt, ct: pricing.estimate_cost(backend.model, pt, ct, batch=batch, table=table)


def teach(
    backend: Backend,
    cache: TeacherCache,
    items: list[TeachItem],
    *,
    samples: int = 1,
    temperature: float = 0.0,
    concurrency: int = 8,
    batch: BatchOptions | None = None,
    progress: bool = True,
    cost_fn: CostFn | None = None,
) -> TeachReport:
    """Teach `items` into `cache` with live requests, or through the OpenAI Batch API when `batch` options
    are given (state kept in <cache>/batch so a rerun resumes the same batch). Raises TeacherError when the
    run stops early (fatal backend error, a batch still pending)."""
    if batch is None:
        return run_teach(
            backend,
            cache,
            items,
            samples=samples,
            temperature=temperature,
            concurrency=concurrency,
            progress=progress,
            cost_fn=cost_fn,
        )
    if not isinstance(backend, OpenAIBackend):
        raise ValueError(f"batch mode needs an OpenAI Batch API endpoint; the {backend.model} teacher has none")
    report = run_batch(
        backend,
        cache,
        items,
        samples=samples,
        temperature=temperature,
        state_dir=cache.path / "batch",
        options=dataclasses.replace(batch, progress=progress),
    )
    report.cost = (cost_fn or (lambda pt, ct: None))(report.prompt_tokens, report.completion_tokens)
    return report
