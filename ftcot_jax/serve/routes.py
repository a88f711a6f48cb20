"""HTTP for `ftcot serve`: the FastAPI routes over `serve.openai.App`, every error in OpenAI's shape.

Handlers run on uvicorn's event loop; the blocking parts (validation with the tokenizer, queueing) run in
the thread pool, and decoding in the engine's worker thread, so idle or slow connections cost the loop
nothing. A non-streaming request awaits its rows' future; a streaming one gets the engine's `Delta`s
through an asyncio queue and sends them as server-sent events as they come.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ftcot_jax.serve.engine import RowResult
from ftcot_jax.serve.errors import APIError
from ftcot_jax.serve.openai import App
from ftcot_jax.serve.openapi import openapi_document
from ftcot_jax.serve.protocol import CLOSED_BY_SERVER
from ftcot_jax.serve.schema import MAX_BODY_BYTES, parse_json

log = logging.getLogger("ftcot_jax.serve")

METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}  # HTTP's; others: 501


def _error_response(err: APIError, *, close: bool = False, headers: dict | None = None) -> JSONResponse:
    headers = {**(headers or {}), **({"Connection": "close"} if close else {})}
    return JSONResponse(err.body(), status_code=err.status, headers=headers or None)


class Guard:
    """The outermost ASGI layer: methods HTTP does not define (501); responses counted by status in /stats as
    they are sent, and a client that went away before its response was complete counted apart (at debug level
    in the log: it is not the server's failure); any exception a handler lets through logged in one line
    (FastAPI has answered it with a 500 in OpenAI's shape, `build`) rather than as uvicorn's traceback. The
    server keeps serving."""

    def __init__(self, asgi, app: App):
        self.asgi, self.app = asgi, app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.asgi(scope, receive, send)
        started = completed = gone = False
        stats = self.app.http

        async def watched():
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and not completed:
                gone = True
            return message

        async def counted(message):
            nonlocal started, completed
            if message["type"] == "http.response.start":
                started = True
                if not gone:
                    stats.sent(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True
            await send(message)

        try:
            if scope["method"] not in METHODS:
                err = APIError(501, f"Unsupported method ({scope['method']!r}).", type="server_error")
                return await _error_response(err, close=True)(scope, receive, counted)
            await self.asgi(scope, watched, counted)
        except Exception as e:  # noqa: BLE001 -- never let a request kill the server
            if gone:  # e.g. the body never came: starlette's ClientDisconnect
                log.debug("ftcot serve: %s %s: %s", scope["method"], scope["path"], type(e).__name__)
            else:
                log.warning("ftcot serve: %s %s failed: %s: %s", scope["method"], scope["path"], type(e).__name__, e)
            if not started and not gone:
                err = APIError(500, f"Internal server error: {type(e).__name__}: {e}", type="server_error")
                await _error_response(err, close=True)(scope, receive, counted)
        finally:
            if gone and not scope.get(CLOSED_BY_SERVER):
                stats.add("client_disconnects")
                log.debug("ftcot serve: %s %s: the client disconnected", scope["method"], scope["path"])


def build(app: App) -> Guard:
    """The ASGI application serving `app`."""
    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # ours: GET /openapi.json below
    schema = openapi_document(
        app.limits, app.config.model_id, api_key=app.config.api_key is not None, trained=app.trained is not None
    )

    @api.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return _error_response(err, close=err.status in (411, 413))

    @api.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):  # the response to a bug; Guard then logs it
        return _error_response(
            APIError(500, f"Internal server error: {type(e).__name__}: {e}", type="server_error"), close=True
        )

    @api.exception_handler(HTTPException)
    async def _routing_error(request: Request, exc: HTTPException):
        path, method = request.url.path, request.method
        if exc.status_code == 405:  # starlette's Allow header lists the route's methods
            allow = (exc.headers or {}).get("Allow", "")
            hint = f"; use {allow}" if allow else ""
            return _error_response(
                APIError(405, f"Method {method} is not allowed on {path}{hint}."), headers=exc.headers
            )
        if exc.status_code == 404:
            return _error_response(APIError(404, f"Invalid URL ({method} {path})."))
        return _error_response(APIError(exc.status_code, str(exc.detail)))

    def auth(request: Request) -> None:
        app.check_auth(request.headers.get("authorization"))

    @api.get("/health")
    async def health():
        return JSONResponse({"status": "ok"})

    @api.get("/openapi.json")
    async def openapi(request: Request):
        auth(request)
        return JSONResponse(schema)

    @api.get("/stats")
    async def stats(request: Request):
        auth(request)
        return JSONResponse(app.stats())

    @api.get("/v1/models")
    async def models(request: Request):
        auth(request)
        return JSONResponse(app.models())

    @api.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str):
        auth(request)
        return JSONResponse(app.model(model_id))

    @api.post("/v1/completions")
    async def completions(request: Request):
        auth(request)
        return await _complete(app, "completion", await _read_json(request), request)

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        auth(request)
        return await _complete(app, "chat", await _read_json(request), request)

    return Guard(api, app)


async def _read_json(request: Request) -> dict:
    """The body as a JSON object; 411 for chunked uploads and 413 beyond MAX_BODY_BYTES, both before reading
    it (and closing the connection: the unread body cannot be skipped)."""
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        raise APIError(411, "Chunked request bodies are not supported; send a Content-Length.")
    length = int(request.headers.get("content-length") or 0)  # the HTTP parser has checked it is a number
    if length > MAX_BODY_BYTES:
        raise APIError(
            413, f"Request body of {length} bytes is larger than this server's limit of {MAX_BODY_BYTES} bytes."
        )
    return parse_json(await request.body(), request.headers.get("content-type", ""))


async def _until_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: nothing else comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _complete(app: App, kind: str, body: dict, request: Request):
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()  # a stream's Deltas, then its future

    def put(item) -> None:  # from the engine's thread
        try:
            loop.call_soon_threadsafe(events.put_nowait, item)
        except RuntimeError:  # the loop has closed (server shutting down)
            pass

    def admit():  # in the thread pool (tokenizing can take a while): validate, count tokens, queue
        req = app.parse(kind, body)
        return req, *app.submit(req, put if req.stream else None)

    req, future, counts = await run_in_threadpool(admit)
    if not req.stream:  # a client that goes away while its rows wait or decode cancels them, as a stream's does
        done = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(_until_gone(request))
        try:
            await asyncio.wait([done, gone], timeout=app.config.request_timeout_s, return_when="FIRST_COMPLETED")
        finally:
            gone.cancel()
        if not done.done():
            future.cancel()
            if gone.done() and not gone.cancelled():
                raise ClientDisconnect()
            raise app.timeout_error()
        return JSONResponse(app.respond(req, done.result(), counts))

    future.add_done_callback(put)  # the end: after every Delta (same thread, same order)
    deadline = loop.time() + app.config.request_timeout_s

    async def next_event():
        try:
            return await asyncio.wait_for(events.get(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            future.cancel()
            raise app.timeout_error() from None

    try:
        first = await next_event()  # a decoder failure before any text is still a plain 500
        if first is future and future.exception() is not None:
            raise future.exception()
    except BaseException:
        future.cancel()
        raise
    return StreamingResponse(_sse(app, req, first, next_event, future, counts), media_type="text/event-stream")


async def _sse(app: App, req, first, next_event, future, counts) -> AsyncIterator[bytes]:
    s = app.open_stream(req)
    try:
        for chunk in app.first_chunks(s):
            yield _event(chunk)
        item = first
        while True:
            if item is future:
                if future.exception() is not None:  # the decoder failed after the stream began: an error event
                    err = APIError(500, f"Internal server error: {future.exception()}", type="server_error")
                    yield _event(err.body())
                    return
                break
            for chunk in app.delta_chunks(s, item):
                yield _event(chunk)
            item = await next_event()
        results: list[RowResult] = future.result()
        for chunk in app.usage_chunks(s, results, counts):
            yield _event(chunk)
        yield b"data: [DONE]\n\n"
    except APIError as err:  # the request timed out mid-stream
        yield _event(err.body())
    finally:
        future.cancel()  # the client went away (or we are done): its rows end at the next chunk


def _event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()
