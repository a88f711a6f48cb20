"""TFRecord framing and tf.train.Example encoding (tfrecord.py).

The wire format is checked against independent implementations: the CRC-32C check value of the
standard, the `tfrecord` package (its own framing code, the `crc32c` CRC library and protobuf classes
generated from TensorFlow's .proto files), and TensorFlow itself when it is importable.
"""

import importlib.util
import struct
import sys
import types
import warnings

import pytest

from ftcot_jax import tfrecord as R


def _write(path, payloads):
    with R.RecordWriter(path, append=False) as w:
        for p in payloads:
            w.write(p)


def test_masked_crc_matches_the_crc32c_check_value():
    # CRC-32C("123456789") = 0xE3069283 (RFC 3720 check value); mask per TensorFlow's crc32c.h.
    crc = 0xE3069283
    assert R.masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_frame_layout_by_hand():
    crc32c = pytest.importorskip("crc32c")  # independent CRC implementation (test-only dependency)

    def mask(c):
        return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    data = b"hello tfrecord"
    length = struct.pack("<Q", len(data))
    expected = (
        length + struct.pack("<I", mask(crc32c.crc32c(length))) + data + struct.pack("<I", mask(crc32c.crc32c(data)))
    )
    assert R.frame(data) == expected


def test_round_trip_and_append(tmp_path):
    p = tmp_path / "a.tfrecord"
    payloads = [b"", b"x", b"\x00" * 1000, "é∑".encode()]
    _write(p, payloads[:2])
    with R.RecordWriter(p) as w:  # append=True by default
        for x in payloads[2:]:
            w.write(x)
    assert list(R.read_records(p)) == payloads
    assert R.count_records(p) == 4
    _write(p, [b"new"])  # append=False truncates
    assert list(R.read_records(p)) == [b"new"]


def test_writer_flushes_each_record(tmp_path):
    p = tmp_path / "f.tfrecord"
    w = R.RecordWriter(p)
    w.write(b"abc")
    assert list(R.read_records(p)) == [b"abc"]  # visible before close
    w.close()


@pytest.mark.parametrize("cut", [1, 5, 11, 12, 14, 18])
def test_truncated_tail_is_dropped_with_warning(tmp_path, cut):
    p = tmp_path / "t.tfrecord"
    _write(p, [b"first", b"second", b"third"])
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) - (19 - cut)])  # last record (16 + 5 bytes) cut after `cut` bytes
    offset = len(R.frame(b"first")) + len(R.frame(b"second"))
    with pytest.warns(RuntimeWarning, match=rf"t\.tfrecord: corrupt record at byte offset {offset}: truncated"):
        assert list(R.read_records(p)) == [b"first", b"second"]
    with pytest.raises(R.RecordCorruptError, match=f"offset {offset}"):
        list(R.read_records(p, on_corrupt="raise"))


@pytest.mark.parametrize("where,problem", [(3, "length CRC"), (14, "data CRC"), (20, "data CRC")])
def test_corrupt_byte_is_detected(tmp_path, where, problem):
    p = tmp_path / "c.tfrecord"
    _write(p, [b"first", b"second-record", b"third"])
    raw = bytearray(p.read_bytes())
    start = len(R.frame(b"first"))
    raw[start + where] ^= 0x40
    p.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match=f"offset {start}: {problem} mismatch"):
        assert list(R.read_records(p)) == [b"first"]
    with pytest.raises(R.RecordCorruptError, match=f"offset {start}: {problem}"):
        list(R.read_records(p, on_corrupt="raise"))


def test_repair_tail(tmp_path):
    p = tmp_path / "r.tfrecord"
    _write(p, [b"first", b"second"])
    whole = p.read_bytes()
    assert R.repair_tail(p) == 0 and p.read_bytes() == whole
    p.write_bytes(whole + R.frame(b"third")[:9])
    assert R.repair_tail(p) == 9 and p.read_bytes() == whole
    with R.RecordWriter(p, lock=True) as w:  # a live writer's file is never touched
        w.write(b"x")
        with open(p, "ab") as f:
            f.write(b"\x01\x02")
        assert R.repair_tail(p) == 0
        with pytest.raises(RuntimeError, match="being written by another process"):
            R.RecordWriter(p, lock=True)
    assert R.repair_tail(p) == 2
    raw = bytearray(p.read_bytes())
    raw[14] ^= 1
    p.write_bytes(bytes(raw))
    with pytest.raises(R.RecordCorruptError, match="data CRC mismatch"):
        R.repair_tail(p)
    assert p.read_bytes() == bytes(raw)


def test_empty_file_and_bad_mode(tmp_path):
    p = tmp_path / "e.tfrecord"
    p.write_bytes(b"")
    assert list(R.read_records(p)) == []
    with pytest.raises(ValueError, match="on_corrupt"):
        list(R.read_records(p, on_corrupt="skip"))


