"""Zero-shot-CoT teacher over any OpenAI-compatible server (official `openai` client, async).

Two steps per question, as in the reference's `src/oai/inference.py`: step 1 samples D rationales at
temperature T, step 2 asks for the answer greedily (T=0) once per rationale.
Protocols (exact messages in docs/teacher.md):
  completions: prompt = zs_cot_step1_prompt(q), then zs_cot_step2_prompt(step1, rationale)
  chat:        [user: step1]  then  [user: step1, assistant: rationale, user: "Therefore, the answer is"]

The openai client's own retries are off (max_retries=0): retries, backoff and
rate-limit handling live here, so they are the only ones and are testable.
The API key is only handed to the client; every message we produce is redacted.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import re
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

import openai

from ftcot_jax import prompts
from ftcot_jax.teacher.backend import TeacherError, TeachItem, zs_cot_record

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_STOP = ("END",)  # the reference passes stop="END" on every teacher call (src/oai/inference.py)
PROTOCOLS = ("completions", "chat")
ANSWER_TRIGGER = "Therefore, the answer is"  # step-2 user turn of the chat protocol
_NO_KEY = "sk-no-key-required"  # local servers need none; the client insists on a string


class TeacherFatalError(TeacherError):
    """Failure that no retry or later item can fix (bad key, unknown model): stop the run."""

    fatal = True


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8  # per HTTP request, first try included
    base_delay: float = 1.0  # backoff: base * 2**attempt, capped, with jitter
    max_delay: float = 60.0
    max_retry_after: float = 600.0  # a server-requested wait longer than this is capped


@dataclass
class Usage:
    """Live counters, read by the progress bar; tokens are what the server billed."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    errors: Counter = field(default_factory=Counter)  # reason -> count, every failed attempt


class _Retryable(Exception):
    def __init__(self, reason: str, message: str, delay: float | None = None):
        super().__init__(message)
        self.reason, self.delay = reason, delay


def public_endpoint(base_url: str) -> str:
    """The base URL as recorded in the cache: no userinfo, query or fragment (keys hide there)."""
    u = urllib.parse.urlsplit(base_url)
    host = u.hostname or ""
    if u.port:
        host = f"{host}:{u.port}"
    return urllib.parse.urlunsplit((u.scheme, host, u.path.rstrip("/"), "", ""))


def parse_duration(value: str | None) -> float | None:
    """Seconds from '20ms', '1s', '6m0s', '1h2m3.5s' (x-ratelimit-reset-*) or a plain number."""
    if value is None:
        return None
    v = value.strip()
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", v)
    if not parts or "".join(a + b for a, b in parts) != v:
        return None
    scale = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(a) * scale[b] for a, b in parts)


def retry_after_seconds(headers) -> float | None:
    """Retry-After (seconds or HTTP date) or retry-after-ms, as seconds; None when absent."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra is None:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.mktime_tz(email.utils.parsedate_tz(ra)) - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def ratelimit_reset_seconds(headers) -> float | None:
    """Wait until the window resets when x-ratelimit-remaining-{requests,tokens} hit 0."""
    waits = []
    for kind in ("requests", "tokens"):
        rem = headers.get(f"x-ratelimit-remaining-{kind}")
        try:
            exhausted = rem is not None and float(rem) <= 0
        except ValueError:
            exhausted = False
        if exhausted:
            w = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if w is not None:
                waits.append(w)
    return max(waits) if waits else None


def request_body(
    protocol: str,
    model: str,
    messages_or_prompt,
    *,
    max_tokens: int,
    temperature: float,
    n: int,
    stop: tuple[str, ...],
    seed: int | None,
) -> dict:
    """The JSON body of one request (shared by live calls and Batch API lines)."""
    body: dict = {"model": model, "temperature": temperature, "n": n}
    if protocol == "completions":
        body["prompt"] = messages_or_prompt
        body["max_tokens"] = max_tokens
    else:
        body["messages"] = messages_or_prompt
        # max_tokens is deprecated (and refused by reasoning models) on chat; llama.cpp and vLLM accept this one.
        body["max_completion_tokens"] = max_tokens
    if stop:
        body["stop"] = list(stop)
    if seed is not None:
        body["seed"] = seed
    return body


def step1_input(protocol: str, question: str):
    p = prompts.zs_cot_step1_prompt(question)
    return p if protocol == "completions" else [{"role": "user", "content": p}]


def step2_input(protocol: str, question: str, rationale: str):
    p1 = prompts.zs_cot_step1_prompt(question)
    if protocol == "completions":
        return prompts.zs_cot_step2_prompt(p1, rationale)
    return [
        {"role": "user", "content": p1},
        {"role": "assistant", "content": rationale},
        {"role": "user", "content": ANSWER_TRIGGER},
    ]


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str


def parse_response(protocol: str, data) -> tuple[list[Choice], int, int]:
    """Choices (in `index` order) and usage from a response body; ValueError names what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"response is {type(data).__name__}, expected a JSON object")
    if "error" in data and data.get("error"):
        raise ValueError(f"response carries an error: {str(data['error'])[:200]}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ValueError("response has no choices")
    out = []
    for pos, c in enumerate(sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)):
        if not isinstance(c, dict):
            raise ValueError(f"choice {pos} is not an object")
        if protocol == "completions":
            text = c.get("text")
        else:
            msg = c.get("message")
            text = msg.get("content") if isinstance(msg, dict) else None
            if text is None and isinstance(msg, dict) and "content" in msg:
                text = ""  # a chat model may return null content (refusal / all tokens spent on reasoning)
        if not isinstance(text, str):
            raise ValueError(f"choice {pos} has no {'text' if protocol == 'completions' else 'message.content'}")
        out.append(Choice(text, str(c.get("finish_reason") or "")))
    usage = data.get("usage") or {}
    pt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    ct = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return out, int(pt or 0), int(ct or 0)


