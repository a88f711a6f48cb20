"""Atomic file writes: the one place that writes JSON, JSONL and text so a reader never sees half a file.

Each writer puts the content in a temporary file of its own process beside the target (fsynced), then renames
it over the target; a crash leaves the old file or the new one, never a torn one. On an object store (`gs://`, see
paths.py) there is no rename, and none is needed: an object write is atomic, the whole object or nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable

from ftcot_jax.paths import AnyPath, as_path, is_remote


def write_bytes_atomic(path: str | AnyPath, data: bytes) -> AnyPath:
    """Write `data` to `path` atomically, creating its parent folders (on a store: one object write)."""
    path = as_path(path)
    if is_remote(path):
        path.write_bytes(bytes(data))
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two writers of one file never collide
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_text_atomic(path: str | AnyPath, text: str) -> AnyPath:
    """Write `text` (UTF-8) to `path` atomically, creating its parent folders."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | AnyPath, obj, *, indent: int | None = 2, sort_keys: bool = False) -> AnyPath:
    """Write `obj` as JSON (non-JSON values such as paths as their `str`) atomically, newline-terminated."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")


def write_jsonl_atomic(path: str | AnyPath, records: Iterable) -> AnyPath:
    """Write one JSON object per line atomically."""
    return write_text_atomic(path, "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in records))


def open_append(path: str | AnyPath, *, remote_flush_s: float = 0.0):
    """A text file to append lines to that readers can follow while it grows: a local file is opened in append
    mode, line-buffered; on an object store, where nothing can be appended, an `ObjectAppender`."""
    path = as_path(path)
    if is_remote(path):
        return ObjectAppender(path, flush_every_s=remote_flush_s)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", buffering=1, encoding="utf-8")


class ObjectAppender:
    """Appending to an object: the earlier content plus the new text, rewritten whole (one atomic object write)
    when `flush_every_s` seconds have passed since the last write of the object, and always on flush() and
    close(). A kill loses at most what was written since the last rewrite."""

    def __init__(self, path: AnyPath, *, flush_every_s: float = 0.0):
        self.path, self.flush_every_s = path, flush_every_s
        self._text = path.read_text(encoding="utf-8") if path.exists() else ""
        self._dirty, self._last = False, time.monotonic()

    def write(self, text: str) -> int:
        self._text += text
        self._dirty = True
        if time.monotonic() - self._last >= self.flush_every_s:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._dirty:
            write_text_atomic(self.path, self._text)
            self._dirty, self._last = False, time.monotonic()

    def close(self) -> None:
        self.flush()