def test_example_encode_decode():
    feats = {
        "s": "héllo",
        "b": b"\x00\xff",
        "i": -3,
        "big": 2**62,
        "f": 0.5,
        "li": [1, 2, 3],
        "lf": [1.5, -2.0],
        "ls": ["a", "b"],
        "empty": [],
    }
    out = R.decode_example(R.encode_example(feats))
    assert out == {
        "s": ["héllo".encode()],
        "b": [b"\x00\xff"],
        "i": [-3],
        "big": [2**62],
        "f": [0.5],
        "li": [1, 2, 3],
        "lf": [1.5, -2.0],
        "ls": [b"a", b"b"],
        "empty": [],
    }
    with pytest.raises(TypeError, match="feature 'x': mixed"):
        R.encode_example({"x": [1, "a"]})
    with pytest.raises(TypeError, match="feature 'x': bool"):
        R.encode_example({"x": True})
    with pytest.raises(TypeError, match="feature 'x': unsupported value type dict"):
        R.encode_example({"x": {}})


@pytest.fixture
def tfrecord(monkeypatch):
    """The `tfrecord` package's reader, writer and generated example_pb2, without its __init__ (which
    imports torch: seconds per test run)."""
    spec = importlib.util.find_spec("tfrecord")
    if spec is None:
        pytest.skip("the tfrecord package (test-only dependency) is not installed")
    pkg = types.ModuleType("tfrecord")
    pkg.__path__ = list(spec.submodule_search_locations)
    monkeypatch.setitem(sys.modules, "tfrecord", pkg)
    for name in ("example_pb2", "iterator_utils", "reader", "writer"):
        monkeypatch.delitem(sys.modules, f"tfrecord.{name}", raising=False)
    from tfrecord import example_pb2, reader, writer

    yield types.SimpleNamespace(example_pb2=example_pb2, reader=reader, writer=writer)
    for name in ("example_pb2", "iterator_utils", "reader", "writer"):
        sys.modules.pop(f"tfrecord.{name}", None)


def test_independent_reader_reads_our_files(tmp_path, tfrecord):
    p = tmp_path / "ours.tfrecord"
    feats = [{"s": f"text {k}", "i": k, "f": k / 4, "li": [k, -k]} for k in range(5)]
    _write(p, [R.encode_example(f) for f in feats])
    description = {"s": "byte", "i": "int", "f": "float", "li": "int"}
    got = list(tfrecord.reader.tfrecord_loader(str(p), None, description))
    assert [g["s"] for g in got] == [f"text {k}".encode() for k in range(5)]
    assert [list(g["li"]) for g in got] == [[k, -k] for k in range(5)]
    assert [float(g["f"][0]) for g in got] == [k / 4 for k in range(5)]
    # Their generated tensorflow.Example class parses our bytes to the same message.
    for data, f in zip(R.read_records(p), feats, strict=True):
        ex = tfrecord.example_pb2.Example.FromString(data)
        assert ex.features.feature["i"].int64_list.value[0] == f["i"]
        assert ex.features.feature["s"].bytes_list.value[0] == f["s"].encode()


def test_we_read_independent_writer_files(tmp_path, tfrecord):
    p = tmp_path / "theirs.tfrecord"
    w = tfrecord.writer.TFRecordWriter(str(p))
    for k in range(5):
        w.write(
            {"s": (f"text {k}".encode(), "byte"), "i": (k, "int"), "li": ([k, k + 1], "int"), "f": (k / 2, "float")}
        )
    w.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # their CRCs must verify: any warning fails the test
        got = [R.decode_example(d) for d in R.read_records(p, on_corrupt="raise")]
    assert got == [{"s": [f"text {k}".encode()], "i": [k], "li": [k, k + 1], "f": [k / 2]} for k in range(5)]


def test_tensorflow_reads_and_writes(tmp_path):
    tf = pytest.importorskip("tensorflow")
    ours = tmp_path / "ours.tfrecord"
    _write(ours, [R.encode_example({"s": "abc", "i": 7, "f": 0.25, "li": [1, 2]})])
    (data,) = [r.numpy() for r in tf.data.TFRecordDataset(str(ours))]
    ex = tf.train.Example.FromString(data)
    assert ex.features.feature["s"].bytes_list.value == [b"abc"]
    assert list(ex.features.feature["li"].int64_list.value) == [1, 2]
    theirs = tmp_path / "theirs.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as w:
        w.write(ex.SerializeToString())
        w.write(b"raw")
    assert list(R.read_records(theirs, on_corrupt="raise")) == [ex.SerializeToString(), b"raw"]
    assert R.decode_example(ex.SerializeToString())["f"] == [0.25]
