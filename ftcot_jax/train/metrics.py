"""Training metrics: a JSONL log, TensorBoard event files, a tqdm bar, MFU.

The event files are written here directly (TFRecord framing from tfrecord.py + three hand-encoded
protobuf messages), because tensorboardX imports torch at start-up (seconds) and TensorFlow is huge.

Only process 0 writes; the other hosts get a logger whose methods do nothing. In a run directory on an
object store (gs://, paths.py), where objects cannot be appended to, metrics.jsonl and the event file are
kept in memory and rewritten whole at most every REMOTE_FLUSH_S seconds and on flush() (the trainer flushes
before each checkpoint, so no logged step older than the newest checkpoint is lost to a kill).
MFU = 6 * N_params * tokens/s / (peak FLOP/s per device * devices): the usual dense-transformer model
FLOPs (forward + backward, attention FLOPs left out), over the device's peak from a table, or for
CPUs the best rate of jitted matmuls measured once per process (several shapes, interleaved repeats, on
the process's own XLA thread pool, so the same threads as the training step). A measured peak is a lower
bound of the real one: where a model rate beats it, `checked_mfu` says the peak is unreliable instead of
giving a ratio above 100%.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from ftcot_jax.files import open_append
from ftcot_jax.paths import AnyPath, as_path
from ftcot_jax.tfrecord import RecordWriter

REMOTE_FLUSH_S = 10.0  # on an object store: the longest time between rewrites of metrics.jsonl and events

# Dense bf16 peak FLOP/s per device (one chip, or one GPU), from the vendors' spec sheets.
PEAK_FLOPS = {
    "TPU v2": 45e12 / 2,  # per core (a v2 chip = 2 devices)
    "TPU v3": 123e12 / 2,  # per core
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA L4": 121e12,
    "NVIDIA A10G": 125e12,
    "Tesla V100": 125e12,
    "Tesla T4": 65e12,
}

_measured: dict[str, float] = {}


# Matmul shapes (M, K, N) of the default CPU peak: a square one and a larger transformer-like one.
DEFAULT_PEAK_SHAPES = ((1024, 1024, 1024), (2048, 1024, 2048))


def measure_matmul_flops(n: int = 1024, dtype=jnp.float32, repeats: int = 5, shapes=None) -> float:
    """The best FLOP/s of jitted matmuls on the default device: [M, K] @ [K, N] for each (M, K, N) in `shapes`
    (default one n x n x n), each timed `repeats` times, the shapes interleaved so that a noisy moment hits
    one sample of each, not all samples of one."""
    shapes = [tuple(int(d) for d in s) for s in shapes] if shapes else [(n, n, n)]
    f = jax.jit(lambda x, y: x @ y)
    operands = []
    for m, k, n_ in shapes:
        a, b = jnp.full((m, k), 0.5, dtype), jnp.full((k, n_), 0.5, dtype)
        f(a, b).block_until_ready()  # compile and first touch, untimed
        operands.append((a, b))
    best = [math.inf] * len(shapes)
    for _ in range(repeats):
        for i, (a, b) in enumerate(operands):
            t = time.perf_counter()
            f(a, b).block_until_ready()
            best[i] = min(best[i], time.perf_counter() - t)
    return max(2.0 * m * k * n_ / dt for (m, k, n_), dt in zip(shapes, best, strict=True))


def peak_flops_per_device(device=None, dtype=jnp.float32, shapes=None) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) for `device` (default: the first local device). Devices without a
    table entry (CPUs) get `measure_matmul_flops` over `shapes` (default DEFAULT_PEAK_SHAPES), once per
    process and shape set."""
    device = device or jax.local_devices()[0]
    kind = getattr(device, "device_kind", "") or ""
    for name, flops in PEAK_FLOPS.items():
        if kind.lower().startswith(name.lower()):
            return flops, f"table:{name}"
    shapes = tuple(tuple(s) for s in (shapes or DEFAULT_PEAK_SHAPES))
    key = f"{device.platform}:{jnp.dtype(dtype).name}:{shapes}"
    if key not in _measured:  # CPUs and unknown devices: measure once per process
        _measured[key] = measure_matmul_flops(dtype=dtype, shapes=shapes)
    return _measured[
        key
    ], f"measured matmul ({kind or device.platform}, {jnp.dtype(dtype).name}, best of {len(shapes)} shapes)"


