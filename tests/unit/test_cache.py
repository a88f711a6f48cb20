"""Teacher cache (ftcot_jax/teacher/cache.py): schema round trip, resume keys, crash tails, failed log, secrets."""

import dataclasses
import json
import warnings

import pytest

from ftcot_jax import tfrecord
from ftcot_jax.teacher.cache import TeacherCache
from ftcot_jax.teacher.cache_query import find_caches
from ftcot_jax.teacher.records import record_from_example, record_to_example
from tests.helpers.data import teacher_record as rec


def test_record_example_round_trip():
    r = rec(3, 2, rationale="Ünïcode\nlines", seed=1234)
    assert record_from_example(record_to_example(r)) == r
    feats = tfrecord.decode_example(record_to_example(r))
    assert feats["timestamp_us"] == [1763770000123456] and feats["schema_version"] == [1]
    with pytest.raises(ValueError, match="where-it-is: no single-valued int64 feature .schema_version."):
        record_from_example(tfrecord.encode_example({"task": "x"}), where="where-it-is")


def test_layout_append_records_and_resume(tmp_path):
    with TeacherCache(tmp_path, task="coin_flip", teacher_model="org/Model-1", temperature=0.7) as c:
        assert c.done_keys() == set() and c.records() == [] and c.failed() == []
        for s in (2, 0, 1):
            c.append(rec(s))
        c.append(rec(0, 1))
    d = tmp_path / "org_Model-1" / "t0.7" / "coin_flip"
    assert c.path == d
    assert json.loads((d / "cache.json").read_text()) == {
        "schema_version": 1,
        "task": "coin_flip",
        "teacher_model": "org/Model-1",
        "temperature": 0.7,
    }
    assert len(c.record_files()) == 1
    # A new process (new cache object) sees everything, appends to its own file, never to the old one.
    c2 = TeacherCache(tmp_path, task="coin_flip", teacher_model="org/Model-1", temperature=0.7)
    assert c2.done_keys() == {(0, 0), (0, 1), (1, 0), (2, 0)}
    c2.append(rec(5))
    c2.close()
    assert len(c2.record_files()) == 2
    assert [r.key for r in c2.records()] == [(0, 0), (0, 1), (1, 0), (2, 0), (5, 0)]
    assert c2.verify() == {"files": 2, "records": 5, "duplicates": 0}
    assert [x.path for x in find_caches(tmp_path)] == [d]


def test_identity_is_checked(tmp_path):
    c = TeacherCache(tmp_path, task="coin_flip", teacher_model="m", temperature=0)
    with pytest.raises(ValueError, match="does not belong in the cache for 'coin_flip'"):
        c.append(rec(0, task="gsm8k", model="m", temperature=0))
    with pytest.raises(ValueError, match="temperature 0.7 does not match"):
        c.append(rec(0, model="m", temperature=0.7))
    with pytest.raises(ValueError, match="protocol 'grpc'"):
        c.append(rec(0, model="m", temperature=0, protocol="grpc"))
    c.append(rec(0, model="m", temperature=0))
    meta = c.path / "cache.json"
    meta.write_text(json.dumps({"schema_version": 1, "task": "coin_flip", "teacher_model": "other", "temperature": 0}))
    with pytest.raises(ValueError, match="cache.json describes"):
        TeacherCache(tmp_path, task="coin_flip", teacher_model="m", temperature=0)


