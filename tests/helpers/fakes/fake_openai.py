"""A small OpenAI-compatible server on 127.0.0.1 with a deterministic fault schedule.

Serves /v1/completions and /v1/chat/completions (the two Zero-shot-CoT steps are told
apart by their prompts) plus the minimal Files and Batches endpoints of the Batch API.
Faults are chosen by `faults(kind, question, attempt) -> str | None`, where kind is
"reasoning" or "answer" and attempt counts earlier requests of that (kind, question):
  "429" (retry-after-ms), "429s" (Retry-After: 1), "500", "503", "stall" (sleep past the
  client's timeout), "reset" (TCP RST, no response), "malformed" (200 with broken JSON),
  "no_choices" (200 with an empty list), "few" (1 choice whatever n is), "echo_auth"
  (500 whose body echoes the Authorization header: tests that we redact it),
  "ratelimit" (200 with x-ratelimit-remaining-requests: 0, reset 300ms), "quota" (429
  insufficient_quota: billing, must not be retried).
Every request is logged (`log`), with `sent=True` once a 200 was written and flushed.
Standard library only; runs in a daemon thread; bounded by the test that starts it.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import re
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STEP1 = re.compile(r"^Q: (?P<q>.*)\nA: Let's think step by step\.", re.S)


def question_of(prompt: str) -> str:
    m = STEP1.match(prompt)
    return m.group("q") if m else prompt


def fake_answer(question: str) -> str:
    """Deterministic 'answer' for a question: a number from its hash."""
    return str(int(hashlib.sha1(question.encode()).hexdigest(), 16) % 100)


class FakeOpenAI:
    def __init__(
        self,
        *,
        faults=None,
        delay: float = 0.0,
        honour_n: bool = True,
        stall_seconds: float = 2.0,
        api_key: str | None = None,
        batch_polls: int = 2,
    ):
        self.faults = faults or (lambda kind, question, attempt: None)
        self.delay, self.honour_n, self.stall_seconds = delay, honour_n, stall_seconds
        self.api_key, self.batch_polls = api_key, batch_polls
        self.log: list[dict] = []
        self.attempts: Counter = Counter()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_creates = 0
        self._lock = threading.Lock()
        self._ids = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    # -- queries for tests -------------------------------------------------------------------------
    def requests(self, kind: str | None = None, question: str | None = None) -> list[dict]:
        with self._lock:
            return [
                e
                for e in self.log
                if (kind is None or e["kind"] == kind) and (question is None or e["question"] == question)
            ]

    def _new_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}-{self._ids}"

    # -- the model ---------------------------------------------------------------------------------
    def complete(self, path: str, body: dict, *, fault: str | None = None) -> dict:
        """The response body for one (completions or chat) request; also used for Batch lines."""
        kind, question, prompt = self.classify(path, body)
        n = int(body.get("n") or 1)
        if fault == "few" or not self.honour_n:
            n = 1
        seed = body.get("seed")
        texts = []
        for i in range(n):
            if kind == "reasoning":
                with self._lock:
                    self._ids += 1
                    salt = self._ids if seed is None else f"{seed}.{i}"
                texts.append(f" Count the things ({salt}). So we get {fake_answer(question)}.")
            else:
                texts.append(f" {fake_answer(question)}.")
        chat = path.endswith("/chat/completions")
        choices = [
            {
                "index": i,
                "finish_reason": "stop",
                **({"message": {"role": "assistant", "content": t}} if chat else {"text": t}),
            }
            for i, t in enumerate(texts)
        ]
        ptoks = len(prompt.split())
        ctoks = sum(len(t.split()) for t in texts)
        return {
            "id": self._new_id("cmpl"),
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": choices,
            "usage": {"prompt_tokens": ptoks, "completion_tokens": ctoks, "total_tokens": ptoks + ctoks},
        }

    @staticmethod
    def classify(path: str, body: dict) -> tuple[str, str, str]:
        if path.endswith("/chat/completions"):
            msgs = body.get("messages") or [{}]
            prompt = "\n".join(str(m.get("content")) for m in msgs)
            kind = "answer" if len(msgs) > 1 else "reasoning"
            return kind, question_of(str(msgs[0].get("content", ""))), prompt
        prompt = str(body.get("prompt", ""))
        kind = "answer" if prompt.endswith("Therefore, the answer is") else "reasoning"
        return kind, question_of(prompt), prompt

    # -- Batch API ---------------------------------------------------------------------------------
    def _batch_object(self, b: dict) -> dict:
        return {k: v for k, v in b.items() if not k.startswith("_")}

    def _run_batch(self, b: dict) -> None:
        out, err = [], []
        for line in self.files[b["input_file_id"]].decode().splitlines():
            if not line.strip():
                continue
            req = json.loads(line)
            kind, question, _ = self.classify(req["url"], req["body"])
            with self._lock:
                attempt = self.attempts[(kind, question)]
                self.attempts[(kind, question)] += 1
            fault = self.faults(kind, question, attempt)
            entry = {
                "path": req["url"],
                "kind": kind,
                "question": question,
                "n": req["body"].get("n", 1),
                "fault": fault,
                "batch": b["id"],
                "t": time.time(),
                "sent": fault is None,
            }
            with self._lock:
                self.log.append(entry)
            rid = self._new_id("batch_req")
            if fault is None or fault == "few":
                body = self.complete(req["url"], req["body"], fault=fault)
                out.append(
                    {
                        "id": rid,
                        "custom_id": req["custom_id"],
                        "response": {"status_code": 200, "request_id": rid, "body": body},
                        "error": None,
                    }
                )
            else:
                err.append(
                    {
                        "id": rid,
                        "custom_id": req["custom_id"],
                        "response": {
                            "status_code": 500,
                            "request_id": rid,
                            "body": {"error": {"message": f"injected {fault}"}},
                        },
                        "error": None,
                    }
                )
        for name, lines in (("output_file_id", out), ("error_file_id", err)):
            if lines:
                fid = self._new_id("file")
                self.files[fid] = "".join(json.dumps(x) + "\n" for x in lines).encode()
                b[name] = fid
        b["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
        b["status"] = "completed"
        b["completed_at"] = int(time.time())

    # -- HTTP ----------------------------------------------------------------------------------------
    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _send(self, status: int, payload, headers: dict | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            def _authorized(self) -> bool:
                if fake.api_key is None or self.headers.get("Authorization") == f"Bearer {fake.api_key}":
                    return True
                self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                return False

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                if not self._authorized():
                    return
                m = re.fullmatch(r"/v1/batches/([\w-]+)", self.path)
                if m and m.group(1) in fake.batches:
                    b = fake.batches[m.group(1)]
                    b["_polls"] += 1
                    if b["status"] == "validating":
                        b["status"] = "in_progress"
                    elif b["status"] == "in_progress" and b["_polls"] >= fake.batch_polls:
                        fake._run_batch(b)
                    return self._send(200, fake._batch_object(b))
                m = re.fullmatch(r"/v1/files/([\w-]+)/content", self.path)
                if m and m.group(1) in fake.files:
                    return self._send(200, fake.files[m.group(1)])
                self._send(404, {"error": {"message": f"not found: {self.path}"}})

            def do_POST(self):
                raw = self._body()
                if not self._authorized():
                    return
                if self.path == "/v1/files":
                    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
                    )
                    parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
                    if parts["purpose"].get_content().strip() != "batch":
                        return self._send(400, {"error": {"message": "purpose must be batch"}})
                    fid = fake._new_id("file")
                    fake.files[fid] = parts["file"].get_payload(decode=True)
                    return self._send(
                        200,
                        {
                            "id": fid,
                            "object": "file",
                            "bytes": len(fake.files[fid]),
                            "created_at": int(time.time()),
                            "filename": "input.jsonl",
                            "purpose": "batch",
                            "status": "processed",
                        },
                    )
                if self.path == "/v1/batches":
                    body = json.loads(raw)
                    if body.get("input_file_id") not in fake.files:
                        return self._send(400, {"error": {"message": "unknown input_file_id"}})
                    bid = fake._new_id("batch")
                    fake.batch_creates += 1
                    fake.batches[bid] = {
                        "id": bid,
                        "object": "batch",
                        "endpoint": body["endpoint"],
                        "input_file_id": body["input_file_id"],
                        "completion_window": body["completion_window"],
                        "status": "validating",
                        "created_at": int(time.time()),
                        "output_file_id": None,
                        "error_file_id": None,
                        "errors": None,
                        "request_counts": {"total": 0, "completed": 0, "failed": 0},
                        "_polls": 0,
                    }
                    return self._send(200, fake._batch_object(fake.batches[bid]))
                if self.path not in ("/v1/completions", "/v1/chat/completions"):
                    return self._send(404, {"error": {"message": f"not found: {self.path}"}})
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    return self._send(400, {"error": {"message": "body is not JSON"}})
                kind, question, _ = fake.classify(self.path, body)
                with fake._lock:
                    attempt = fake.attempts[(kind, question)]
                    fake.attempts[(kind, question)] += 1
                fault = fake.faults(kind, question, attempt)
                entry = {
                    "path": self.path,
                    "kind": kind,
                    "question": question,
                    "n": body.get("n", 1),
                    "fault": fault,
                    "t": time.time(),
                    "sent": False,
                    "seed": body.get("seed"),
                    "auth": self.headers.get("Authorization"),
                }
                with fake._lock:
                    fake.log.append(entry)
                if fake.delay:
                    time.sleep(fake.delay)
                if fault == "429":
                    return self._send(429, {"error": {"message": "rate limited"}}, {"retry-after-ms": "150"})
                if fault == "quota":
                    return self._send(
                        429,
                        {
                            "error": {
                                "message": "You exceeded your current quota",
                                "type": "insufficient_quota",
                                "code": "insufficient_quota",
                            }
                        },
                    )
                if fault == "429s":
                    return self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"})
                if fault in ("500", "503"):
                    return self._send(int(fault), {"error": {"message": "server error"}})
                if fault == "echo_auth":
                    return self._send(
                        500, {"error": {"message": f"bad gateway, you sent {self.headers.get('Authorization')}"}}
                    )
                if fault == "stall":
                    time.sleep(fake.stall_seconds)
                    self.close_connection = True
                    return
                if fault == "reset":
                    self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.request.close()
                    self.close_connection = True
                    return
                if fault == "malformed":
                    return self._send(200, b'{"choices": [{"text": "trunc')
                if fault == "no_choices":
                    return self._send(200, {"id": "x", "object": "text_completion", "choices": [], "usage": {}})
                headers = {}
                if fault == "ratelimit":
                    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "300ms"}
                resp = fake.complete(self.path, body, fault=fault)
                self._send(200, resp, headers)
                entry["sent"] = True
                entry["n_returned"] = len(resp["choices"])

            def handle(self):
                try:
                    super().handle()
                except (ConnectionError, OSError):
                    pass  # the client went away (stall faults) or we reset on purpose

        return Handler
