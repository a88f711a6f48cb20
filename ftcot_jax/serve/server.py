"""Running `ftcot serve`: the engine, the App and the routes under uvicorn, bound to one socket.

`make_server` builds a `Server` (bound, not yet serving); `Server.start`/`stop` run it on a background thread
(tests, benchmarks), `serve` loads a student and runs it in the foreground until Ctrl-C.
"""

from __future__ import annotations

import resource
import socket
import sys
import threading
import time
from collections.abc import Callable

import uvicorn

from ftcot_jax.config.serve import ServeConfig
from ftcot_jax.models.api import max_positions
from ftcot_jax.serve import routes
from ftcot_jax.serve.engine import Engine
from ftcot_jax.serve.openai import App
from ftcot_jax.serve.protocol import protocol_class
from ftcot_jax.trained import load_student

GIL_SWITCH_INTERVAL_S = 0.0005
FD_RESERVE = 64  # open files besides the connections (the model's files, logs, the thread pool's pipes)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


class Server:
    """One bound server: `app` (the OpenAI App and its engine), `port`, and uvicorn to run them."""

    def __init__(self, app: App, config: ServeConfig, *, quiet: bool):
        self.app, self.config = app, config
        self.sock = _bind(config.host, config.port)
        self.port = self.sock.getsockname()[1]
        self.uvicorn = uvicorn.Server(
            uvicorn.Config(
                routes.build(app),
                http=protocol_class(
                    app.http, read_timeout_s=config.read_timeout_s, max_connections=config.max_connections
                ),
                ws="none",
                lifespan="off",
                proxy_headers=False,
                access_log=not quiet,
                log_level="warning" if quiet else "info",
                log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
                timeout_graceful_shutdown=5,
            )
        )
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve in this thread until Ctrl-C (or `stop`), then stop the engine."""
        try:
            self.uvicorn.run(sockets=[self.sock])
        finally:
            self.sock.close()
            self.app.engine.close()

    def start(self, timeout: float = 30.0) -> Server:
        """Serve on a background thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.run, name="ftcot-serve-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("ftcot serve: the HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)


def make_server(
    model,
    tokenizer,
    config: ServeConfig,
    *,
    trained=None,
    generate_fn: Callable | None = None,
    quiet: bool = False,
) -> Server:
    """Build (but do not start) the server for a model; `trained`: its `TrainedFormat` (a trained student)."""
    engine = Engine(
        model,
        tokenizer,
        max_batch=config.max_batch,
        batch_window_s=config.batch_window_s,
        max_queue=config.max_queue,
        stream_every=config.stream_every,
        generate_fn=generate_fn,
    )
    try:
        return Server(App(engine, config, max_positions(model), trained), config, quiet=quiet)
    except BaseException:
        engine.close()
        raise


def _allow_open_files(needed: int) -> None:
    """Raise this process's soft limit on open files to `needed` (within the hard limit), so that the
    connection cap, not the file limit, is what refuses connections; says so when the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            print(
                f"ftcot serve: warning: the open-file limit is {target}; --max-connections "
                f"{needed - FD_RESERVE} needs {needed} (raise `ulimit -n` or lower --max-connections)",
                file=sys.stderr,
            )


def serve(source: str, config: ServeConfig) -> None:
    """Load SOURCE (`ftcot_jax.trained.load_student`, at `config.step`) and serve it until interrupted."""
    # The event loop and the engine's worker share the GIL; at Python's default 5 ms switch interval the
    # worker waits up to that long for it after every decode chunk (streaming returns every few steps). This
    # process only serves, so it switches sooner (docs/serve.md has the measurement).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    _allow_open_files(config.max_connections + FD_RESERVE)
    student = load_student(source, step=config.step)
    server = make_server(student.model, student.tokenizer, config, trained=student.trained)
    host, port, limits = config.host, server.port, server.app.limits
    auth = "bearer key required" if config.api_key else "no API key"
    what = "" if student.trained is None else f", trained {student.trained.task}/{student.trained.method}"
    print(
        f"ftcot serve: model '{config.model_id}' ({student.source}{what}) on http://{host}:{port}/v1 ({auth}; "
        f"max batch {config.max_batch}, max_tokens <= {limits.max_new_tokens}, prompt <= "
        f"{limits.max_prompt_tokens} tokens)",
        file=sys.stderr,
        flush=True,
    )
    server.run()
