"""The server's schema: one `ServeConfig` describes a run of `ftcot serve` (bind address, auth, batching,
streaming, request and connection limits, and which checkpoint of a trained student). docs/serve.md describes
each limit and the error a request gets for crossing it.
"""

from __future__ import annotations

import dataclasses
import os

MAX_MAX_BATCH = 256


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model_id: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 8
    max_new_tokens_limit: int = 512
    max_prompt_tokens: int | None = None  # None: context length - 1
    max_prompt_chars: int | None = None  # None: 16 characters per allowed prompt token
    max_n: int = 8
    batch_window_s: float = 0.01  # how long the worker waits for more requests to join a batch
    max_queue: int = 1024  # queued requests beyond this get a 503
    request_timeout_s: float = 600.0
    read_timeout_s: float = 60.0  # a request's headers and body must arrive within this: else 408 and closed
    max_connections: int = 2048  # open connections beyond this get a 503 at once
    stream_every: int = 16  # decode steps between streamed chunks (off CPU the device runs 16-step chunks)
    step: str | int = "best"  # a trained student's checkpoint: best | last | a step number

    def __post_init__(self):
        for name in ("max_batch", "max_new_tokens_limit", "max_n", "max_queue", "stream_every", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_prompt_tokens", "max_prompt_chars"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_window_s < 0:
            raise ValueError(f"batch_window_s must be >= 0, got {self.batch_window_s}")
        for name in ("request_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_batch > MAX_MAX_BATCH:
            raise ValueError(f"max_batch must be <= {MAX_MAX_BATCH}, got {self.max_batch}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty")
        if not self.model_id:
            raise ValueError("model_id must not be empty")
        if self.step not in ("best", "last") and not (type(self.step) is int and self.step >= 0):
            raise ValueError(f"step must be best, last or a step number, got {self.step!r}")


def default_model_id(checkpoint: str) -> str:
    """The model id clients send when none is configured: the checkpoint directory's name, else the name
    models.load was given (e.g. smollm2-135m-instruct)."""
    path = os.path.normpath(checkpoint)
    return os.path.basename(path) if os.path.isdir(path) else checkpoint
