"""The teacher cache: every teacher answer as one tf.train.Example in TFRecord files.

Layout (documented for users in docs/cache_format.md):

    <root>/<teacher model slug>/t<temperature>/<task>/
        cache.json                         identity: schema_version, task, teacher_model, temperature
        records-<UTC time>-<pid>-<rand>.tfrecord   one file per writing process, appended + flushed per record
        failed.jsonl                       one line per failed attempt (still failed = no record for the key)

On an object store (`gs://...`, paths.py) objects cannot be appended to, so each answer is written as its own
immutable segment object `records-<UTC time>-<writer>-s<seq>.tfrecord` before append() returns (a kill
loses nothing that was answered; an object write is whole or absent, so no record is ever torn). A writer
that closes cleanly merges its own segments into one `records-<UTC time>-<writer>.tfrecord` and deletes
them; readers read every object, so a writer killed during that merge leaves only duplicate copies of the
same records (the first wins). Failed attempts go to `failed-<writer>.jsonl`, one object per writer.

A writing process never appends to another process's file (it holds an flock on its own), so the
truncated tail a crash may leave is always the end of a file that nobody writes again: readers warn and
drop it, every record before it stays readable, and the next writer cuts the torn tail off (so the cache
verifies clean after a rerun). Teacher API keys are never stored: string fields and error texts are
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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ftcot_jax import tfrecord
from ftcot_jax.files import write_bytes_atomic, write_json_atomic
from ftcot_jax.paths import as_path, is_remote, writer_id

SCHEMA_VERSION = 1
PROTOCOLS = ("completions", "chat", "batch", "reference")


@dataclass(frozen=True)
class TeacherRecord:
    task: str
    split: str
    sample_index: int
    completion_index: int
    teacher_model: str
    endpoint: str
    protocol: str  # "completions" | "chat" | "batch" | "reference"
    question: str
    gold_answer: str
    reasoning_prompt: str
    rationale: str
    reasoning_finish_reason: str
    answer_prompt: str
    answer_text: str
    finish_reason: str
    temperature: float
    seed: int  # -1 when none
    prompt_tokens: int
    completion_tokens: int
    timestamp: float  # unix seconds

    @property
    def key(self) -> tuple[int, int]:
        return (self.sample_index, self.completion_index)


_FIELDS = tuple((f.name, f.type) for f in fields(TeacherRecord))
_STR_FIELDS = tuple(n for n, t in _FIELDS if t == "str")
_INT_FIELDS = tuple(n for n, t in _FIELDS if t == "int")


# On-disk schema v1: feature name -> tf.train.Example list kind (every feature holds exactly one value).
FEATURES: dict[str, str] = {
    **{n: "bytes" for n in _STR_FIELDS},
    **{n: "int64" for n in _INT_FIELDS},
    "temperature": "float",
    "timestamp_us": "int64",
    "schema_version": "int64",
}


def record_to_example(rec: TeacherRecord) -> bytes:
    """Schema v1: str fields -> bytes_list (UTF-8), int fields -> int64_list, temperature -> float_list
    (float32), timestamp -> int64 `timestamp_us` (float32 cannot hold unix time), schema_version int64."""
    ex = tfrecord.Example()
    fmap = ex.features.feature
    for n in _STR_FIELDS:
        fmap[n].bytes_list.value.append(getattr(rec, n).encode("utf-8"))
    for n in _INT_FIELDS:
        fmap[n].int64_list.value.append(getattr(rec, n))
    fmap["temperature"].float_list.value.append(float(rec.temperature))
    fmap["timestamp_us"].int64_list.value.append(int(round(rec.timestamp * 1e6)))
    fmap["schema_version"].int64_list.value.append(SCHEMA_VERSION)
    return ex.SerializeToString()


def record_from_example(data: bytes, where: str = "record") -> TeacherRecord:
    try:
        fmap = tfrecord.Example.FromString(data).features.feature
    except Exception:
        raise ValueError(f"{where}: not a tf.train.Example") from None
    # Direct access by schema (twice as fast as a generic decode); any missing or mistyped feature
    # surfaces as an IndexError and is then named precisely.
    try:
        version = fmap["schema_version"].int64_list.value[0]
        if version != SCHEMA_VERSION:
            raise ValueError(f"{where}: schema_version {version}; this version of ftcot reads {SCHEMA_VERSION}")
        kw = {n: fmap[n].bytes_list.value[0].decode("utf-8") for n in _STR_FIELDS}
        kw.update({n: fmap[n].int64_list.value[0] for n in _INT_FIELDS})
        # Temperatures are short decimals; undo the float32 rounding (0.699999988 -> 0.7).
        kw["temperature"] = round(fmap["temperature"].float_list.value[0], 6)
        kw["timestamp"] = fmap["timestamp_us"].int64_list.value[0] / 1e6
    except IndexError:
        feats = tfrecord.decode_example(data)
        kinds = {"bytes": bytes, "int64": int, "float": float}
        for name in sorted(FEATURES, key=lambda n: n != "schema_version"):
            kind = FEATURES[name]
            v = feats.get(name)
            if v is None or len(v) != 1 or not isinstance(v[0], kinds[kind]):
                raise ValueError(
                    f"{where}: no single-valued {kind} feature '{name}'; expected a teacher cache record"
                ) from None
        raise
    except UnicodeDecodeError:
        raise ValueError(f"{where}: a text feature is not UTF-8") from None
    return TeacherRecord(**kw)


# --- secrets ----------------------------------------------------------------------------------


_REGISTERED: set[str] = set()


def register_secret(value: str | None) -> None:
    """Adds a key that is not in a *_API_KEY / *_TOKEN / *_SECRET variable (e.g. `--api-key-env MYVAR`)
    to what caches opened afterwards scrub."""
    if value and len(value) >= 8:
        _REGISTERED.add(value)


def _secret_values() -> list[str]:
    names = [k for k in os.environ if k.endswith(("_API_KEY", "_TOKEN", "_SECRET")) or k == "OPENAI_API_KEY"]
    values = {os.environ[k] for k in names if len(os.environ[k]) >= 8} | _REGISTERED
    return sorted(values, key=len, reverse=True)


_KEYLIKE = re.compile(r"(?i)(bearer\s+|api[-_]?key[=:]\s*)[A-Za-z0-9._\-]{8,}")


def scrub(text: str, secret_values: list[str] | None = None) -> str:
    """Removes API key values (from the environment) and bearer tokens / api-key=... from a text
    (error messages, endpoints)."""
    return _KEYLIKE.sub(r"\1[redacted]", _remove_values(text, secret_values))


def _remove_values(text: str, secret_values: list[str] | None = None) -> str:
    for value in _secret_values() if secret_values is None else secret_values:
        if value in text:
            text = text.replace(value, "[redacted]")
    return text


def clean_endpoint(url: str, secret_values: list[str] | None = None) -> str:
    """An endpoint URL without user:password@ and without a query string (some gateways put keys there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url, secret_values)
    if not parts.scheme:
        return scrub(url, secret_values)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return scrub(urlunsplit((parts.scheme, netloc, parts.path, "", "")), secret_values)