def _split(total: int, k: int) -> list[int]:
    """Spread one request's token count over its k choices so per-record counts add up to the bill."""
    q, r = divmod(total, k)
    return [q + (1 if i < r else 0) for i in range(k)]


class OpenAIBackend:
    """Backend (ftcot_jax.teacher.backend) over an OpenAI-compatible HTTP server."""

    def __init__(
        self,
        model: str,
        *,
        protocol: str = "completions",
        base_url: str | None = None,
        api_key: str | None = None,
        max_tokens: int = 128,
        stop: tuple[str, ...] = DEFAULT_STOP,
        concurrency: int = 8,
        timeout: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        seed: int | None = None,
        rng: random.Random | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of: {', '.join(PROTOCOLS)}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if public_endpoint(base_url) == DEFAULT_BASE_URL:
                raise ValueError("OPENAI_API_KEY is not set (needed for the OpenAI API; local servers need none)")
            api_key = _NO_KEY

        self._secret = api_key
        self.client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)
        self.model, self.protocol = model, protocol
        self.endpoint = public_endpoint(base_url)
        self.max_tokens, self.stop, self.seed = max_tokens, tuple(stop), seed
        self.retry, self.timeout = retry, timeout
        self.usage = Usage()
        self.n_supported: bool | None = None  # learned from the first request with n > 1
        self._rng = rng or random.Random()
        self._sem = asyncio.Semaphore(concurrency)
        self._pause_until = 0.0  # monotonic time before which no request starts (rate limits)

    # -- hygiene ---------------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        if self._secret and self._secret != _NO_KEY and len(self._secret) >= 4:
            text = text.replace(self._secret, "***")
        return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)

    async def aclose(self) -> None:
        await self.client.close()

    # -- one HTTP request with our retries --------------------------------------------------------
    def _pause(self, seconds: float) -> None:
        self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    def _backoff(self, attempt: int) -> float:
        d = min(self.retry.max_delay, self.retry.base_delay * 2**attempt)
        return d / 2 + self._rng.uniform(0, d / 2)  # "equal jitter": never 0, spreads herds

    async def _attempt(self, body: dict) -> tuple[list[Choice], int, int]:
        create = (
            self.client.completions.with_raw_response.create
            if self.protocol == "completions"
            else self.client.chat.completions.with_raw_response.create
        )
        self.usage.requests += 1
        self.usage.in_flight += 1
        try:
            raw = await create(**body)
            headers, content = raw.headers, raw.http_response.content
        except openai.APITimeoutError:
            raise _Retryable("timeout", f"no response within {self.timeout:g}s") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e.__context__
            raise _Retryable(
                "connection", f"connection error ({type(cause).__name__ if cause else 'unknown'})"
            ) from None
        except openai.APIStatusError as e:
            status, h = e.status_code, e.response.headers
            detail = e.response.text[:300].replace("\n", " ")
            msg = f"HTTP {status}: {detail}"
            if status == 429 and "insufficient_quota" in detail:  # billing, not a rate limit: no retry helps
                raise TeacherFatalError(self.redact(msg)) from None
            if status == 429 or status in (408, 409) or status >= 500:
                wait = retry_after_seconds(h)
                if wait is None and status == 429:
                    wait = ratelimit_reset_seconds(h)
                raise _Retryable("http_429" if status == 429 else f"http_{status}", msg, wait) from None
            if status in (401, 403, 404):
                raise TeacherFatalError(self.redact(msg)) from None
            raise TeacherError(self.redact(msg)) from None
        finally:
            self.usage.in_flight -= 1
        wait = ratelimit_reset_seconds(headers)
        if wait:
            self._pause(min(wait, self.retry.max_retry_after))
        try:
            data = json.loads(content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            snippet = content[:80].decode("utf-8", "replace").replace("\n", " ")
            raise _Retryable("malformed_json", f"malformed JSON in response: {snippet!r}") from None
        try:
            choices, pt, ct = parse_response(self.protocol, data)
        except ValueError as e:
            raise _Retryable("bad_response", str(e)) from None
        self.usage.prompt_tokens += pt
        self.usage.completion_tokens += ct
        return choices, pt, ct

    async def _post(self, what: str, body: dict) -> tuple[list[Choice], int, int]:
        last = "no attempt made"
        for attempt in range(self.retry.max_attempts):
            try:
                async with self._sem:
                    # Checked after getting a slot: a 429 seen while we queued pauses us too.
                    while (wait := self._pause_until - time.monotonic()) > 0:
                        await asyncio.sleep(wait)
                    return await self._attempt(body)
            except _Retryable as e:
                self.usage.errors[e.reason] += 1
                last = str(e)
                if attempt + 1 == self.retry.max_attempts:
                    break
                self.usage.retries += 1
                if e.delay is not None:  # the server said how long: honour it for every worker
                    self._pause(min(e.delay, self.retry.max_retry_after))
                else:
                    await asyncio.sleep(self._backoff(attempt))
            except TeacherError as e:
                self.usage.errors["http_fatal" if getattr(e, "fatal", False) else "http_client_error"] += 1
                raise type(e)(self.redact(f"{what}: {e}")) from None
        raise TeacherError(self.redact(f"{what}: failed after {self.retry.max_attempts} attempts; last error: {last}"))

    # -- the Backend interface -----------------------------------------------------------------
    async def _reasoning(self, item: TeachItem, indices: list[int], temperature: float, n: int):
        seed = None if self.seed is None else self.seed + indices[0]
        body = request_body(
            self.protocol,
            self.model,
            step1_input(self.protocol, item.question),
            max_tokens=self.max_tokens,
            temperature=temperature,
            n=n,
            stop=self.stop,
            seed=seed,
        )
        choices, pt, ct = await self._post(f"{item.task}#{item.sample_index} reasoning", body)
        choices = choices[:n]
        if n > 1 and self.n_supported is None and len(choices) in (1, n):
            self.n_supported = len(choices) == n  # 1 of n: the server ignores n (other counts: a glitch)
        pts, cts = _split(pt, len(choices)), _split(ct, len(choices))
        return {
            c: (ch, pts[i], cts[i], -1 if seed is None else seed)
            for i, (c, ch) in enumerate(zip(indices, choices, strict=False))
        }

    async def _answer(self, item: TeachItem, c: int, temperature: float, reasoning):
        ch1, pt1, ct1, seed = reasoning
        body = request_body(
            self.protocol,
            self.model,
            step2_input(self.protocol, item.question, ch1.text),
            max_tokens=self.max_tokens,
            temperature=0.0,
            n=1,
            stop=self.stop,
            seed=None,
        )
        (ch2, *_), pt2, ct2 = await self._post(f"{item.task}#{item.sample_index}/{c} answer", body)
        return zs_cot_record(
            item,
            c,
            teacher=self,
            rationale=ch1.text,
            reasoning_finish_reason=ch1.finish_reason,
            answer_text=ch2.text,
            finish_reason=ch2.finish_reason,
            temperature=temperature,
            seed=seed,
            prompt_tokens=pt1 + pt2,
            completion_tokens=ct1 + ct2,
        )

    async def teach(self, item: TeachItem, completion_indices: list[int], temperature: float) -> list:
        if not completion_indices:
            return []
        errors: list[BaseException] = []
        got: dict = {}
        todo = list(completion_indices)
        if len(todo) == 1 or self.n_supported is not False:
            try:
                got.update(await self._reasoning(item, todo, temperature, len(todo)))
            except TeacherError as e:
                if getattr(e, "fatal", False):
                    raise
                errors.append(e)
            todo = [c for c in todo if c not in got]
        if todo and not errors:
            # The server returned fewer choices than n: one request per remaining sample.
            rest = await asyncio.gather(
                *(self._reasoning(item, [c], temperature, 1) for c in todo), return_exceptions=True
            )
            for r in rest:
                if isinstance(r, dict):
                    got.update(r)
                else:
                    errors.append(r)
        answers = await asyncio.gather(
            *(self._answer(item, c, temperature, got[c]) for c in sorted(got)), return_exceptions=True
        )
        records = [a for a in answers if not isinstance(a, BaseException)]
        errors += [a for a in answers if isinstance(a, BaseException)]
        for e in errors:
            if not isinstance(e, TeacherError):
                raise e  # a bug, not a server fault: surface it
            if getattr(e, "fatal", False):
                raise e
        if not records and errors:
            raise errors[0]
        return records
