"""The teacher cache directory: every teacher answer of one (task, teacher model, temperature) as one
tf.train.Example (teacher/records.py) in TFRecord files.

Layout (documented for users in docs/cache_format.md):

    <root>/<teacher model slug>/t<temperature>/<task>/
        cache.json                         identity: schema_version, task, teacher_model, temperature
        records-<UTC time>-<pid>-<rand>.tfrecord   one file per writing process, appended + flushed per record
        failed.jsonl                       one line per failed attempt (still failed = no record for the key)

On an object store (`gs://...`, paths.py) objects cannot be appended to, so each answer is written as its own
immutable segment object `records-<UTC time>-<writer>-s<seq>.tfrecord` (teacher/segments.py) before append()
returns (a kill loses nothing that was answered; an object write is whole or absent, so no record is ever
torn). A writer that closes cleanly merges its own segments into one `records-<UTC time>-<writer>.tfrecord`
and deletes them; readers read every object, so a writer killed during that merge leaves only duplicate copies of the
same records (the first wins). Failed attempts go to `failed-<writer>.jsonl`, one object per writer.

A writing process never appends to another process's file (it holds an flock on its own), so the
truncated tail a crash may leave is always the end of a file that nobody writes again: readers warn and
drop it, every record before it stays readable, and the next writer cuts the torn tail off (so the cache
verifies clean after a rerun). Teacher API keys are never stored (teacher/scrub.py): string fields and error texts are
scrubbed of the values of *_API_KEY / *_TOKEN / *_SECRET environment variables (and of keys passed to
register_secret), and endpoint URLs lose credentials and query strings.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
import warnings
from pathlib import Path

from ftcot_jax import tfrecord
from ftcot_jax.files import write_bytes_atomic, write_json_atomic
from ftcot_jax.paths import as_path, is_remote, writer_id
from ftcot_jax.teacher.records import PROTOCOLS, SCHEMA_VERSION, TeacherRecord, record_from_example, record_to_example
from ftcot_jax.teacher.scrub import scrub, scrubbed, secret_values
from ftcot_jax.teacher.segments import Segments, compact_segments


def slug(text: str) -> str:
    """A file-name-safe form of a model name ("meta-llama/Llama-3.1-8B" -> "meta-llama_Llama-3.1-8B")."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    if not s:
        raise ValueError(f"teacher model name {text!r} has no usable characters")
    return s


def temperature_dir(temperature: float) -> str:
    return f"t{float(temperature):g}"


