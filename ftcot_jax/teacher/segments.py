"""The teacher cache's records on an object store (`gs://...`, paths.py), where objects cannot be appended to:
each answer is its own immutable segment object `records-<UTC time>-<writer>-s<seq>.tfrecord`, written before
append() returns (a kill loses nothing that was answered; an object write is whole or absent, so no record is
ever torn). A writer that closes cleanly merges its own segments into one `records-<UTC time>-<writer>.tfrecord`
and deletes them; `compact_segments` merges those that killed writers left."""

from __future__ import annotations

import re
import time

from ftcot_jax import tfrecord
from ftcot_jax.files import write_bytes_atomic
from ftcot_jax.paths import as_path, writer_id


class Segments:
    """The writer of one process on an object store: every write() is a new immutable segment object;
    close() merges this writer's segments into one object and deletes them."""

    def __init__(self, cache_dir):
        self.dir = cache_dir
        self.name = f"records-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{writer_id()}"
        self.segments: list = []
        self.frames: list[bytes] = []

    def write(self, examples: list[bytes]) -> None:
        data = b"".join(tfrecord.frame(e) for e in examples)
        path = self.dir / f"{self.name}-s{len(self.segments):06d}.tfrecord"
        write_bytes_atomic(path, data)  # durable when this returns
        self.segments.append(path)
        self.frames.append(data)

    def close(self) -> None:
        if len(self.segments) > 1:
            write_bytes_atomic(self.dir / f"{self.name}.tfrecord", b"".join(self.frames))
            for p in self.segments:
                p.unlink(missing_ok=True)
        self.segments, self.frames = [], []


_SEGMENT = re.compile(r"^records-.*-s\d{6}\.tfrecord$")


def compact_segments(cache_dir) -> int:
    """Merges the segment objects in `cache_dir` (left by writers that were killed) into one object, then
    deletes them; returns how many were merged. Only for object stores, and while no writer is active."""
    cache_dir = as_path(cache_dir)
    segs = sorted(p for p in cache_dir.glob("records-*.tfrecord") if _SEGMENT.match(p.name))
    if len(segs) < 2:
        return 0
    data = b"".join(p.read_bytes() for p in segs)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    write_bytes_atomic(cache_dir / f"records-{stamp}-{writer_id()}-compacted.tfrecord", data)
    for p in segs:
        p.unlink(missing_ok=True)
    return len(segs)
