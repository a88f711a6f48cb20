"""OpenAI Batch API mode (`ftcot teach --batch`): half the price, results within 24 h.

Step 2 (answer) needs step 1's rationales, so a run is two kinds of batch:
  reasoning  one request per question with n = missing samples (custom_id "r0-<sample>");
             if the server returned fewer choices, a second reasoning batch asks for the
             rest with one request per sample (custom_id "r1-<sample>-<completion>");
  answer     one greedy request per rationale (custom_id "a-<sample>-<completion>").
Each batch: write the JSONL, upload (files.create purpose="batch"), batches.create,
poll, download the output and error files, ingest. Every id the server hands out is
saved at once in `<state_dir>/state.json` (atomic replace), so a crash or Ctrl-C
resumes polling the same batch on the next run instead of paying again. Records land
in the same TeacherCache as live calls, with protocol "batch".
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import sys
import time
from dataclasses import dataclass

import openai
from tqdm import tqdm

from ftcot_jax.files import write_bytes_atomic, write_json_atomic
from ftcot_jax.paths import as_path
from ftcot_jax.teacher.backend import TeacherError, TeachItem, TeachReport, zs_cot_record
from ftcot_jax.teacher.openai_backend import (
    OpenAIBackend,
    parse_response,
    request_body,
    step1_input,
    step2_input,
)

TERMINAL = ("completed", "failed", "expired", "cancelled")
STATE_VERSION = 1


@dataclass(frozen=True)
class BatchOptions:
    poll_interval: float = 30.0  # seconds between batches.retrieve calls
    max_wait: float | None = None  # give up polling after this long (state is kept: rerun resumes)
    completion_window: str = "24h"
    progress: bool = True


class BatchPending(TeacherError):
    """Polling stopped (max_wait) while a batch is still running; rerun to resume."""


class BatchRun:
    def __init__(self, backend: OpenAIBackend, cache, state_dir, options: BatchOptions = BatchOptions()):
        self.b, self.cache, self.opt = backend, cache, options
        self.dir = as_path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "state.json"
        self.url = "/v1/completions" if backend.protocol == "completions" else "/v1/chat/completions"

    # -- state -------------------------------------------------------------------------------------
    def _load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(
                f"batch state {self.path} is not valid JSON ({e}); delete it only if no batch is running"
            ) from None
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"batch state {self.path}: version {state.get('version')!r}, expected {STATE_VERSION}")
        return state

    def _save(self, state: dict) -> None:
        write_json_atomic(self.path, state, indent=1, sort_keys=True)

    # -- server calls with our retries ------------------------------------------------------------
    async def _call(self, what: str, fn):
        last = ""
        for attempt in range(self.b.retry.max_attempts):
            try:
                return await fn()
            except openai.APIStatusError as e:
                if e.status_code != 429 and e.status_code < 500:
                    raise TeacherError(
                        self.b.redact(f"batch {what}: HTTP {e.status_code}: {e.response.text[:300]}")
                    ) from None
                last = f"HTTP {e.status_code}"
            except openai.APIConnectionError as e:
                last = type(e).__name__
            await asyncio.sleep(self.b._backoff(attempt))
        raise TeacherError(self.b.redact(f"batch {what}: failed after {self.b.retry.max_attempts} attempts ({last})"))

    async def _submit(self, state: dict, slot: dict, lines: list[dict], name: str) -> None:
        """Upload and create one batch, saving each id as soon as it exists."""
        data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()
        (self.dir / f"{self.run_id}-{name}.input.jsonl").write_bytes(data)  # what was sent, for audit
        if not slot.get("input_file_id"):
            f = await self._call(
                "upload",
                lambda: self.b.client.files.create(
                    file=(f"ftcot_{name}.jsonl", data, "application/jsonl"), purpose="batch"
                ),
            )
            slot["input_file_id"] = f.id
            self._save(state)
        batch = await self._call(
            "create",
            lambda: self.b.client.batches.create(
                input_file_id=slot["input_file_id"],
                endpoint=self.url,
                completion_window=self.opt.completion_window,
                metadata={"ftcot": name},
            ),
        )
        slot["batch_id"] = batch.id
        slot["status"] = batch.status
        self._save(state)

    async def _wait(self, state: dict, slot: dict, name: str) -> None:
        t0 = time.monotonic()
        bar = None
        if self.opt.progress:
            bar = tqdm(total=slot.get("requests", 0), desc=f"batch {name}", unit="req", file=sys.stderr)
        try:
            while True:
                batch = await self._call("retrieve", lambda: self.b.client.batches.retrieve(slot["batch_id"]))
                slot["status"] = batch.status
                counts = getattr(batch, "request_counts", None)
                if bar is not None and counts is not None:
                    bar.n = (counts.completed or 0) + (counts.failed or 0)
                    bar.set_postfix_str(f"status={batch.status}")
                    bar.refresh()
                if batch.status in TERMINAL:
                    slot["output_file_id"] = batch.output_file_id
                    slot["error_file_id"] = batch.error_file_id
                    errs = getattr(batch, "errors", None)
                    data = getattr(errs, "data", None) or []
                    slot["batch_error"] = "; ".join(str(getattr(d, "message", d)) for d in data)[:500]
                    self._save(state)
                    return
                if self.opt.max_wait is not None and time.monotonic() - t0 > self.opt.max_wait:
                    self._save(state)
                    raise BatchPending(
                        f"batch {slot['batch_id']} ({name}) is still {batch.status}; "
                        f"rerun the same command to resume polling (state: {self.path})"
                    )
                await asyncio.sleep(self.opt.poll_interval)
        finally:
            if bar is not None:
                bar.close()

    async def _results(self, slot: dict, name: str) -> tuple[dict[str, dict], dict[str, str]]:
        """custom_id -> response body, and custom_id -> error message (output and error files)."""
        ok, bad = {}, {}
        for key in ("output_file_id", "error_file_id"):
            fid = slot.get(key)
            if not fid:
                continue
            local = self.dir / f"{self.run_id}-{slot['batch_id']}.{key.split('_')[0]}.jsonl"
            if not local.exists():  # downloaded once; a crash after this re-reads the local copy
                content = await self._call("download", lambda fid=fid: self.b.client.files.content(fid))
                write_bytes_atomic(local, content.content)
            for n, line in enumerate(local.read_text().splitlines()):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    cid = row["custom_id"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"batch {name}: {local} line {n + 1} is not a batch result line") from None
                resp = row.get("response") or {}
                status = resp.get("status_code")
                if row.get("error") or status != 200:
                    err = row.get("error") or (resp.get("body") or {}).get("error") or {}
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    bad[cid] = self.b.redact(f"batch {name} request {cid}: HTTP {status}: {msg}")[:400]
                else:
                    ok[cid] = resp.get("body")
        return ok, bad

    # -- the run -----------------------------------------------------------------------------------
    async def run(self, items: list[TeachItem], *, samples: int, temperature: float) -> TeachReport:
        t0 = time.perf_counter()
        report = TeachReport(items=len(items), pairs=len(items) * samples)
        by_index = {it.sample_index: it for it in items}
        done = self.cache.done_keys()
        report.cached = sum((it.sample_index, c) in done for it in items for c in range(samples))
        state = self._load()
        if state is not None:
            want = {"model": self.b.model, "protocol": self.b.protocol, "temperature": temperature, "samples": samples}
            have = {k: state.get(k) for k in want}
            if have != want:
                raise ValueError(
                    f"a batch with other settings {have} is in progress in {self.dir}; rerun with those settings "
                    f"to collect it (or delete {self.path} if you abandon it)"
                )
            for key, it in state["items"].items():  # the pending batch's questions, even if not selected now
                by_index.setdefault(int(key), TeachItem(**it))
        else:
            todo = {it.sample_index: [c for c in range(samples) if (it.sample_index, c) not in done] for it in items}
            todo = {i: m for i, m in todo.items() if m}
            if not todo:
                report.seconds = time.perf_counter() - t0
                return report
            state = {
                "version": STATE_VERSION,
                "run": time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3),
                "model": self.b.model,
                "protocol": self.b.protocol,
                "temperature": temperature,
                "samples": samples,
                "endpoint": self.b.endpoint,
                "items": {str(i): dataclasses.asdict(by_index[i]) for i in todo},
                "pending": {str(i): m for i, m in todo.items()},
                "rationales": {},
                "errors": {},
                "phase": "r0",
                "batches": {},
            }
            self._save(state)
        self.run_id = state["run"]  # prefixes this run's local files (server ids are not ours to trust)
        await self._phases(state, by_index, temperature)
        # Ingest answers (idempotent: pairs already in the cache are skipped).
        done = self.cache.done_keys()
        for key, err in sorted(state["errors"].items()):
            i, c = map(int, key.split("-"))
            if (i, c) not in done:
                self.cache.mark_failed(i, c, err)
                report.failed += 1
                if len(report.errors) < 5:
                    report.errors.append(f"{by_index[i].task}#{i} [{c}]: {err}")
        report.answered = state.get("answered", 0)
        report.prompt_tokens, report.completion_tokens = (
            state.get("prompt_tokens", 0),
            state.get("completion_tokens", 0),
        )
        self.path.replace(self.dir / f"{state['run']}-state.done.json")  # finished: the next run starts anew
        report.seconds = time.perf_counter() - t0
        return report

    def _usage(self, state: dict, body) -> None:
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict):
            state["prompt_tokens"] = state.get("prompt_tokens", 0) + int(usage.get("prompt_tokens") or 0)
            state["completion_tokens"] = state.get("completion_tokens", 0) + int(usage.get("completion_tokens") or 0)

    async def _phases(self, state: dict, by_index: dict[int, TeachItem], temperature: float) -> None:
        b = self.b
        while state["phase"] in ("r0", "r1"):
            name = "reasoning" if state["phase"] == "r0" else "reasoning_rest"
            slot = state["batches"].setdefault(name, {})
            if not slot.get("batch_id"):
                lines = []
                for key, missing in sorted(state["pending"].items(), key=lambda kv: int(kv[0])):
                    it = by_index[int(key)]
                    groups = [missing] if state["phase"] == "r0" else [[c] for c in missing]
                    for group in groups:
                        seed = None if b.seed is None else b.seed + group[0]
                        cid = f"r0-{key}" if state["phase"] == "r0" else f"r1-{key}-{group[0]}"
                        lines.append(
                            {
                                "custom_id": cid,
                                "method": "POST",
                                "url": self.url,
                                "body": request_body(
                                    b.protocol,
                                    b.model,
                                    step1_input(b.protocol, it.question),
                                    max_tokens=b.max_tokens,
                                    temperature=temperature,
                                    n=len(group),
                                    stop=b.stop,
                                    seed=seed,
                                ),
                            }
                        )
                slot["requests"] = len(lines)
                await self._submit(state, slot, lines, name)
            await self._wait(state, slot, name)
            ok, bad = await self._results(slot, name)
            if not ok and not bad and slot.get("batch_error"):
                bad = {"*": f"batch {slot['batch_id']} {slot['status']}: {slot['batch_error']}"}
            short = {}
            for key, missing in state["pending"].items():
                groups = [missing] if state["phase"] == "r0" else [[c] for c in missing]
                for group in groups:
                    cid = f"r0-{key}" if state["phase"] == "r0" else f"r1-{key}-{group[0]}"
                    body = ok.get(cid)
                    if body is None:
                        msg = bad.get(cid) or bad.get("*") or f"batch {slot['status']}: no result for {cid}"
                        state["errors"].update({f"{key}-{c}": msg for c in group})
                        continue
                    try:
                        choices, pt, ct = parse_response(b.protocol, body)
                    except ValueError as e:
                        state["errors"].update({f"{key}-{c}": f"batch {name} {cid}: {e}" for c in group})
                        continue
                    self._usage(state, body)
                    seed = -1 if b.seed is None else b.seed + group[0]
                    k = min(len(choices), len(group))
                    for j, c in enumerate(group[:k]):
                        state["rationales"][f"{key}-{c}"] = {
                            "text": choices[j].text,
                            "finish_reason": choices[j].finish_reason,
                            "seed": seed,
                            "prompt_tokens": pt if j == 0 else 0,
                            "completion_tokens": ct // k + (j < ct % k),
                        }
                    if k < len(group):
                        short[key] = group[k:]
            if state["phase"] == "r0" and short:
                state["pending"], state["phase"] = short, "r1"  # fewer choices than n: one request per sample
            else:
                state["errors"].update(
                    {
                        f"{k}-{c}": "the server returned fewer choices than requested"
                        for k, m in short.items()
                        for c in m
                    }
                )
                state["phase"] = "answer"
            self._save(state)
        if state["phase"] == "answer":
            slot = state["batches"].setdefault("answer", {})
            rats = state["rationales"]
            if rats and not slot.get("batch_id"):
                lines = []
                for key in sorted(rats, key=lambda k: tuple(map(int, k.split("-")))):
                    it = by_index[int(key.split("-")[0])]
                    lines.append(
                        {
                            "custom_id": f"a-{key}",
                            "method": "POST",
                            "url": self.url,
                            "body": request_body(
                                b.protocol,
                                b.model,
                                step2_input(b.protocol, it.question, rats[key]["text"]),
                                max_tokens=b.max_tokens,
                                temperature=0.0,
                                n=1,
                                stop=b.stop,
                                seed=None,
                            ),
                        }
                    )
                slot["requests"] = len(lines)
                await self._submit(state, slot, lines, "answer")
            if rats:
                await self._wait(state, slot, "answer")
                ok, bad = await self._results(slot, "answer")
                self._ingest(state, by_index, ok, bad, slot, temperature)
            state["phase"] = "ingested"
            self._save(state)

    def _ingest(self, state, by_index, ok, bad, slot, temperature) -> None:
        b = self.b
        done = self.cache.done_keys()
        answered = 0
        for key, r in sorted(state["rationales"].items(), key=lambda kv: tuple(map(int, kv[0].split("-")))):
            i, c = map(int, key.split("-"))
            cid = f"a-{key}"
            if cid not in ok:
                state["errors"][key] = bad.get(cid) or f"batch {slot['status']}: no result for {cid}"
                continue
            try:
                (ch, *_), pt, ct = parse_response(b.protocol, ok[cid])
            except ValueError as e:
                state["errors"][key] = f"batch answer {cid}: {e}"
                continue
            self._usage(state, ok[cid])
            state["errors"].pop(key, None)
            if (i, c) in done:
                continue
            self.cache.append(
                zs_cot_record(
                    by_index[i],
                    c,
                    teacher=b,
                    protocol="batch",
                    rationale=r["text"],
                    reasoning_finish_reason=r["finish_reason"],
                    answer_text=ch.text,
                    finish_reason=ch.finish_reason,
                    temperature=temperature,
                    seed=int(r["seed"]),
                    prompt_tokens=r["prompt_tokens"] + pt,
                    completion_tokens=r["completion_tokens"] + ct,
                )
            )
            answered += 1
        state["answered"] = state.get("answered", 0) + answered


def run_batch(
    backend: OpenAIBackend,
    cache,
    items: list[TeachItem],
    *,
    samples: int,
    temperature: float,
    state_dir,
    options: BatchOptions = BatchOptions(),
) -> TeachReport:
    async def go():
        try:
            return await BatchRun(backend, cache, state_dir, options).run(
                items, samples=samples, temperature=temperature
            )
        finally:
            await backend.aclose()

    return asyncio.run(go())