class TeacherCache:
    """Teacher answers of one (task, teacher model, temperature); see the module docstring for the layout."""

    def __init__(self, root, *, task: str, teacher_model: str, temperature: float):
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", task or ""):
            raise ValueError(f"task name {task!r} cannot name a cache directory; expected a task key like 'gsm8k'")
        self.task, self.teacher_model, self.temperature = task, teacher_model, round(float(temperature), 6)
        self.path = as_path(root) / slug(teacher_model) / temperature_dir(self.temperature) / task
        self.remote = is_remote(self.path)
        self._writer: tfrecord.RecordWriter | None = None
        self._segments: Segments | None = None  # the writer on an object store
        self._failed_lines: list[str] = []  # this writer's failed-attempt lines (object store)
        self._failed_name = f"failed-{writer_id()}.jsonl"
        self._secrets = secret_values()  # read once: the environment of a run does not change
        self._check_identity()

    @classmethod
    def from_dir(cls, path) -> TeacherCache:
        """Opens an existing cache directory (the one holding cache.json)."""
        path = as_path(path)
        meta = _read_meta(path / "cache.json")
        root = path.parent.parent.parent
        cache = cls(root, task=meta["task"], teacher_model=meta["teacher_model"], temperature=meta["temperature"])
        same = str(cache.path) == str(path) if cache.remote else cache.path.resolve() == path.resolve()
        if not same:
            raise ValueError(f"{path}/cache.json names a cache that belongs at {cache.path}; was the directory moved?")
        return cache

    def _identity(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "task": self.task,
            "teacher_model": self.teacher_model,
            "temperature": self.temperature,
        }

    def _check_identity(self) -> None:
        meta_path = self.path / "cache.json"
        if meta_path.exists():
            meta = _read_meta(meta_path)
            if meta != self._identity():
                raise ValueError(f"{meta_path} describes {meta}; expected {self._identity()}")

    def _ensure_dir(self) -> None:
        meta_path = self.path / "cache.json"
        if not meta_path.exists():  # each write is atomic; concurrent writers write the same identity
            write_json_atomic(meta_path, self._identity(), indent=1)

    # -- files

    def record_files(self) -> list:
        return sorted(self.path.glob("records-*.tfrecord")) if self.path.is_dir() else []

    def _new_record_file(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return self.path / f"records-{stamp}-{os.getpid()}-{secrets.token_hex(3)}.tfrecord"

    # -- writing

    def append(self, rec: TeacherRecord) -> None:
        """Writes one record and flushes it to the OS before returning."""
        self._validate(rec)
        rec = scrubbed(rec, self._secrets)
        if self.remote:
            if self._segments is None:
                self._ensure_dir()
                self._segments = Segments(self.path)
            self._segments.write([record_to_example(rec)])
            return
        if self._writer is None:
            self._open_writer()
        self._writer.write(record_to_example(rec))

    def append_all(self, recs) -> int:
        """append() for many records; on an object store they go out as one segment object (an import of a
        released file is one upload, not one per answer). Returns the number written."""
        recs = list(recs)
        if not self.remote:
            for r in recs:
                self.append(r)
            return len(recs)
        for r in recs:
            self._validate(r)
        if recs:
            if self._segments is None:
                self._ensure_dir()
                self._segments = Segments(self.path)
            self._segments.write([record_to_example(scrubbed(r, self._secrets)) for r in recs])
        return len(recs)

    def repair(self) -> list[tuple[Path, int]]:
        """Cuts torn last records (left by a killed writer) off files no live process writes; returns
        (file, bytes removed) per repaired file. Other corruption is left alone and raises. On an object store
        nothing is ever torn; instead the segments of writers that did not close (killed) are merged into one
        object (run it while no writer is active)."""
        if self.remote:
            compact_segments(self.path)
            return []
        return [(p, cut) for p in self.record_files() if (cut := tfrecord.repair_tail(p))]

    def _open_writer(self) -> None:
        # A writer starts by repairing earlier crashes, so that after a rerun the cache verifies clean.
        self._ensure_dir()
        for path in self.record_files():
            try:
                cut = tfrecord.repair_tail(path)
            except tfrecord.RecordCorruptError as e:
                warnings.warn(f"{e}; left as is (see `ftcot cache verify`)", RuntimeWarning, stacklevel=3)
                continue
            if cut:
                warnings.warn(
                    f"{path}: removed a torn last record ({cut} bytes) left by a killed writer; "
                    "that item is asked for again",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self._writer = tfrecord.RecordWriter(self._new_record_file(), lock=True)

    def _validate(self, rec: TeacherRecord) -> None:
        if not isinstance(rec, TeacherRecord):
            raise TypeError(f"TeacherCache.append expects a TeacherRecord, got {type(rec).__name__}")
        want = {"task": self.task, "teacher_model": self.teacher_model}
        for name, value in want.items():
            if getattr(rec, name) != value:
                raise ValueError(f"record for {name}={getattr(rec, name)!r} does not belong in the cache for {value!r}")
        if abs(rec.temperature - self.temperature) > 1e-6:
            raise ValueError(f"record temperature {rec.temperature} does not match the cache's {self.temperature}")
        if rec.protocol not in PROTOCOLS:
            raise ValueError(f"record protocol {rec.protocol!r}; expected one of {PROTOCOLS}")
        if rec.sample_index < 0 or rec.completion_index < 0:
            raise ValueError(f"record key {rec.key} has a negative index")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._segments is not None:
            self._segments.close()
            self._segments = None

    def __enter__(self) -> TeacherCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def mark_failed(self, sample_index: int, completion_index: int, error: str) -> None:
        self._ensure_dir()
        line = json.dumps(
            {
                "sample_index": int(sample_index),
                "completion_index": int(completion_index),
                "error": scrub(str(error), self._secrets)[:2000],
                "timestamp": time.time(),
            }
        )
        if self.remote:  # no append on a store: this writer's own object, rewritten whole
            self._failed_lines.append(line + "\n")
            write_bytes_atomic(self.path / self._failed_name, "".join(self._failed_lines).encode("utf-8"))
            return
        with open(self.path / "failed.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")  # one write of a whole line: a crash can only cut the last line

    # -- reading

    def _raw(self, on_corrupt: str = "warn"):
        for path in self.record_files():
            for i, data in enumerate(tfrecord.read_records(path, on_corrupt=on_corrupt)):
                yield path, i, data

    def records(self) -> list[TeacherRecord]:
        """Every cached record, the first one of each (sample_index, completion_index) key, in
        (sample_index, completion_index) order. Unreadable tails are dropped with a warning."""
        seen: dict[tuple[int, int], TeacherRecord] = {}
        for path, i, data in self._raw():
            rec = record_from_example(data, where=f"{path} record {i}")
            seen.setdefault(rec.key, rec)
        return [seen[k] for k in sorted(seen)]

    def done_keys(self) -> set[tuple[int, int]]:
        """(sample_index, completion_index) pairs already answered (decodes only the two key fields)."""
        done = set()
        for _, _, data in self._raw():
            fmap = tfrecord.Example.FromString(data).features.feature
            done.add((fmap["sample_index"].int64_list.value[0], fmap["completion_index"].int64_list.value[0]))
        return done

    def failed(self) -> list[dict]:
        """Items whose last attempt failed and that have no record yet: dicts with sample_index,
        completion_index, error (the latest), attempts and timestamp, in key order."""
        latest: dict[tuple[int, int], dict] = {}
        for path in self._failed_files():
            self._read_failed(path, latest)
        done = self.done_keys() if latest else set()
        return [latest[k] for k in sorted(latest) if k not in done]

    def _failed_files(self) -> list:
        local = self.path / "failed.jsonl"
        files = [local] if local.exists() else []
        if self.remote and self.path.is_dir():
            files += sorted(self.path.glob("failed-*.jsonl"))
        return files

    def _read_failed(self, path, latest: dict) -> None:
        lines = path.read_text(encoding="utf-8").splitlines()
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (int(row["sample_index"]), int(row["completion_index"]))
            except (ValueError, KeyError, TypeError):
                if lineno == len(lines):  # a crash mid-write can only cut the last line
                    warnings.warn(f"{path}: ignoring a cut-off last line {lineno}", RuntimeWarning, stacklevel=3)
                    continue
                raise ValueError(f"{path}: line {lineno} is not a failed-item entry") from None
            attempts = latest.get(key, {}).get("attempts", 0) + 1
            latest[key] = {
                "sample_index": key[0],
                "completion_index": key[1],
                "error": row.get("error", ""),
                "attempts": attempts,
                "timestamp": row.get("timestamp", 0.0),
            }

    def verify(self) -> dict:
        """CRC-checks and decodes every record; raises RecordCorruptError (file + offset) or ValueError.
        Returns counts: files, records, duplicates."""
        n = 0
        keys = set()
        dups = 0
        for path, i, data in self._raw(on_corrupt="raise"):
            rec = record_from_example(data, where=f"{path} record {i}")
            if (rec.task, rec.teacher_model) != (self.task, self.teacher_model):
                raise ValueError(
                    f"{path} record {i} is for {rec.task}/{rec.teacher_model}; the cache is "
                    f"{self.task}/{self.teacher_model}"
                )
            n += 1
            dups += rec.key in keys
            keys.add(rec.key)
        return {"files": len(self.record_files()), "records": n, "duplicates": dups}


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; expected a teacher cache directory") from None
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not valid JSON; expected the cache identity file") from None
    need = {"schema_version", "task", "teacher_model", "temperature"}
    if not isinstance(meta, dict) or not need <= set(meta):
        raise ValueError(f"{path} lacks {sorted(need - set(meta or {}))}; expected the cache identity file")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {meta['schema_version']}; this version reads {SCHEMA_VERSION}")
    return {k: meta[k] for k in ("schema_version", "task", "teacher_model", "temperature")}


DEFAULT_CACHE_DIR = "teacher_cache"  # relative to the working directory; $FTCOT_TEACHER_CACHE overrides


def default_cache_dir() -> str:
    """The cache root when none is given: $FTCOT_TEACHER_CACHE, else ./teacher_cache."""
    return os.environ.get("FTCOT_TEACHER_CACHE") or DEFAULT_CACHE_DIR
