"""`ftcot serve` against slow, careless and hostile connections: the read timeout (408, or closed), the
connection cap (503 at once), client disconnects counted apart from 5xx, unparseable HTTP counted, and HTTP
methods a route does not allow (405 with Allow). All on 127.0.0.1, with a stub decoder (no decoding here).
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.helpers.serve import assert_openai_error, raw, start, stop, tiny_student

C = "/v1/completions"
OK = {"model": "tiny-gpt2", "prompt": "Question 1:", "max_tokens": 2, "temperature": 0}
STALLED = (
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
)


def instant(model, tokenizer, prompts, **kw):
    from ftcot_jax.decode import Generation

    return [Generation(text="x", token_ids=[5], finish_reason="length") for _ in prompts]


@pytest.fixture(scope="module")
def student():
    return tiny_student()


def read_until_closed(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_stalled_uploads_are_closed_after_the_read_timeout_while_requests_are_served(student):
    srv = start(student, generate_fn=instant, read_timeout_s=1.0)
    socks = []
    try:
        stalled = [socket.create_connection(("127.0.0.1", srv.port), timeout=15) for _ in range(20)]
        for s in stalled:
            s.sendall(STALLED + b'{"model"')  # 8 of 100000 bytes
        headers = [socket.create_connection(("127.0.0.1", srv.port), timeout=15) for _ in range(3)]
        for s in headers:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")  # stops in its headers
        silent = [socket.create_connection(("127.0.0.1", srv.port), timeout=15) for _ in range(3)]
        socks = stalled + headers + silent
        wait_for(lambda: srv.app.stats()["open_connections"] == len(socks))
        status, parsed, data = raw(srv.port, "POST", C, OK)  # served meanwhile
        assert status == 200 and parsed["choices"][0]["text"] == "x", data[:300]
        for s in stalled + headers:
            reply = read_until_closed(s).decode()  # the server closes it: no socket timeout
            head, _, body = reply.partition("\r\n\r\n")
            assert head.startswith("HTTP/1.1 408"), reply[:300]
            err = json.loads(body)["error"]
            assert err["code"] == "request_timeout" and "read timeout of 1 s" in err["message"], err
        for s in silent:
            assert read_until_closed(s) == b""  # nothing came, nothing is said: closed
        wait_for(lambda: srv.app.stats()["open_connections"] == 0)
        stats = srv.app.stats()
        assert stats["read_timeouts"] == len(socks) and stats["http_4xx"] == len(stalled) + len(headers), stats
        assert stats["http_5xx"] == 0 and stats["client_disconnects"] == 0, stats
    finally:
        for s in socks:
            s.close()
        stop(srv)


def test_client_disconnects_are_counted_apart_from_server_errors(student):
    entered, release = threading.Event(), threading.Event()

    def slow(model, tokenizer, prompts, **kw):
        entered.set()
        release.wait(30)
        return instant(model, tokenizer, prompts)

    srv = start(student, generate_fn=slow)
    try:
        for _ in range(5):  # uploads dropped by the client
            with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s:
                s.sendall(STALLED + b'{"model"')
                wait_for(lambda: srv.app.stats()["open_connections"] >= 1)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s:  # gone while its rows wait
            body = json.dumps(OK).encode()
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            s.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert entered.wait(15)
        wait_for(lambda: srv.app.stats()["client_disconnects"] == 6)
        release.set()
        assert raw(srv.port, "POST", C, OK)[0] == 200
        stats = srv.app.stats()
        assert stats["http_5xx"] == 0 and stats["http_4xx"] == 0 and stats["client_disconnects"] == 6, stats
    finally:
        release.set()
        stop(srv)


def test_connections_over_the_cap_get_a_503_at_once(student):
    srv = start(student, generate_fn=instant, max_connections=4)
    held = []
    try:
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=15) for _ in range(4)]
        wait_for(lambda: srv.app.stats()["open_connections"] == 4)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s:  # says nothing: answered anyway
            reply = read_until_closed(s).decode()
        head, _, body = reply.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 503") and "retry-after: 1" in head.lower(), reply[:300]
        assert json.loads(body)["error"]["code"] == "overloaded"
        status, parsed, data = raw(srv.port, "POST", C, OK)  # a client that sends its request first
        assert_openai_error(status, parsed, data, 503, type="server_error")
        for s in held:
            s.close()
        wait_for(lambda: srv.app.stats()["open_connections"] == 0)
        assert raw(srv.port, "POST", C, OK)[0] == 200
        stats = srv.app.stats()
        assert stats["refused_connections"] == 2 and stats["http_5xx"] == 2, stats
    finally:
        for s in held:
            s.close()
        stop(srv)


def test_methods_a_route_does_not_allow_are_405_with_allow(student):
    srv = start(student, generate_fn=instant)
    try:
        for method, path, allow in [
            ("TRACE", "/v1/models", "GET"),
            ("TRACE", C, "POST"),
            ("CONNECT", "/health", "GET"),
            ("GET", C, "POST"),
            ("DELETE", "/v1/models/tiny-gpt2", "GET"),
        ]:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s:
                s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                head, _, body = read_until_closed(s).decode().partition("\r\n\r\n")
            assert head.startswith("HTTP/1.1 405") and f"\r\nallow: {allow.lower()}" in head.lower(), head
            assert json.loads(body)["error"]["type"] == "invalid_request_error"
        before = srv.app.stats()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as s:  # not HTTP: uvicorn's 400
            s.sendall(b"GET /v1/models x HTTP/1.1\r\n\r\n")
            assert read_until_closed(s).startswith(b"HTTP/1.1 400")
        after = srv.app.stats()
        assert after["http_4xx"] == before["http_4xx"] + 1 and after["http_5xx"] == before["http_5xx"] == 0
    finally:
        stop(srv)


def test_connection_settings_are_checked():
    from ftcot_jax import cli
    from ftcot_jax.config.serve import ServeConfig

    for kw, msg in [(dict(read_timeout_s=0), "read_timeout_s must be > 0"), (dict(max_connections=0), "max_conn")]:
        with pytest.raises(ValueError, match=msg):
            ServeConfig(model_id="m", **kw)
    args = cli.build_parser().parse_args(["serve", "ckpt", "--read-timeout-s", "5", "--max-connections", "9"])
    assert (args.read_timeout_s, args.max_connections) == (5.0, 9)
