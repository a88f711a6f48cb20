"""`ftcot serve`: an OpenAI-compatible HTTP server for a student checkpoint.

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions,
plus GET /health and GET /stats (batching counters). Standard library only (ThreadingHTTPServer):
one thread per connection parses and validates; a single `Engine` worker thread owns the model and
decodes. Requests that arrive within `batch_window_s` of each other (up to `max_batch` rows) and share
their sampling setup are decoded together in one `decode.generate` call, always padded to `max_batch` rows
so the jitted shapes do not depend on how many requests happened to arrive.
Validation rules live in serve_schema.py; docs/serve.md is the user-facing description.
"""

from __future__ import annotations

import copy
import hmac
import json
import os
import queue
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from ftcot_jax.serve_schema import APIError, Limits, Request, parse_chat, parse_completion

MAX_BODY_BYTES = 8 * 1024 * 1024   # above this: 413 without reading the body
MAX_MAX_BATCH = 256


@dataclass(frozen=True)
class ServeConfig:
    model_id: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 8
    max_new_tokens_limit: int = 512
    max_prompt_tokens: int | None = None     # None: context length - 1
    max_prompt_chars: int | None = None      # None: 16 characters per allowed prompt token
    max_n: int = 8
    batch_window_s: float = 0.01             # how long the worker waits for more requests to join a batch
    max_queue: int = 1024                    # queued requests beyond this get a 503
    request_timeout_s: float = 600.0

    def __post_init__(self):
        for name in ("max_batch", "max_new_tokens_limit", "max_n", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_prompt_tokens", "max_prompt_chars"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_window_s < 0 or self.request_timeout_s <= 0:
            raise ValueError(f"batch window ({self.batch_window_s}s) must be >= 0 and the request timeout "
                             f"({self.request_timeout_s}s) > 0")
        if self.max_batch > MAX_MAX_BATCH:
            raise ValueError(f"--max-batch must be <= {MAX_MAX_BATCH}, got {self.max_batch}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("--api-key must not be empty")
        if not self.model_id:
            raise ValueError("--model-id must not be empty")


# ---------------------------------------------------------------------------------------------------------
# Engine: the model, the tokenizer and the batching worker.


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


@dataclass
class _Job:
    prompts: list[str]                  # one entry per row (a prompt repeated n times for n samples)
    params: Params
    future: Future
    results: list[RowResult | None] = field(default_factory=list)
    remaining: int = 0


@dataclass
class Stats:
    requests: int = 0         # jobs completed by the worker
    rows: int = 0             # sequences decoded
    batches: int = 0          # decode.generate calls
    max_batch_rows: int = 0   # largest number of real rows in one call
    decode_seconds: float = 0.0
    http_4xx: int = 0
    http_5xx: int = 0


def context_length(model) -> int | None:
    """The model's position limit from its HF config (None when the architecture has none, e.g. T5)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    hf = config.to_hf_config() if hasattr(config, "to_hf_config") else {}
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = hf.get(key) if isinstance(hf, dict) else None
        if value is None:
            value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class Engine:
    """Owns the model; `submit` queues rows, one worker thread batches and decodes them."""

    def __init__(self, model, tokenizer, *, max_batch: int = 8, batch_window_s: float = 0.01,
                 max_queue: int = 1024, generate_fn: Callable | None = None):
        from ftcot_jax import decode

        generate_fn = generate_fn or decode.generate
        self._bucket, self._min_new_bucket = decode.bucket, decode.MIN_NEW_BUCKET
        self.model, self.tokenizer = model, tokenizer
        self._http_tokenizer, self._tok_lock = copy.deepcopy(tokenizer), threading.Lock()
        self.max_batch, self.batch_window_s = max_batch, batch_window_s
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

    def submit(self, prompts: list[str], params: Params) -> Future:
        job = _Job(prompts=list(prompts), params=params, future=Future())
        job.results = [None] * len(prompts)
        job.remaining = len(prompts)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise APIError(503, "The server is overloaded (request queue full); retry later.",
                           type="server_error", code="overloaded") from None
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
                self._decode(rows[start:start + self.max_batch])

    def _decode(self, rows: list[tuple[_Job, int]]) -> None:
        live = [(j, i) for j, i in rows if not j.future.done()]
        if not live:
            return
        params = live[0][0].params
        t0 = time.perf_counter()
        try:
            prompts = [j.prompts[i] for j, i in live]
            # fill_batch: every call has max_batch rows (filler rows are never decoded past the first step),
            # so the decoder compiles one batch shape, not one per power of two below it.
            gens = self._generate(
                self.model, self.tokenizer, prompts, max_new_tokens=[j.params.max_new_tokens for j, _ in live],
                batch_size=self.max_batch, stop=[list(j.params.stop) for j, _ in live],
                temperature=params.temperature, top_k=0, top_p=params.top_p, rng=self._rng(params),
                fill_batch=True)
            if len(gens) != len(prompts):
                raise RuntimeError(f"decode.generate returned {len(gens)} generations for {len(prompts)} prompts")
            results = [RowResult(text=g.text, completion_tokens=len(g.token_ids), finish_reason=g.finish_reason)
                       for g in gens]
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
        for (job, i), r in zip(live, results):
            job.results[i] = r
            job.remaining -= 1
            if job.remaining == 0 and job.future.set_running_or_notify_cancel():
                with self._lock:
                    self.stats.requests += 1
                job.future.set_result(list(job.results))

    def _rng(self, params: Params):
        if params.temperature == 0.0:
            return None
        import jax
        if params.seed is not None:
            seed = params.seed % (2**32)
        else:
            self._sample_counter += 1
            seed = int.from_bytes(os.urandom(4), "little") ^ self._sample_counter
        return jax.random.key(seed)


# ---------------------------------------------------------------------------------------------------------
# Chat template.

PLAIN_ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The tokenizer's chat template when it has one, else the plain template of docs/serve.md:
    "System: ...\\n\\nUser: ...\\n\\nAssistant:" (a name, if given, goes in parentheses after the role)."""
    if getattr(tokenizer, "chat_template", None):
        # 'developer' is OpenAI's newer name for 'system'; HF templates only know 'system'.
        msgs = [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in messages]
        try:
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # templates raise (e.g. "roles must alternate") on conversations they refuse
            raise APIError(400, f"Invalid 'messages': the model's chat template refused them: {e}",
                           param="messages") from None
    parts = []
    for m in messages:
        role = PLAIN_ROLE_NAMES[m["role"]]
        if m.get("name"):
            role = f"{role} ({m['name']})"
        parts.append(f"{role}: {m['content']}")
    parts.append("Assistant:")
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------------------
# The OpenAI API on top of the engine.


class App:
    def __init__(self, engine: Engine, config: ServeConfig, context_len: int | None):
        self.engine, self.config = engine, config
        self.context_len = context_len
        max_prompt_tokens = config.max_prompt_tokens
        if max_prompt_tokens is None:
            max_prompt_tokens = (context_len - 1) if context_len else 4096
        if max_prompt_tokens < 1:
            raise ValueError(f"--max-prompt-tokens must be >= 1, got {max_prompt_tokens}")
        if context_len and max_prompt_tokens >= context_len:
            raise ValueError(f"--max-prompt-tokens ({max_prompt_tokens}) must be below the model's context "
                             f"length ({context_len})")
        max_prompt_chars = config.max_prompt_chars or 16 * max_prompt_tokens
        self.limits = Limits(max_new_tokens=config.max_new_tokens_limit, max_prompt_tokens=max_prompt_tokens,
                             max_prompt_chars=max_prompt_chars, max_n=config.max_n,
                             context_length=context_len or (max_prompt_tokens + config.max_new_tokens_limit))
        self.created = int(time.time())

    # -- auth --

    def check_auth(self, header: str | None) -> None:
        key = self.config.api_key
        if key is None:
            return
        if not header:
            raise APIError(401, "You didn't provide an API key. You need to provide your API key in an "
                                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    # -- GET --

    def model_card(self) -> dict:
        return {"id": self.config.model_id, "object": "model", "created": self.created, "owned_by": "ftcot-jax"}

    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def model(self, model_id: str) -> dict:
        if model_id != self.config.model_id:
            raise self._model_not_found(model_id)
        return self.model_card()

    def stats(self) -> dict:
        s = self.engine.stats
        return {"requests": s.requests, "rows": s.rows, "batches": s.batches, "max_batch_rows": s.max_batch_rows,
                "decode_seconds": round(s.decode_seconds, 4), "http_4xx": s.http_4xx, "http_5xx": s.http_5xx,
                "queued": self.engine._queue.qsize(), "max_batch": self.engine.max_batch,
                "limits": self.limits.__dict__}

    # -- POST --

    def _model_not_found(self, model_id: str) -> APIError:
        return APIError(404, f"The model `{model_id}` does not exist or you do not have access to it.",
                        code="model_not_found")

    def _check_model(self, body: dict) -> None:
        if "model" not in body or body["model"] is None:
            raise APIError(400, "you must provide a model parameter", param="model")
        if not isinstance(body["model"], str):
            raise APIError(400, f"Invalid type for 'model': expected a string, but got "
                                f"{type(body['model']).__name__}.", param="model")
        if body["model"] != self.config.model_id:
            raise self._model_not_found(body["model"])

    def parse(self, path: str, body: dict) -> Request:
        self._check_model(body)
        if path == "/v1/completions":
            req = parse_completion(body, self.limits)
        else:
            req = parse_chat(body, self.limits, self.engine.render_chat)
        return req

    def prepare(self, req: Request) -> tuple[list[int], int]:
        """Token counts per prompt and the resolved max_tokens; refuses what does not fit the context."""
        counts = []
        for i, p in enumerate(req.prompts):
            param = "messages" if req.kind == "chat" else ("prompt" if len(req.prompts) == 1 else f"prompt[{i}]")
            k = self.engine.count_tokens(p)
            if k > self.limits.max_prompt_tokens:
                raise APIError(400, f"Invalid '{param}': {k} tokens is more than this server's limit of "
                                    f"{self.limits.max_prompt_tokens} prompt tokens.", param=param,
                               code="context_length_exceeded")
            counts.append(k)
        longest = max(counts)
        room = self.limits.context_length - longest
        max_tokens = req.max_tokens
        if max_tokens is None:   # chat without max_tokens: as much as the limit and the context allow
            max_tokens = max(1, min(self.limits.max_new_tokens, room))
        if longest + max_tokens > self.limits.context_length:
            raise APIError(400, f"This model's maximum context length is {self.limits.context_length} tokens. "
                                f"However, you requested {longest + max_tokens} tokens ({longest} in the prompt, "
                                f"{max_tokens} in the completion). Please reduce the prompt or the completion "
                                "length.", param="max_tokens" if req.kind == "completion" else "messages",
                           code="context_length_exceeded")
        return counts, max_tokens

    def run(self, req: Request) -> tuple[list[RowResult], list[int]]:
        counts, max_tokens = self.prepare(req)
        params = Params(max_new_tokens=max_tokens, temperature=req.temperature,
                        top_p=req.top_p if req.temperature > 0 else 1.0, stop=req.stop,
                        seed=req.seed if req.temperature > 0 else None)
        rows = [p for p in req.prompts for _ in range(req.n)]
        future = self.engine.submit(rows, params)
        try:
            results = future.result(timeout=self.config.request_timeout_s)
        except FutureTimeout:
            future.cancel()
            raise APIError(504, "Decoding did not finish within the server's request timeout.",
                           type="server_error", code="timeout") from None
        return results, counts

    def respond(self, req: Request, results: list[RowResult], counts: list[int]) -> dict:
        created = int(time.time())
        usage = {"prompt_tokens": sum(counts), "completion_tokens": sum(r.completion_tokens for r in results),
                 "total_tokens": sum(counts) + sum(r.completion_tokens for r in results)}
        if req.kind == "completion":
            choices = [{"text": r.text, "index": i, "logprobs": None, "finish_reason": r.finish_reason}
                       for i, r in enumerate(results)]
            return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": created,
                    "model": self.config.model_id, "system_fingerprint": None, "choices": choices, "usage": usage}
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text, "refusal": None},
                    "logprobs": None, "finish_reason": r.finish_reason} for i, r in enumerate(results)]
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": created,
                "model": self.config.model_id, "system_fingerprint": None, "choices": choices, "usage": usage}

    def stream_events(self, req: Request, response: dict) -> list[dict]:
        """SSE chunks for a finished response: each choice's text arrives as one chunk (decoding is batched,
        not incremental), then its finish_reason, then usage when stream_options.include_usage is set."""
        base = {"id": response["id"], "created": response["created"], "model": response["model"],
                "system_fingerprint": None}
        events = []
        for ch in response["choices"]:
            if req.kind == "completion":
                events.append({**base, "object": "text_completion", "choices": [
                    {"text": ch["text"], "index": ch["index"], "logprobs": None, "finish_reason": None}]})
                events.append({**base, "object": "text_completion", "choices": [
                    {"text": "", "index": ch["index"], "logprobs": None, "finish_reason": ch["finish_reason"]}]})
            else:
                obj = "chat.completion.chunk"
                events.append({**base, "object": obj, "choices": [
                    {"index": ch["index"], "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}]})
                events.append({**base, "object": obj, "choices": [
                    {"index": ch["index"], "delta": {"content": ch["message"]["content"]}, "logprobs": None,
                     "finish_reason": None}]})
                events.append({**base, "object": obj, "choices": [
                    {"index": ch["index"], "delta": {}, "logprobs": None, "finish_reason": ch["finish_reason"]}]})
        if req.include_usage:
            for e in events:
                e["usage"] = None
            obj = "text_completion" if req.kind == "completion" else "chat.completion.chunk"
            events.append({**base, "object": obj, "choices": [], "usage": response["usage"]})
        return events


# ---------------------------------------------------------------------------------------------------------
# HTTP.


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive: the openai client reuses connections
    server_version = "ftcot-serve"
    timeout = 60                      # a client that stops sending mid-request frees its thread
    app: App                          # set on the subclass made by make_server

    def log_message(self, fmt, *args):   # one short line per request on stderr unless quiet
        if not getattr(self.server, "quiet", False):
            sys.stderr.write(f"{self.address_string()} - {fmt % args}\n")

    # -- plumbing --

    def _send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: APIError) -> None:
        with self.app.engine._lock:
            if err.status >= 500:
                self.app.engine.stats.http_5xx += 1
            else:
                self.app.engine.stats.http_4xx += 1
        self._send_json(err.status, err.body())

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            try:
                fn()
            except APIError as e:
                self._send_error(e)
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as e:  # noqa: BLE001 -- never let a request kill the server
                self.close_connection = True
                self._send_error(APIError(500, f"Internal server error: {type(e).__name__}: {e}",
                                          type="server_error"))
        except OSError:   # the client went away (mid-body or before reading its answer): nothing to tell it
            self.close_connection = True

    def _read_json(self) -> dict:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise APIError(411, "Chunked request bodies are not supported; send a Content-Length.")
        length_header = self.headers.get("Content-Length")
        try:
            length = int(length_header) if length_header is not None else 0
        except ValueError:
            self.close_connection = True
            raise APIError(400, f"Invalid Content-Length header: {length_header!r}.") from None
        if length < 0:
            self.close_connection = True
            raise APIError(400, f"Invalid Content-Length header: {length_header!r}.")
        if length > MAX_BODY_BYTES:
            self.close_connection = True   # the unread body would be parsed as the next request
            raise APIError(413, f"Request body of {length} bytes is larger than this server's limit of "
                                f"{MAX_BODY_BYTES} bytes.")
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            self.close_connection = True
            raise APIError(400, "Request body shorter than its Content-Length.")
        ctype = self.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise APIError(400, f"Invalid Content-Type header ({ctype or 'none'}); expected application/json. "
                                "Send the request body as JSON.")
        if not raw.strip():
            raise APIError(400, "We could not parse the JSON body of your request: the body is empty. "
                                "Expected a JSON object.")
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise APIError(400, f"We could not parse the JSON body of your request ({e}). Expected a JSON "
                                "object.") from None
        if not isinstance(body, dict):
            raise APIError(400, f"The JSON body must be an object, got {type(body).__name__}.")
        return body

    # -- routes --

    def do_GET(self):
        self._guard(self._get)

    def _get(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            return self._send_json(200, {"status": "ok"})
        self.app.check_auth(self.headers.get("Authorization"))
        if path == "/v1/models":
            return self._send_json(200, self.app.models())
        if path.startswith("/v1/models/"):
            return self._send_json(200, self.app.model(path[len("/v1/models/"):]))
        if path == "/stats":
            return self._send_json(200, self.app.stats())
        if path in ("/v1/completions", "/v1/chat/completions"):
            raise APIError(405, f"Method GET is not allowed on {path}; use POST.")
        raise APIError(404, f"Invalid URL (GET {path}).")

    def do_POST(self):
        self._guard(self._post)

    def _post(self):
        path = self.path.split("?")[0].rstrip("/")
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self._drain()
            if path in ("/v1/models", "/health", "/stats") or path.startswith("/v1/models/"):
                raise APIError(405, f"Method POST is not allowed on {path}; use GET.")
            raise APIError(404, f"Invalid URL (POST {path}).")
        try:
            self.app.check_auth(self.headers.get("Authorization"))
        except APIError:
            self._drain()
            raise
        body = self._read_json()
        req = self.app.parse(path, body)
        results, counts = self.app.run(req)
        response = self.app.respond(req, results, counts)
        if not req.stream:
            return self._send_json(200, response)
        self.close_connection = True     # an event stream ends when the connection closes
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for event in self.app.stream_events(req, response):
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _drain(self) -> None:
        """Read (and drop) a body we will not use so the next request on this connection parses cleanly."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if 0 <= length <= MAX_BODY_BYTES:
            self.rfile.read(length)
        else:
            self.close_connection = True

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (malformed request line, oversized headers, unknown method) in the
        OpenAI error shape instead of an HTML page."""
        self.close_connection = True
        try:
            err = APIError(code, message or HTTPStatus(code).phrase,
                           type="server_error" if code >= 500 else "invalid_request_error")
            with self.app.engine._lock:
                if code >= 500:
                    self.app.engine.stats.http_5xx += 1
                else:
                    self.app.engine.stats.http_4xx += 1
            data = json.dumps(err.body()).encode()
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(data)
        except OSError:
            pass

    def do_PUT(self):
        self._guard(lambda: self._other("PUT"))

    def do_DELETE(self):
        self._guard(lambda: self._other("DELETE"))

    def do_PATCH(self):
        self._guard(lambda: self._other("PATCH"))

    def do_OPTIONS(self):
        self._guard(lambda: self._other("OPTIONS"))

    def _other(self, method: str):
        self._drain()
        raise APIError(405, f"Method {method} is not allowed on {self.path.split('?')[0]}.")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256          # listen backlog: the default 5 refuses bursts of concurrent clients
    allow_reuse_address = True
    quiet = False


def make_server(model, tokenizer, config: ServeConfig, *, generate_fn: Callable | None = None,
                quiet: bool = False) -> tuple[Server, App]:
    """Build (but do not start) the server. `server.serve_forever()` runs it; `shutdown_server` stops it."""
    engine = Engine(model, tokenizer, max_batch=config.max_batch, batch_window_s=config.batch_window_s,
                    max_queue=config.max_queue, generate_fn=generate_fn)
    try:
        app = App(engine, config, context_length(model))
        handler = type("BoundHandler", (Handler,), {"app": app})
        server = Server((config.host, config.port), handler)
    except BaseException:
        engine.close()
        raise
    server.quiet = quiet
    server.app = app
    return server, app


def shutdown_server(server: Server) -> None:
    server.shutdown()
    server.server_close()
    server.app.engine.close()


def default_model_id(checkpoint: str) -> str:
    path = os.path.normpath(checkpoint)
    return os.path.basename(path) if os.path.isdir(path) else checkpoint


def serve(checkpoint: str, config_kwargs: dict) -> None:
    """Load CHECKPOINT with models.load and serve it until interrupted (Ctrl-C)."""
    from ftcot_jax import models

    model_id = config_kwargs.pop("model_id", None) or default_model_id(checkpoint)
    config = ServeConfig(model_id=model_id, **config_kwargs)
    model, tokenizer = models.load(checkpoint)
    server, app = make_server(model, tokenizer, config)
    host, port = server.server_address[:2]
    auth = "bearer key required" if config.api_key else "no API key"
    print(f"ftcot serve: model '{model_id}' on http://{host}:{port}/v1 ({auth}; max batch {config.max_batch}, "
          f"max_tokens <= {app.limits.max_new_tokens}, prompt <= {app.limits.max_prompt_tokens} tokens)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.engine.close()