def test_crash_tail_is_dropped_then_repaired_by_the_next_writer(tmp_path):
    c = TeacherCache(tmp_path, task="coin_flip", teacher_model="m", temperature=0)
    for s in range(3):
        c.append(rec(s, model="m", temperature=0))
    c.close()
    (f,) = c.record_files()
    f.write_bytes(f.read_bytes()[:-10])  # killed in the middle of writing record 2
    c2 = TeacherCache(tmp_path, task="coin_flip", teacher_model="m", temperature=0)
    with pytest.warns(RuntimeWarning, match="corrupt record at byte offset .*truncated"):
        assert c2.done_keys() == {(0, 0), (1, 0)}
    with pytest.raises(tfrecord.RecordCorruptError, match=f"{f.name}: corrupt record at byte offset"):
        c2.verify()
    with pytest.warns(RuntimeWarning, match=f"{f.name}: removed a torn last record"):
        c2.append(rec(2, model="m", temperature=0))  # the rerun: repairs, then appends to its own file
    c2.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r.key for r in c2.records()] == [(0, 0), (1, 0), (2, 0)]
        assert c2.verify() == {"files": 2, "records": 3, "duplicates": 0}


def test_a_crc_error_is_not_repaired(tmp_path):
    c = TeacherCache(tmp_path, task="coin_flip", teacher_model="m", temperature=0)
    for s in range(3):
        c.append(rec(s, model="m", temperature=0))
    c.close()
    (f,) = c.record_files()
    raw = bytearray(f.read_bytes())
    raw[40] ^= 1  # inside record 0: records 1 and 2 may be fine and need a human
    f.write_bytes(bytes(raw))
    c2 = TeacherCache(tmp_path, task="coin_flip", teacher_model="m", temperature=0)
    with pytest.warns(RuntimeWarning, match="data CRC mismatch; left as is"):
        c2.append(rec(3, model="m", temperature=0))
    c2.close()
    assert f.read_bytes() == bytes(raw)
    with pytest.raises(tfrecord.RecordCorruptError, match="offset 0: data CRC mismatch"):
        c2.verify()


def test_duplicates_keep_the_first(tmp_path):
    a = TeacherCache(tmp_path, task="coin_flip", teacher_model="m", temperature=0)
    b = TeacherCache(tmp_path, task="coin_flip", teacher_model="m", temperature=0)  # two concurrent writers
    a.append(rec(0, model="m", temperature=0, rationale="first"))
    b.append(rec(0, model="m", temperature=0, rationale="second"))
    a.close(), b.close()
    (r,) = a.records()
    assert r.rationale in ("first", "second")
    assert a.verify()["duplicates"] == 1


def test_failed_log(tmp_path):
    c = TeacherCache(tmp_path, task="coin_flip", teacher_model="m", temperature=0)
    c.mark_failed(4, 0, "HTTP 500")
    c.mark_failed(4, 0, "timeout")
    c.mark_failed(7, 1, "HTTP 429")
    assert [(f["sample_index"], f["completion_index"], f["error"], f["attempts"]) for f in c.failed()] == [
        (4, 0, "timeout", 2),
        (7, 1, "HTTP 429", 1),
    ]
    c.append(rec(4, model="m", temperature=0))  # answered on a later attempt: no longer failed
    assert [(f["sample_index"], f["completion_index"]) for f in c.failed()] == [(7, 1)]
    with open(c.path / "failed.jsonl", "a") as fh:
        fh.write('{"sample_index": 9, "compl')  # a crash mid-line
    with pytest.warns(RuntimeWarning, match="cut-off last line"):
        assert len(c.failed()) == 1


def test_api_key_never_stored(tmp_path, monkeypatch):
    key = "sk-test-SECRET-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    c = TeacherCache(tmp_path, task="coin_flip", teacher_model="m", temperature=0)
    c.append(
        rec(
            0,
            model="m",
            temperature=0,
            endpoint=f"https://user:{key}@api.example.com/v1?api-key={key}",
            rationale=f"leaked {key} here",
        )
    )
    c.mark_failed(1, 0, f"401 Unauthorized: Incorrect API key provided: {key}; Authorization: Bearer {key}")
    c.close()
    for p in c.path.iterdir():
        assert key not in p.read_bytes().decode("utf-8", "replace"), p
    (r,) = c.records()
    assert r.endpoint == "https://api.example.com/v1"
    assert "[redacted]" in c.failed()[0]["error"]


