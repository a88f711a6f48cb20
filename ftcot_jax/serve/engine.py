"""The batching worker: owns the model and tokenizer; one thread collects queued requests into batches and
decodes each batch with one `decode.generate` call.

Requests that arrive within `batch_window_s` of each other (up to `max_batch` rows) and share their sampling
setup are decoded together, always padded to `max_batch` rows so the jitted shapes do not depend on how many
requests happened to arrive.

Streaming: a job submitted with `on_delta` gets each row's text as it is decoded, every `stream_every` steps
(`decode.generate`'s `on_chunk`, `decode.stream_text`): `Delta`s whose texts add up to the row's final text,
the last one carrying its `RowResult`. A batch without streaming rows decodes without returning to the host.
"""

from __future__ import annotations

import copy
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import jax

from ftcot_jax import decode
from ftcot_jax.serve.chat import render_chat
from ftcot_jax.serve.errors import APIError


@dataclass(frozen=True)
class Params:
    """One request's decoding parameters. Rows of different requests share a decoder call when their
    temperature, top_p, seed and generation-length bucket agree (see Engine._run)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None


@dataclass(frozen=True)
class RowResult:
    text: str
    completion_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class Delta:
    """Streamed text of one row of a job: `text` follows the row's earlier deltas; `result` is set on its last."""

    row: int
    text: str
    result: RowResult | None = None


@dataclass
class _Job:
    prompts: list[str]  # one entry per row (a prompt repeated n times for n samples)
    params: Params
    future: Future
    on_delta: Callable[[Delta], None] | None = None  # streaming: called from the worker thread
    results: list[RowResult | None] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)  # streamed text per row
    remaining: int = 0


@dataclass
class Stats:
    requests: int = 0  # jobs completed by the worker
    rows: int = 0  # sequences decoded
    batches: int = 0  # decode.generate calls
    max_batch_rows: int = 0  # largest number of real rows in one call
    decode_seconds: float = 0.0


