"""The connection level of `ftcot serve`: uvicorn's h11 HTTP/1.1 protocol plus a read timeout, a cap on open
connections, and replies in OpenAI's error shape (counted in /stats) for what never reaches the routes.

- Read timeout: a request's headers and body must arrive within `read_timeout_s` of the connection opening
  (first request) or of the request's first byte (later requests on a keep-alive connection); otherwise the
  server answers 408 and closes the connection, or just closes it when nothing at all came. A request whose
  body was being awaited sees its connection end (`CLOSED_BY_SERVER` in its scope, so it is not counted as a
  client disconnect). Decoding time never counts: the timer stops once the whole request is in.
- Connection cap: a connection that would make more than `max_connections` open is answered 503 at once
  (`Retry-After: 1`), then half-closed; whatever it sends is discarded until it closes or `LINGER_S` passes
  (closing at once could reset the connection before the client has read the 503).
- A request the HTTP parser cannot read (a malformed request line, bad headers): 400, then closed.

Why a subclass: uvicorn (0.55) has no public setting for these. Its `timeout_keep_alive` only runs between
requests, after a response: a connection that never sends, or stops in its headers or body, is held for ever.
Its `limit_concurrency` answers 503 only once a request's headers have arrived (a stalled connection over the
limit is held too), counts the connection itself (N admits N - 1), and replies in plain text past the ASGI app,
so /stats would not see it. h11 does no timing at all. What is overridden is uvicorn's protocol interface
(`connection_made`, `data_received`, `connection_lost`, `on_response_complete`, `send_400_response`).
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from ftcot_jax.serve.errors import APIError
from ftcot_jax.serve.http_stats import HTTPStats

CLOSED_BY_SERVER = "ftcot.closed_by_server"  # scope key: the server, not the client, ended this request
LINGER_S = 2.0  # how long a refused connection is read (and discarded) before it is closed


def protocol_class(stats: HTTPStats, *, read_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """The protocol class for uvicorn's `http=` setting, reporting to `stats`."""
    settings = {"stats": stats, "read_timeout_s": read_timeout_s, "max_connections": max_connections}
    return type("ServeProtocol", (ServeProtocol,), settings)


class ServeProtocol(H11Protocol):
    """uvicorn's h11 protocol with the read timeout, the connection cap and counted error replies."""

    stats: HTTPStats
    read_timeout_s: float
    max_connections: int

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._answered = False  # a response was completed on this connection

    # -- uvicorn's protocol interface --

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.stats.add("open_connections")
        if len(self.connections) > self.max_connections:
            self._refuse()
        else:
            self._watch_reads()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the 503 is sent; the request is not read
        super().data_received(data)
        self._watch_reads()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.add("open_connections", -1)
        self._stop_read_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._answered = True
        super().on_response_complete()  # may start the next pipelined request
        if not self.transport.is_closing():
            self._watch_reads()

    def send_400_response(self, msg: str) -> None:
        self._end_request()
        self._reply_and_close(APIError(400, f"Invalid HTTP request: {msg}"))

    # -- read timeout --

    def _watch_reads(self) -> None:
        """Run the read timer while a request is coming in: its body, or its headers once a byte of them has
        arrived (or on a new connection). An idle keep-alive connection is uvicorn's `timeout_keep_alive`'s."""
        state = self.conn.their_state
        partial = bool(self.conn.trailing_data[0])
        waiting = state is h11.SEND_BODY or (state is h11.IDLE and (partial or not self._answered))
        if waiting and not self.transport.is_closing():
            if self._read_timer is None:
                self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)
        else:
            self._stop_read_timer()

    def _stop_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        state = self.conn.their_state
        if self.transport.is_closing() or state not in (h11.IDLE, h11.SEND_BODY):
            return
        self.stats.add("read_timeouts")
        started = state is h11.SEND_BODY or bool(self.conn.trailing_data[0])
        answering = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
        self._end_request()
        if not started or answering:
            self.transport.close()
            return
        what = "body" if state is h11.SEND_BODY else "headers"
        message = f"The request {what} did not arrive within this server's read timeout of {self.read_timeout_s:g} s."
        self._reply_and_close(APIError(408, message, code="request_timeout"))

    def _end_request(self) -> None:
        """A request whose app is still running sees its connection end, marked as the server's doing."""
        if self.cycle is not None and not self.cycle.response_complete and not self.cycle.disconnected:
            self.scope[CLOSED_BY_SERVER] = True
            self.cycle.disconnected = True
            self.cycle.message_event.set()

    # -- replies outside the routes --

    def _reply(self, err: APIError, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        body = json.dumps(err.body()).encode()
        head = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *headers,
        ]
        try:
            for event in (
                h11.Response(status_code=err.status, headers=head, reason=STATUS_PHRASES[err.status]),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # a response is already under way: only closing is left
            return
        self.stats.sent(err.status)

    def _reply_and_close(self, err: APIError) -> None:
        self._reply(err)
        self.transport.close()

    def _refuse(self) -> None:
        self._refused = True
        self.connections.discard(self)  # not open as far as the cap and shutdown are concerned
        self.stats.add("refused_connections")
        message = f"Too many open connections (this server's limit is {self.max_connections}); retry later."
        self._reply(APIError(503, message, type="server_error", code="overloaded"), ((b"retry-after", b"1"),))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