def test_from_dir_and_bad_meta(tmp_path):
    c = TeacherCache(tmp_path, task="gsm8k", teacher_model="gpt-4o-mini", temperature=0)
    c.append(rec(1, task="gsm8k", model="gpt-4o-mini", temperature=0))
    c.close()
    c2 = TeacherCache.from_dir(c.path)
    assert (c2.task, c2.teacher_model, c2.temperature) == ("gsm8k", "gpt-4o-mini", 0.0)
    assert dataclasses.astuple(c2.records()[0])[:4] == ("gsm8k", "train", 1, 0)
    (c.path / "cache.json").write_text("{")
    with pytest.raises(ValueError, match="cache.json is not valid JSON"):
        TeacherCache.from_dir(c.path)
    with pytest.raises(FileNotFoundError, match="cache root"):
        find_caches(tmp_path / "missing")


def test_tensorflow_reads_and_writes_cache_records(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from ftcot_jax.teacher.records import FEATURES

    c = TeacherCache(tmp_path, task="coin_flip", teacher_model="m", temperature=0.7)
    want = [rec(s, model="m", rationale=f"Ünï {s}") for s in range(3)]
    for r in want:
        c.append(r)
    c.close()
    dtypes = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
    spec = {k: tf.io.FixedLenFeature([], dtypes[v]) for k, v in FEATURES.items()}
    ds = tf.data.TFRecordDataset([str(p) for p in c.record_files()]).map(lambda x: tf.io.parse_single_example(x, spec))
    got = list(ds.as_numpy_iterator())
    assert [g["sample_index"] for g in got] == [0, 1, 2]
    assert got[1]["rationale"].decode() == "Ünï 1" and got[1]["timestamp_us"] == 1763770000123456
    assert abs(got[0]["temperature"] - 0.7) < 1e-6
    # TensorFlow writes a record -> we read it back as a TeacherRecord.
    feats = {}
    ours = tfrecord.decode_example(record_to_example(want[2]))
    for k, kind in FEATURES.items():
        val = ours[k][0]
        feats[k] = (
            tf.train.Feature(bytes_list=tf.train.BytesList(value=[val]))
            if kind == "bytes"
            else tf.train.Feature(int64_list=tf.train.Int64List(value=[val]))
            if kind == "int64"
            else tf.train.Feature(float_list=tf.train.FloatList(value=[val]))
        )
    out = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(out)) as w:
        w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    (data,) = tfrecord.read_records(out, on_corrupt="raise")
    assert record_from_example(data) == want[2]


def test_registered_secret_is_scrubbed(tmp_path):
    from ftcot_jax.teacher import scrub

    key = "custom-var-key-9876543210"
    scrub.register_secret(key)
    try:
        c = TeacherCache(tmp_path, task="coin_flip", teacher_model="m", temperature=0)
        c.mark_failed(0, 0, f"rejected {key}")
        c.append(rec(1, model="m", temperature=0, answer_text=key))
        c.close()
        assert all(key not in p.read_bytes().decode("utf-8", "replace") for p in c.path.iterdir())
    finally:
        scrub._REGISTERED.discard(key)


def test_bad_names(tmp_path):
    with pytest.raises(ValueError, match="task name '../x' cannot name a cache directory"):
        TeacherCache(tmp_path, task="../x", teacher_model="m", temperature=0)
    with pytest.raises(ValueError, match="has no usable characters"):
        TeacherCache(tmp_path, task="gsm8k", teacher_model="//", temperature=0)
    # Two model names with one slug share a directory: the identity file tells them apart.
    a = TeacherCache(tmp_path, task="coin_flip", teacher_model="org/m", temperature=0)
    a.append(rec(0, model="org/m", temperature=0))
    a.close()
    with pytest.raises(ValueError, match="cache.json describes"):
        TeacherCache(tmp_path, task="coin_flip", teacher_model="org_m", temperature=0)
