"""Atomic file writes: the one place that writes JSON, JSONL and text so a reader never sees half a file.

Each writer puts the content in a temporary file beside the target (fsynced), then renames it over the
target; a crash leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically, creating its parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, obj, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write `obj` as JSON (non-JSON values such as paths as their `str`) atomically, newline-terminated."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")


def write_jsonl_atomic(path: str | Path, records: Iterable) -> Path:
    """Write one JSON object per line atomically."""
    return write_text_atomic(path, "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in records))