def mfu(n_params: int, tokens_per_s: float, peak_flops_total: float) -> float:
    """The raw ratio 6 N tokens/s / peak (may exceed 1 when the peak is a measured lower bound; see checked_mfu)."""
    return 6.0 * n_params * tokens_per_s / peak_flops_total


def checked_mfu(model_flops_per_s: float, peak_flops: float) -> float | None:
    """model FLOP/s / peak, or None where that is not a believable MFU: no peak, or a rate above the peak
    (a measured peak is only a lower bound of the hardware's, and the step beat it)."""
    if not peak_flops or peak_flops <= 0 or model_flops_per_s > peak_flops:
        return None
    return model_flops_per_s / peak_flops


def format_mfu(model_flops_per_s: float | None, peak_flops: float | None) -> str:
    """MFU as printed: a percentage of at most 100%, "peak unreliable" where the rate beat the measured peak."""
    if model_flops_per_s is None or not peak_flops:
        return "-"
    value = checked_mfu(model_flops_per_s, peak_flops)
    return "peak unreliable" if value is None else f"{value:.1%}"


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # negative int64 steps are two's complement, like protobuf
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(
    wall_time: float, step: int, *, file_version: str | None = None, scalars: dict[str, float] | None = None
) -> bytes:
    """tensorflow.Event {1: wall_time double, 2: step int64, 3: file_version, 5: Summary}.
    Summary {1: repeated Value}; Value {1: tag string, 2: simple_value float}."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _len_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _len_field(1, _len_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", v))
            for tag, v in scalars.items()
        )
        out += _len_field(5, values)
    return out


class EventWriter:
    """Scalars into `<logdir>/events.out.tfevents.<time>.<host>`, readable by TensorBoard."""

    def __init__(self, logdir: str | AnyPath):
        logdir = as_path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = logdir / name
        self._w = RecordWriter(self.path, append=False, remote_flush_s=REMOTE_FLUSH_S)
        self._w.write(encode_event(time.time(), 0, file_version="brain.Event:2"))

    def scalars(self, step: int, values: dict[str, float]):
        self._w.write(encode_event(time.time(), int(step), scalars=values))

    def flush(self):
        self._w.flush()

    def close(self):
        self._w.close()


class MetricsLogger:
    """JSONL (`metrics.jsonl`) + TensorBoard (`tensorboard/`) + tqdm bar, on process 0 only."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        total_steps: int,
        initial_step: int = 0,
        enabled: bool | None = None,
        tensorboard: bool = True,
        progress: bool = True,
    ):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.jsonl = self.tb = self.bar = None
        if not self.enabled:
            return
        run_dir = as_path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open_append(run_dir / "metrics.jsonl", remote_flush_s=REMOTE_FLUSH_S)
        if tensorboard:
            self.tb = EventWriter(run_dir / "tensorboard")
        if progress:
            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True, desc="train")

    def log(self, step: int, metrics: dict, *, kind: str = "train"):
        if not self.enabled:
            return
        clean = {k: (float(v) if not isinstance(v, (int, str)) else v) for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"kind": kind, "step": int(step), "time": time.time(), **clean}) + "\n")
        if self.tb is not None:
            self.tb.scalars(
                step,
                {f"{kind}/{k}": float(v) for k, v in clean.items() if isinstance(v, (int, float)) and math.isfinite(v)},
            )

    def progress(self, step: int, **postfix):
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=True
            )

    def write(self, message: str):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def flush(self):
        """Makes everything logged so far durable (a no-op for local files, which are line-buffered)."""
        if self.jsonl is not None:
            self.jsonl.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
        self.jsonl = self.tb = self.bar = None
