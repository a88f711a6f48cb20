"""TFRecord files and tf.train.Example messages, without TensorFlow.

Framing of one record (TensorFlow's `tensorflow/core/lib/io/record_writer.cc`, little-endian):

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

masked_crc(x) = ((crc >> 15 | crc << 17) + 0xA282EAD8) mod 2**32, crc = CRC-32C (Castagnoli).
Examples are encoded with protobuf message classes built at import time from a copy of
`tensorflow/core/example/{example,feature}.proto` in a private descriptor pool, so the bytes are
exactly what `tf.train.Example.FromString` reads, and nothing collides with TensorFlow if it is loaded.

"""

from __future__ import annotations

import mmap
import os
import struct
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ftcot_jax.paths import as_path, is_remote

try:  # POSIX advisory locks guard files of live writers from repair_tail; elsewhere there are none
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_HEADER = struct.Struct("<QI")  # length, masked crc of length
_MASK_DELTA = 0xA282EAD8


class RecordCorruptError(ValueError):
    """A record failed its CRC or ends early; carries the file and the byte offset of the record."""

    def __init__(self, path, offset: int, problem: str):
        super().__init__(f"{path}: corrupt record at byte offset {offset}: {problem}")
        self.path, self.offset, self.problem = str(path), offset, problem

    @property
    def truncated(self) -> bool:
        """The file ends inside this record: the signature of a writer killed mid-append."""
        return self.problem.startswith("truncated")


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record's bytes on disk."""
    length = _LEN.pack(len(data))
    return length + _CRC.pack(masked_crc32c(length)) + data + _CRC.pack(masked_crc32c(data))


class RecordWriter:
    """Appends framed records to `path`; every write is flushed to the OS at once (fsync=True also
    syncs to disk), so a killed process loses at most the record it was writing.

    On an object store (paths.is_remote), where an object cannot be appended to, the writer keeps the
    file's bytes and rewrites the whole object when flushed: at most every `remote_flush_s` seconds on
    write, and on flush() and close(). A reader sees the object of the last flush, never a torn one."""

    def __init__(
        self, path, append: bool = True, *, fsync: bool = False, lock: bool = False, remote_flush_s: float = 0.0
    ):
        self.path = as_path(path)
        self._remote = is_remote(self.path)
        if self._remote:
            self._buf = bytearray(self.path.read_bytes() if append and self.path.exists() else b"")
            self._dirty, self._last_upload, self._remote_flush_s = True, 0.0, remote_flush_s
            self._f = None
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab" if append else "wb")
        self._fsync = fsync
        if lock and fcntl is not None:  # advisory: tells repair_tail that a live process owns this file
            try:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._f.close()
                raise RuntimeError(f"{self.path} is being written by another process") from None

    def write(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"RecordWriter.write expects bytes, got {type(data).__name__}")
        if self._remote:
            self._buf += frame(bytes(data))
            self._dirty = True
            if time.monotonic() - self._last_upload >= self._remote_flush_s:
                self.flush()
            return
        # One write() call per record: the tail after a crash is a prefix of one record, never a mix.
        self._f.write(frame(bytes(data)))
        self.flush()

    def flush(self) -> None:
        if self._remote:
            if self._dirty:
                self.path.write_bytes(bytes(self._buf))  # one object write: whole or not at all
                self._dirty, self._last_upload = False, time.monotonic()
            return
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._remote:
            self.flush()
            return
        if not self._f.closed:
            self.flush()
            self._f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(path, *, on_corrupt: str = "warn") -> Iterator[bytes]:
    """Yields every record's data in file order, checking both CRCs of each record.

    At the first bad record (CRC mismatch or a record cut short, e.g. by a crash while appending):
    on_corrupt="warn" warns naming the file and byte offset and stops (nothing after a bad record can be
    framed reliably, since its length field may itself be wrong); on_corrupt="raise" raises
    RecordCorruptError (used by `ftcot cache verify`).
    """
    if on_corrupt not in ("warn", "raise"):
        raise ValueError(f"on_corrupt must be 'warn' or 'raise', got {on_corrupt!r}")
    path = as_path(path)
    if is_remote(path):  # an object is read whole (objects are small: sample files, cache segments)
        data = path.read_bytes()
        yield from _iter_frames(data, len(data), path, on_corrupt)
        return
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        # mmap: one system call for the whole file; slicing copies only each record's payload.
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            yield from _iter_frames(buf, size, path, on_corrupt)


