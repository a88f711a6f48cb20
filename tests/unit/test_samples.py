"""Sample files (samples.py): the tf.train.Example round trip, bad files named, gold samples built from the
dataset, several files loaded as one training set."""

import pytest

from ftcot_jax import samples as S
from ftcot_jax import tfrecord as R
from ftcot_jax.samples import FinetuneSample, read_samples, write_samples
from tests.helpers.data import last_letter_samples


def _write(path, payloads):
    with R.RecordWriter(path, append=False) as w:
        for p in payloads:
            w.write(p)


def _samples():
    return [
        S.FinetuneSample("gsm8k", 3, 0, "Q?", "2,125", "Step one.\nStep two.", "ft_cot"),
        S.FinetuneSample("coin_flip", 0, 0, "Is it?", "yes", "", "ft"),
    ]


def test_samples_round_trip(tmp_path):
    p = tmp_path / "s" / "samples.tfrecord"
    assert S.write_samples(p, _samples()) == 2
    assert S.read_samples(p) == _samples()
    assert [f.name for f in (tmp_path / "s").iterdir()] == ["samples.tfrecord"]  # no temporary file left


def test_samples_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tfrecord"):
        S.read_samples(tmp_path / "nope.tfrecord")
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.tfrecord holds no samples"):
        S.read_samples(empty)
    other = tmp_path / "other.tfrecord"
    _write(other, [R.encode_example({"task": "x"})])
    with pytest.raises(ValueError, match="other.tfrecord: record 0 has no single-valued feature 'sample_index'"):
        S.read_samples(other)
    junk = tmp_path / "junk.tfrecord"
    junk.write_bytes(b"this is not a tfrecord file")
    with pytest.raises(ValueError, match="junk.tfrecord: corrupt record at byte offset 0"):
        S.read_samples(junk)
    with pytest.raises(ValueError, match="method"):
        S.write_samples(tmp_path / "m.tfrecord", [S.FinetuneSample("t", 0, 0, "q", "a", "", "cot")])


def test_gold_samples_from_the_dataset(tmp_path):
    ft = S.gold_samples("gsm8k", "ft")
    cot = S.gold_samples("gsm8k", "ft_cot")
    assert len(ft) == len(cot) == 7473
    assert ft[0].rationale == "" and cot[0].rationale and cot[0].answer == ft[0].answer
    assert {s.method for s in cot} == {"ft_cot"} and {s.task for s in ft} == {"gsm8k"}
    with pytest.raises(ValueError, match="has no gold rationales"):
        S.gold_samples("multiarith", "ft_cot")
    path = tmp_path / "ma.tfrecord"
    assert S.write_gold_samples("multiarith", "ft", path) == 420
    assert S.write_gold_samples("multiarith", "ft", path) == 420  # rebuilt, not appended
    assert read_samples(path) == S.gold_samples("multiarith", "ft")


def test_bad_sample_files(tmp_path):
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        S.load_samples([empty])
    junk = tmp_path / "junk.tfrecord"
    junk.write_bytes(b"this is not a record file at all")
    with pytest.raises(ValueError, match="junk.tfrecord"):
        S.load_samples([junk])
    with pytest.raises(FileNotFoundError, match="missing.tfrecord"):
        S.load_samples([tmp_path / "missing.tfrecord"])
    a, b = tmp_path / "a.tfrecord", tmp_path / "b.tfrecord"
    write_samples(a, last_letter_samples(2))
    write_samples(b, [FinetuneSample("gsm8k", 0, 0, "q", "1", "", "ft")])
    with pytest.raises(ValueError, match="mix several tasks"):
        S.load_samples([a, b])