class Engine:
    """Owns the model; `submit` queues rows, one worker thread batches and decodes them."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch: int = 8,
        batch_window_s: float = 0.01,
        max_queue: int = 1024,
        stream_every: int = decode.CHECK_EVERY,
        generate_fn: Callable | None = None,
    ):
        generate_fn = generate_fn or decode.generate
        self._bucket, self._min_new_bucket = decode.bucket, decode.MIN_NEW_BUCKET
        self.model, self.tokenizer = model, tokenizer
        self._http_tokenizer, self._tok_lock = copy.deepcopy(tokenizer), threading.Lock()
        self.max_batch, self.batch_window_s, self.stream_every = max_batch, batch_window_s, stream_every
        self._generate = generate_fn
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self.stats = Stats()
        self._sample_counter = 0
        self._thread = threading.Thread(target=self._loop, name="ftcot-serve-engine", daemon=True)
        self._thread.start()

    # -- tokenizer helpers for the HTTP threads. A fast tokenizer must not be called from two threads at
    # once (transformers reconfigures the shared Rust object on each call: "RuntimeError: Already
    # borrowed"), so the HTTP threads share a private copy under a lock; the worker owns the original.

    def count_tokens(self, text: str) -> int:
        with self._tok_lock:
            return len(self._http_tokenizer(text)["input_ids"])

    def render_chat(self, messages: list[dict]) -> str:
        with self._tok_lock:
            return render_chat(self._http_tokenizer, messages)

    # -- batching --

    def submit(self, prompts: list[str], params: Params, on_delta: Callable[[Delta], None] | None = None) -> Future:
        """Queue one request's rows; the future resolves to their `RowResult`s. Cancelling it drops the request:
        it is skipped if not yet decoding, and in a streaming batch its rows end at the next chunk.
        `on_delta`: stream the rows' text (see `Delta`)."""
        job = _Job(prompts=list(prompts), params=params, future=Future(), on_delta=on_delta)
        job.results, job.sent = [None] * len(prompts), [""] * len(prompts)
        job.remaining = len(prompts)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise APIError(
                503,
                "The server is overloaded (request queue full); retry later.",
                type="server_error",
                code="overloaded",
            ) from None
        return job.future

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, rows = [job], len(job.prompts)
            deadline = time.monotonic() + self.batch_window_s
            stop = False
            while rows < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                rows += len(nxt.prompts)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        # Rows share a decoder call when they share the sampling setup and the generation-length bucket
        # (decode.generate compiles per bucket; max_new_tokens itself is a traced value). Each row keeps its
        # own max_tokens and stop strings: a row stops there, and the call ends when every row has.
        groups: dict[tuple, list[tuple[_Job, int]]] = {}
        for job in jobs:
            p = job.params
            key = (self._bucket(p.max_new_tokens, self._min_new_bucket), p.temperature, p.top_p, p.seed)
            for i in range(len(job.prompts)):
                groups.setdefault(key, []).append((job, i))
        for rows in groups.values():
            for start in range(0, len(rows), self.max_batch):
                self._decode(rows[start : start + self.max_batch])

    def _decode(self, rows: list[tuple[_Job, int]]) -> None:
        live = [(j, i) for j, i in rows if not j.future.done()]
        if not live:
            return
        params = live[0][0].params
        t0 = time.perf_counter()
        streaming = {}
        if any(j.on_delta is not None for j, _ in live):
            streaming = dict(on_chunk=lambda partials: self._stream(live, partials), check_every=self.stream_every)
        try:
            prompts = [j.prompts[i] for j, i in live]
            # fill_batch: every call has max_batch rows (filler rows are never decoded past the first step),
            # so the decoder compiles one batch shape, not one per power of two below it.
            gens = self._generate(
                self.model,
                self.tokenizer,
                prompts,
                max_new_tokens=[j.params.max_new_tokens for j, _ in live],
                batch_size=self.max_batch,
                stop=[list(j.params.stop) for j, _ in live],
                temperature=params.temperature,
                top_k=0,
                top_p=params.top_p,
                rng=self._rng(params),
                fill_batch=True,
                **streaming,
            )
            if len(gens) != len(prompts):
                raise RuntimeError(f"decode.generate returned {len(gens)} generations for {len(prompts)} prompts")
            results = [_result(g) for g in gens]
        except Exception as e:  # noqa: BLE001 -- the worker must survive anything a batch throws
            for j, _ in live:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        dt = time.perf_counter() - t0
        with self._lock:
            self.stats.batches += 1
            self.stats.rows += len(live)
            self.stats.max_batch_rows = max(self.stats.max_batch_rows, len(live))
            self.stats.decode_seconds += dt
        for (job, i), r in zip(live, results, strict=True):
            if job.on_delta is not None and job.results[i] is None:
                self._send(job, i, r.text, r)
            job.results[i] = r
            job.remaining -= 1
            if job.remaining == 0 and job.future.set_running_or_notify_cancel():
                with self._lock:
                    self.stats.requests += 1
                job.future.set_result(list(job.results))

    def _stream(self, live: list[tuple[_Job, int]], partials: list[decode.Partial]) -> list[int]:
        """`decode.generate`'s on_chunk: the streaming rows' new text out; rows of dropped requests end."""
        dropped = []
        for p in partials:
            job, i = live[p.index]
            if job.future.cancelled():
                dropped.append(p.index)
            elif job.on_delta is None:
                continue
            elif p.final is not None:
                job.results[i] = _result(p.final)
                self._send(job, i, p.final.text, job.results[i])
            else:
                self._send(job, i, decode.stream_text(self.tokenizer, p.token_ids, list(job.params.stop)))
        return dropped

    def _send(self, job: _Job, i: int, text: str, result: RowResult | None = None) -> None:
        """Stream row i's text up to `text` (which extends what was sent); `result` ends the row."""
        new = text[len(job.sent[i]) :] if text.startswith(job.sent[i]) else ""
        if new or result is not None:
            job.sent[i] += new
            job.on_delta(Delta(row=i, text=new, result=result))

    def _rng(self, params: Params):
        if params.temperature == 0.0:
            return None
        if params.seed is not None:
            seed = params.seed % (2**32)
        else:
            self._sample_counter += 1
            seed = int.from_bytes(os.urandom(4), "little") ^ self._sample_counter
        return jax.random.key(seed)


def _result(g: decode.Generation) -> RowResult:
    return RowResult(text=g.text, completion_tokens=len(g.token_ids), finish_reason=g.finish_reason)