# --- the cache ------------------------------------------------------------------------------


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
        self._segments: _Segments | None = None  # the writer on an object store
        self._failed_lines: list[str] = []  # this writer's failed-attempt lines (object store)
        self._failed_name = f"failed-{writer_id()}.jsonl"
        self._secrets = _secret_values()  # read once: the environment of a run does not change
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
        if self.remote:  # an object write is atomic; concurrent writers write the same identity
            if not meta_path.exists():
                write_json_atomic(meta_path, self._identity(), indent=1)
            return
        if not meta_path.exists():
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = meta_path.with_name(f"cache.json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._identity(), indent=1) + "\n")
            os.replace(tmp, meta_path)

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
        rec = _scrubbed(rec, self._secrets)
        if self.remote:
            if self._segments is None:
                self._ensure_dir()
                self._segments = _Segments(self.path)
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
                self._segments = _Segments(self.path)
            self._segments.write([record_to_example(_scrubbed(r, self._secrets)) for r in recs])
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


def _scrubbed(rec: TeacherRecord, secret_values: list[str]) -> TeacherRecord:
    """Key values never reach the disk, whatever field they leaked into; endpoints lose credentials."""
    changes = {n: _remove_values(getattr(rec, n), secret_values) for n in _STR_FIELDS if n != "endpoint"}
    changes["endpoint"] = clean_endpoint(rec.endpoint, secret_values)
    changes = {k: v for k, v in changes.items() if v != getattr(rec, k)}
    if not changes:
        return rec
    d = asdict(rec)
    d.update(changes)
    return TeacherRecord(**d)


class _Segments:
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


def find_caches(root) -> list[TeacherCache]:
    """Every cache directory under `root` (found by its cache.json), sorted by path."""
    root = as_path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"cache root {root} does not exist")
    return [TeacherCache.from_dir(p.parent) for p in sorted(root.glob("*/*/*/cache.json"))]


DEFAULT_CACHE_DIR = "teacher_cache"  # relative to the working directory; $FTCOT_TEACHER_CACHE overrides


def default_cache_dir() -> str:
    """The cache root when none is given: $FTCOT_TEACHER_CACHE, else ./teacher_cache."""
    return os.environ.get("FTCOT_TEACHER_CACHE") or DEFAULT_CACHE_DIR
