"""`ftcot serve`: the OpenAI-compatible server."""

from __future__ import annotations

import os

from ftcot_jax.cli.common import CLIError
from ftcot_jax.config.serve import ServeConfig, default_model_id


def add_serve_parser(sub):
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server for a student (docs/serve.md)",
        description="Serve CHECKPOINT (a trained student: an `ftcot run` or `ftcot train` directory, "
        "RUN/train/<task>/<method>, a checkpoints/<step> directory or an exported student; or an HF-format "
        "directory, hub id, .gguf or smollm2-135m-instruct) on /v1/models, /v1/completions and "
        "/v1/chat/completions, batching concurrent requests and streaming tokens as they are decoded.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument(
        "--step", default="best", help="a trained student's checkpoint: best (default), last or a step number"
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $FTCOT_API_KEY; none if unset)"
    )
    p.add_argument("--model-id", default=None, help="model name clients send (default: checkpoint dir name)")
    p.add_argument("--max-batch", type=int, default=8, help="rows decoded together in one batch")
    p.add_argument("--max-new-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask")
    p.add_argument(
        "--max-prompt-tokens", type=int, default=None, help="longest prompt in tokens (default: model context - 1)"
    )
    p.add_argument(
        "--max-prompt-chars",
        type=int,
        default=None,
        help="longest prompt in characters, checked before tokenizing (default: 16 x max prompt tokens)",
    )
    p.add_argument("--max-n", type=int, default=8, help="largest n (completions per prompt)")
    p.add_argument(
        "--batch-window-ms", type=float, default=10.0, help="how long to wait for more requests to join a batch"
    )
    p.add_argument("--max-queue", type=int, default=1024, help="queued requests beyond this get a 503")
    p.add_argument(
        "--read-timeout-s",
        type=float,
        default=60.0,
        help="a request's headers and body must arrive within this many seconds, else 408 and the connection "
        "is closed (default 60)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=2048,
        help="open connections beyond this get a 503 at once (default 2048)",
    )
    p.add_argument(
        "--stream-every",
        type=int,
        default=16,
        help="decode steps between streamed chunks (default 16; off CPU the device decodes 16-step chunks)",
    )
    p.set_defaults(func=_run_serve)


def _step(value: str) -> str | int:
    if value in ("best", "last"):
        return value
    if value.isdigit():
        return int(value)
    raise CLIError(f"--step {value!r}: expected best, last or a step number")


def _run_serve(args):
    from ftcot_jax.serve import server  # JAX and the model code: only when serving

    if args.batch_window_ms < 0:
        raise CLIError(f"--batch-window-ms must be >= 0, got {args.batch_window_ms}")
    api_key = args.api_key if args.api_key is not None else (os.environ.get("FTCOT_API_KEY") or None)
    config = ServeConfig(
        model_id=args.model_id or default_model_id(args.checkpoint),
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_batch=args.max_batch,
        max_new_tokens_limit=args.max_new_tokens_limit,
        max_prompt_tokens=args.max_prompt_tokens,
        max_prompt_chars=args.max_prompt_chars,
        max_n=args.max_n,
        batch_window_s=args.batch_window_ms / 1000,
        max_queue=args.max_queue,
        stream_every=args.stream_every,
        read_timeout_s=args.read_timeout_s,
        max_connections=args.max_connections,
        step=_step(args.step),
    )
    server.serve(args.checkpoint, config)
    return 0


def add_parsers(sub) -> None:
    add_serve_parser(sub)
