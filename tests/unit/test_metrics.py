"""Metrics (train/metrics.py): TensorBoard event records (decoded here independently), JSONL lines, MFU and peak
lookup."""

from __future__ import annotations

import json
import struct

import pytest

from ftcot_jax.tfrecord import read_records
from ftcot_jax.train.metrics import (
    EventWriter,
    MetricsLogger,
    checked_mfu,
    format_mfu,
    measure_matmul_flops,
    mfu,
    peak_flops_per_device,
)


def _fields(buf: bytes) -> list[tuple[int, object]]:
    """Minimal protobuf wire decoder: [(field number, value)] with varint / 64-bit / bytes / 32-bit."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 1:
            v, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            v, i = buf[i : i + n], i + n
        elif wire == 5:
            v, i = buf[i : i + 4], i + 4
        else:
            raise AssertionError(f"wire type {wire}")
        out.append((field, v))
    return out


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def test_event_file_has_version_then_scalars(tmp_path):
    w = EventWriter(tmp_path)
    w.scalars(7, {"train/loss": 1.5, "train/lr": 3e-4})
    w.close()
    assert w.path.name.startswith("events.out.tfevents.")
    first, second = [dict(_fields(r)) for r in read_records(w.path, on_corrupt="raise")]
    assert first[3] == b"brain.Event:2" and struct.unpack("<d", first[1])[0] > 1e9
    assert second[2] == 7
    values = [dict(_fields(v)) for f, v in _fields(second[5]) if f == 1]
    got = {v[1].decode(): struct.unpack("<f", v[2])[0] for v in values}
    assert got == pytest.approx({"train/loss": 1.5, "train/lr": 3e-4})


def test_logger_writes_jsonl_and_events(tmp_path):
    log = MetricsLogger(tmp_path, total_steps=10, enabled=True, progress=False)
    log.log(1, {"loss": 2.0, "tokens_per_s": 100.0})
    log.log(2, {"accuracy": 0.5}, kind="eval")
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(x["kind"], x["step"]) for x in lines] == [("train", 1), ("eval", 2)]
    assert lines[0]["loss"] == 2.0 and lines[1]["accuracy"] == 0.5
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    silent = MetricsLogger(tmp_path / "other", total_steps=1, enabled=False)  # hosts other than 0
    silent.log(1, {"loss": 1.0})
    silent.close()
    assert not (tmp_path / "other").exists()


def test_mfu_and_peak():
    assert mfu(124_000_000, 1000.0, 6 * 124e9) == pytest.approx(1.0)

    class TPU:
        device_kind, platform = "TPU v5 lite", "tpu"

    assert peak_flops_per_device(TPU()) == (197e12, "table:TPU v5 lite")
    flops, src = peak_flops_per_device()  # CPU: measured once
    assert flops > 1e8 and src.startswith("measured matmul")


def test_mfu_is_never_above_one():
    """A model rate above the measured peak means the peak (a lower bound) is unreliable, not MFU > 100%."""
    assert checked_mfu(50e9, 100e9) == pytest.approx(0.5)
    assert checked_mfu(100e9, 100e9) == pytest.approx(1.0)
    assert checked_mfu(109.1e9, 100e9) is None
    assert checked_mfu(1e9, 0.0) is None
    assert format_mfu(80.1e9, 100e9) == "80.1%"
    assert format_mfu(109.1e9, 100e9) == "peak unreliable"
    assert format_mfu(None, 100e9) == "-"


def test_measured_peak_is_the_best_shape(monkeypatch):
    """Several shapes, interleaved repeats: the peak is the best rate of any; each shape set measured once."""
    small = measure_matmul_flops(shapes=[(64, 64, 64)], repeats=3)
    both = measure_matmul_flops(shapes=[(64, 64, 64), (256, 128, 256)], repeats=3)
    assert small > 0 and both > 0
    calls = []
    monkeypatch.setattr("ftcot_jax.train.metrics.measure_matmul_flops", lambda **kw: calls.append(kw["shapes"]) or 7e9)
    monkeypatch.setattr("ftcot_jax.train.metrics._measured", {})
    shapes = ((32, 16, 8),)
    assert peak_flops_per_device(shapes=shapes)[0] == 7e9
    assert peak_flops_per_device(shapes=shapes)[0] == 7e9
    assert calls == [shapes]
    flops, src = peak_flops_per_device()
    assert flops == 7e9 and "best of 2 shapes" in src and len(calls) == 2
