"""What a compiled program says about itself: per-chip memory from the compiler's buffer assignment, the
collectives in its HLO (kind, count, bytes), and the bytes a failed compile needed.

`cost_analysis()` is deliberately not used: it counts a loop body once (gradient accumulation is a scan)
and reports custom calls (Pallas kernels) as -1; FLOPs come from `model_flops_per_step` instead.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4}
_DTYPE_BYTES.update({"s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16})
_SHAPE = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_OP = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per chip of one compiled program."""

    arguments: int
    outputs: int
    aliased: int  # outputs written into donated arguments
    temporaries: int
    peak: int  # the compiler's peak when it reports one, else arguments + outputs - aliased + temporaries


def memory_of(compiled) -> Memory:
    m = compiled.memory_analysis()
    args, out, alias, temp = (
        int(m.argument_size_in_bytes),
        int(m.output_size_in_bytes),
        int(m.alias_size_in_bytes),
        int(m.temp_size_in_bytes),
    )
    peak = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    return Memory(args, out, alias, temp, peak if peak > 0 else args + out - alias + temp)


def _bytes(shapes: str) -> list[int]:
    out = []
    for dtype, dims in _SHAPE.findall(shapes):
        size = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else 4)
        out.append(size * int(np.prod([int(d) for d in dims.split(",") if d] or [1])))
    return out


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """kind -> {"count", "bytes"} over the compiled module (async `-start` ops counted once, their `-done`
    not; bytes are the result's: for an async start, its largest buffer)."""
    found = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if not m:
            continue
        sizes = _bytes(m.group(1))
        found[m.group(2)]["count"] += 1
        found[m.group(2)]["bytes"] += (max(sizes) if m.group(3) else sum(sizes)) if sizes else 0
    return found


_NEEDED = re.compile(r"(?:required|need(?:ed)?|total memory required)[^0-9]*([\d.]+)\s*([KMGT]i?B?|bytes)?", re.I)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def needed_bytes(error_text: str) -> int | None:
    """The bytes a compile that ran out of HBM asked for (`... memory required ... (24.13G) exceeds ...`)."""
    m = re.search(r"\(([\d.]+)([KMGT])\)\s*exceeds", error_text)
    if m:
        return int(float(m.group(1)) * _UNITS[m.group(2)])
    m = _NEEDED.search(error_text)
    if m and m.group(2) and m.group(2)[0].upper() in _UNITS:
        return int(float(m.group(1)) * _UNITS[m.group(2)[0].upper()])
    return None


def is_out_of_memory(error_text: str) -> bool:
    return (
        "RESOURCE_EXHAUSTED" in error_text or "exceeds available HBM" in error_text or "Ran out of memory" in error_text
    )
