"""`ftcot teach` orchestration, the same for every Backend (OpenAI-compatible, reference).

For each question it asks the backend for the (sample, completion) pairs that are not
in the cache yet, appends every record the moment it arrives (the cache flushes each
append), and records pairs that still fail as failed (retried on the next run, never
dropped). Workers are bounded by `concurrency`; a fatal backend error (bad key,
unknown model) stops the run instead of failing every item the same way.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ftcot_jax.teacher.backend import Backend, TeachItem, TeacherError

SPLIT_CHOICES = ("train", "test", "all")


def default_split(temperature: float) -> str:
    """The reference ran the greedy teacher on train+test and diverse reasoning (T>0) on train only (spec §2.2)."""
    return "all" if temperature == 0 else "train"


def select_items(task_name: str, split: str, *, limit: int | None = None) -> list[TeachItem]:
    """The questions of `split` ("train" | "test" | "all"), in split order, at most `limit` of them."""
    from ftcot_jax.tasks import load_task

    if split not in SPLIT_CHOICES:
        raise ValueError(f"unknown split {split!r}; expected one of: {', '.join(SPLIT_CHOICES)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    task = load_task(task_name)
    items = []
    for part in ("train", "test") if split == "all" else (split,):
        for ex in task.split(part):
            items.append(TeachItem(task_name, part, ex.sample_index, ex.question, ex.answer))
            if limit is not None and len(items) >= limit:
                return items
    return items


@dataclass
class TeachReport:
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
        from ftcot_jax.teacher.pricing import format_cost

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
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="sample", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def update(self, report: TeachReport, n: int = 0) -> None:
        if self.bar is None:
            return
        from ftcot_jax.teacher.pricing import format_cost

        pt, ct = _tokens(self.backend, report)
        self.bar.set_postfix_str(
            f"done={report.answered} failed={report.failed} in-flight={self.inflight} "
            f"tok={pt + ct} cost={format_cost(self.cost_fn(pt, ct))}",
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
    cost_fn: Callable[[int, int], float | None] | None = None,
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
    """Synchronous entry point (`ftcot teach`); see run_teach_async for the arguments."""
    return asyncio.run(run_teach_async(backend, cache, items, **kwargs))


# --- `ftcot teach` (the CLI block in cli.py parses; this runs) --------------------------------------

DEFAULT_CACHE_DIR = "teacher_cache"  # relative to the working directory; $FTCOT_TEACHER_CACHE overrides


def default_cache_dir() -> str:
    import os

    return os.environ.get("FTCOT_TEACHER_CACHE") or DEFAULT_CACHE_DIR


def make_backend(args):
    """The Backend for `--model`: "reference" is the offline non-LLM teacher, anything else a model
    name on an OpenAI-compatible server."""
    import os

    if args.model == "reference":
        from ftcot_jax.teacher.reference import ReferenceBackend

        return ReferenceBackend()
    from ftcot_jax.teacher.openai_backend import OpenAIBackend, RetryPolicy

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    return OpenAIBackend(
        args.model, protocol=args.protocol, base_url=args.base_url, api_key=api_key,
        max_tokens=args.max_tokens, stop=tuple(s for s in args.stop if s), concurrency=args.concurrency,
        timeout=args.timeout, retry=RetryPolicy(max_attempts=args.max_attempts), seed=args.seed,
    )


def teach_command(args) -> int:
    from ftcot_jax.teacher import pricing
    from ftcot_jax.teacher.cache import TeacherCache

    split = args.split or default_split(args.temperature)
    items = select_items(args.task, split, limit=args.limit)
    backend = make_backend(args)
    table = pricing.load_prices(args.prices) if args.prices else None
    free = backend.protocol == "reference"  # a program, not a priced model

    def cost_fn(pt: int, ct: int) -> float | None:
        return 0.0 if free else pricing.estimate_cost(backend.model, pt, ct, batch=args.batch, table=table)

    root = args.cache_dir or default_cache_dir()
    with TeacherCache(root, task=args.task, teacher_model=backend.model, temperature=args.temperature) as cache:
        print(
            f"teach {args.task} ({split}, {len(items)} questions x {args.samples} samples, T={args.temperature:g}) "
            f"with {backend.model} [{backend.protocol}{', batch' if args.batch else ''}] at {backend.endpoint}"
            f" -> {cache.path}",
            file=sys.stderr,
        )
        try:
            report = _teach(args, backend, cache, items, cost_fn)
        except TeacherError as e:  # fatal (bad key, unknown model) or a batch still pending
            raise ValueError(f"teacher: {e} (answers so far are in {cache.path})") from None
        except KeyboardInterrupt:
            print(f"\ninterrupted: answers so far are in {cache.path}; rerun the same command to resume",
                  file=sys.stderr)
            return 130
        print(report.summary())
        if report.cost is None and not free:
            print(f"(no price for {backend.model!r} in the table: pass --prices FILE for a cost estimate)")
    return 1 if report.failed else 0


def _teach(args, backend, cache, items, cost_fn) -> TeachReport:
    if not args.batch:
        return run_teach(
            backend, cache, items, samples=args.samples, temperature=args.temperature,
            concurrency=args.concurrency, progress=not args.no_progress, cost_fn=cost_fn,
        )
    if args.model == "reference":
        raise ValueError("--batch needs an OpenAI Batch API endpoint; the reference teacher has none")
    from ftcot_jax.teacher.batch import BatchOptions, run_batch

    report = run_batch(
        backend, cache, items, samples=args.samples, temperature=args.temperature,
        state_dir=cache.path / "batch",
        options=BatchOptions(poll_interval=args.poll_interval, max_wait=args.max_wait, progress=not args.no_progress),
    )
    report.cost = cost_fn(report.prompt_tokens, report.completion_tokens)
    return report