def _iter_frames(buf, size: int, path: Path, on_corrupt: str) -> Iterator[bytes]:
    value, unpack_header, unpack_crc = google_crc32c.value, _HEADER.unpack_from, _CRC.unpack_from
    pos = 0
    while pos < size:
        problem = None
        if pos + 12 > size:
            problem = f"truncated header ({size - pos} of 12 bytes)"
        else:
            length, len_crc = unpack_header(buf, pos)
            crc = value(buf[pos : pos + 8])
            if len_crc != (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF:
                problem = "length CRC mismatch"
            elif pos + 16 + length > size:
                problem = f"truncated data ({size - pos - 12} of {length + 4} bytes)"
            else:
                data = buf[pos + 12 : pos + 12 + length]
                crc = value(data)
                if unpack_crc(buf, pos + 12 + length)[0] != (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF:
                    problem = "data CRC mismatch"
        if problem is not None:
            err = RecordCorruptError(path, pos, problem)
            if on_corrupt == "raise":
                raise err
            warnings.warn(f"{err}; ignoring the remaining {size - pos} bytes", RuntimeWarning, stacklevel=3)
            return
        yield data
        pos += 16 + length


def repair_tail(path) -> int:
    """Cuts a torn last record (a file that ends inside a record) off `path`; returns the number of
    bytes removed (0 when the file is whole). Any other corruption (a CRC mismatch) raises
    RecordCorruptError and changes nothing: records after it may be intact and need a human.
    Skips (returns 0) a file another process holds with RecordWriter(lock=True). An object on a store is
    never torn (an object write is whole or absent): 0."""
    if is_remote(path):
        return 0
    with open(path, "r+b") as f:
        try:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0
        try:
            for _ in read_records(path, on_corrupt="raise"):
                pass
        except RecordCorruptError as e:
            if not e.truncated:
                raise
            size = os.fstat(f.fileno()).st_size
            f.truncate(e.offset)
            return size - e.offset
        return 0


def count_records(path) -> int:
    """Number of valid records (raises RecordCorruptError on any corruption)."""
    return sum(1 for _ in read_records(path, on_corrupt="raise"))


# --- tf.train.Example -----------------------------------------------------------------------


def _build_example_classes():
    """Message classes for tensorflow.Example from a hand-written descriptor (field numbers and
    packing as in TensorFlow's feature.proto / example.proto)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="ftcot_tf_example.proto", package="tensorflow", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    rep, opt = T.LABEL_REPEATED, T.LABEL_OPTIONAL

    def msg(name, *flds, oneof=None, options=None):
        m = fdp.message_type.add(name=name)
        if options is not None:
            m.options.CopyFrom(options)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for fname, number, label, ftype, type_name in flds:
            f = m.field.add(name=fname, number=number, label=label, type=ftype)
            if type_name:
                f.type_name = type_name
            if oneof:
                f.oneof_index = 0
        return m

    msg("BytesList", ("value", 1, rep, T.TYPE_BYTES, None))
    msg("FloatList", ("value", 1, rep, T.TYPE_FLOAT, None))  # proto3: packed by default, as in TF
    msg("Int64List", ("value", 1, rep, T.TYPE_INT64, None))
    msg(
        "Feature",
        ("bytes_list", 1, opt, T.TYPE_MESSAGE, ".tensorflow.BytesList"),
        ("float_list", 2, opt, T.TYPE_MESSAGE, ".tensorflow.FloatList"),
        ("int64_list", 3, opt, T.TYPE_MESSAGE, ".tensorflow.Int64List"),
        oneof="kind",
    )
    features = msg("Features", ("feature", 1, rep, T.TYPE_MESSAGE, ".tensorflow.Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=opt, type=T.TYPE_STRING)
    entry.field.add(name="value", number=2, label=opt, type=T.TYPE_MESSAGE, type_name=".tensorflow.Feature")
    msg("Example", ("features", 1, opt, T.TYPE_MESSAGE, ".tensorflow.Features"))

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _build_example_classes()


def _kind(name: str, v) -> str:
    if isinstance(v, bool):  # bool is an int subclass; refuse the ambiguity instead of guessing
        raise TypeError(f"feature '{name}': bool is not a tf.train.Example type; use int 0/1")
    if isinstance(v, int):
        return "int64_list"
    if isinstance(v, float):
        return "float_list"
    if isinstance(v, (str, bytes, bytearray)):
        return "bytes_list"
    raise TypeError(f"feature '{name}': unsupported value type {type(v).__name__}; expected int, float, str or bytes")


def encode_example(features: dict) -> bytes:
    """A tf.train.Example with one feature per key. int -> int64_list, float -> float_list (float32, as
    TF stores it), str (UTF-8) / bytes -> bytes_list; a list becomes a multi-value feature of its
    elements' common type (an empty list is a feature with no kind, which TF accepts)."""
    ex = Example()
    fmap = ex.features.feature
    for name, value in features.items():
        if not isinstance(name, str):
            raise TypeError(f"feature names must be str, got {name!r}")
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        feat = fmap[name]  # map access creates the entry even when `values` is empty
        if not values:
            continue
        kinds = {_kind(name, v) for v in values}
        if len(kinds) != 1:
            raise TypeError(f"feature '{name}': mixed value types in one list ({sorted(kinds)})")
        kind = kinds.pop()
        if kind == "bytes_list":
            values = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]
        getattr(feat, kind).value.extend(values)
    return ex.SerializeToString()


def decode_example(data: bytes) -> dict:
    """Feature name -> list of values: bytes for bytes_list, float (float32 precision) for float_list,
    int for int64_list, [] for a feature without values. Strings come back as bytes (the wire
    format cannot tell str from bytes): decode them where the schema says a field is text."""
    ex = Example.FromString(data)
    out = {}
    for name, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        out[name] = list(getattr(feat, kind).value) if kind else []
    return out
