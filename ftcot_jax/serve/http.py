"""HTTP for `ftcot serve`: routes, request bodies and error pages on the standard library's
ThreadingHTTPServer, plus starting and stopping the server.

One thread per connection parses and validates (serve/openai.py, serve/schema.py); a single `Engine` worker
thread owns the model and decodes (serve/engine.py). docs/serve.md is the user-facing description.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ftcot_jax import models
from ftcot_jax.config.serve import ServeConfig
from ftcot_jax.models.api import max_positions
from ftcot_jax.serve.engine import Engine
from ftcot_jax.serve.openai import App
from ftcot_jax.serve.schema import APIError

MAX_BODY_BYTES = 8 * 1024 * 1024  # above this: 413 without reading the body


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses connections
    server_version = "ftcot-serve"
    timeout = 60  # a client that stops sending mid-request frees its thread
    app: App  # set on the subclass made by make_server

    def log_message(self, fmt, *args):  # one short line per request on stderr unless quiet
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
                self._send_error(APIError(500, f"Internal server error: {type(e).__name__}: {e}", type="server_error"))
        except OSError:  # the client went away (mid-body or before reading its answer): nothing to tell it
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
            self.close_connection = True  # the unread body would be parsed as the next request
            raise APIError(
                413, f"Request body of {length} bytes is larger than this server's limit of {MAX_BODY_BYTES} bytes."
            )
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            self.close_connection = True
            raise APIError(400, "Request body shorter than its Content-Length.")
        ctype = self.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise APIError(
                400,
                f"Invalid Content-Type header ({ctype or 'none'}); expected application/json. "
                "Send the request body as JSON.",
            )
        if not raw.strip():
            raise APIError(
                400, "We could not parse the JSON body of your request: the body is empty. Expected a JSON object."
            )
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise APIError(
                400, f"We could not parse the JSON body of your request ({e}). Expected a JSON object."
            ) from None
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
            return self._send_json(200, self.app.model(path[len("/v1/models/") :]))
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
        self.close_connection = True  # an event stream ends when the connection closes
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
            err = APIError(
                code,
                message or HTTPStatus(code).phrase,
                type="server_error" if code >= 500 else "invalid_request_error",
            )
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
    request_queue_size = 256  # listen backlog: the default 5 refuses bursts of concurrent clients
    allow_reuse_address = True
    quiet = False


def make_server(
    model, tokenizer, config: ServeConfig, *, generate_fn: Callable | None = None, quiet: bool = False
) -> tuple[Server, App]:
    """Build (but do not start) the server. `server.serve_forever()` runs it; `shutdown_server` stops it."""
    engine = Engine(
        model,
        tokenizer,
        max_batch=config.max_batch,
        batch_window_s=config.batch_window_s,
        max_queue=config.max_queue,
        generate_fn=generate_fn,
    )
    try:
        app = App(engine, config, max_positions(model))
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


def serve(checkpoint: str, config: ServeConfig) -> None:
    """Load CHECKPOINT with models.load and serve it until interrupted (Ctrl-C)."""
    model, tokenizer = models.load(checkpoint)
    server, app = make_server(model, tokenizer, config)
    host, port = server.server_address[:2]
    auth = "bearer key required" if config.api_key else "no API key"
    print(
        f"ftcot serve: model '{config.model_id}' on http://{host}:{port}/v1 ({auth}; max batch {config.max_batch}, "
        f"max_tokens <= {app.limits.max_new_tokens}, prompt <= {app.limits.max_prompt_tokens} tokens)",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.engine.close()
