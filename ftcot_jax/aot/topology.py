"""Cloud TPU slices by the names users type (`v5e-8`, `v5litepod-16`, `v4-8`, `v5p-8`, `v6e-8`) or by the
compiler's own topology names (`v5e:2x4`), and their compile-only devices from libtpu.

`slice_devices(name, num_slices)` returns the devices of the slice (or of `num_slices` slices joined by the
data-centre network) without any TPU: libtpu's compiler describes them, and a computation lowered over a
mesh of them compiles into a real TPU executable. Nothing runs.

Per-chip facts: HBM is what the compiler allocates against (read from its own out-of-memory errors, so the
fits/does-not-fit answer is the compiler's); peak bf16 FLOP/s are Google's published figures per chip.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str  # the compiler's prefix: v4, v5e, v5p, v6e
    hbm_bytes: int  # per chip, as the compiler counts it
    peak_bf16_flops: float  # per chip
    cores_per_chip_in_name: int  # v4-8 / v5p-8 count TensorCores (2 per chip); v5e-8 / v6e-8 count chips


CHIPS = {
    "v4": Chip("v4", int(31.75 * GIB), 275e12, 2),
    "v5e": Chip("v5e", int(15.75 * GIB), 197e12, 1),
    "v5p": Chip("v5p", int(95.74 * GIB), 459e12, 2),
    "v6e": Chip("v6e", int(31.25 * GIB), 918e12, 1),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e", "v4": "v4", "v5e": "v5e", "v5p": "v5p", "v6e": "v6e"}

# chips -> the topology's shape; 2-D for v5e/v6e, 3-D for v4/v5p (MaxText and the Cloud TPU docs' tables)
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8"}


class TopologyError(ValueError):
    """An unknown slice name, an impossible number of slices, or no libtpu: one line saying what is accepted."""


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str  # as the user typed it
    topology: str  # the compiler's name, e.g. v5e:2x4
    chip: Chip
    chips: int  # per slice
    num_slices: int

    @property
    def devices_total(self) -> int:
        return self.chips * self.num_slices


def accepted_names() -> str:
    two = ", ".join(f"v5e-{n}" for n in _SHAPES_2D)
    return (
        f"v4-N / v5p-N (N = TensorCores: 2 x chips, chips in {sorted(_SHAPES_3D)}), v5e-N / v5litepod-N / "
        f"v6e-N (N = chips in {sorted(_SHAPES_2D)}; e.g. {two.split(', ')[2]}), or a compiler topology such as "
        "v5e:2x4 or v4:2x2x1"
    )


def parse(name: str, num_slices: int = 1) -> Slice:
    """The slice a name describes; `num_slices` >= 1 copies of it joined by the data-centre network."""
    if not isinstance(num_slices, int) or num_slices < 1:
        raise TopologyError(f"--num-slices {num_slices!r}: expected an integer >= 1")
    text = name.strip().lower()
    m = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", text)
    if m:
        chip = CHIPS[m.group(1)]
        dims = [int(d) for d in m.group(2).split("x")]
        chips = 1
        for d in dims:
            chips *= d
        if chips < 1:
            raise TopologyError(f"topology {name!r}: expected positive dimensions")
        return Slice(name, text, chip, chips, num_slices)
    m = re.fullmatch(r"(v4|v5e|v5litepod|v5lite|v5p|v6e|v6lite)-(\d+)", text)
    if not m:
        raise TopologyError(f"topology {name!r}: unknown; accepted: {accepted_names()}")
    chip = CHIPS[ALIASES[m.group(1)]]
    n = int(m.group(2))
    if n % chip.cores_per_chip_in_name:
        raise TopologyError(f"topology {name!r}: {chip.generation}-N counts TensorCores (2 per chip), N must be even")
    chips = n // chip.cores_per_chip_in_name
    shapes = _SHAPES_3D if chip.generation in ("v4", "v5p") else _SHAPES_2D
    if chips not in shapes:
        raise TopologyError(
            f"topology {name!r}: no {chip.generation} slice of {chips} chips; accepted: {accepted_names()}"
        )
    return Slice(name, f"{chip.generation}:{shapes[chips]}", chip, chips, num_slices)


def slice_devices(sl: Slice) -> list:
    """The compile-only devices of the slice(s), from libtpu (no TPU needed). v4 is described with one device
    per chip (megacore), as its chips run."""
    if importlib.util.find_spec("libtpu") is None:
        raise TopologyError(
            "cannot compile for TPU: libtpu is not installed; install it with `pip install -e '.[tpu]'`"
        )
    from jax.experimental import topologies

    # Off a TPU VM libtpu looks for the VM's metadata and workers; say there are none (kept where already set).
    # Several processes may compile at once (tests, a bisection beside a report): no single-user lock.
    for var, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost")):
        os.environ.setdefault(var, value)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{sl.chip.generation}-{sl.chips * sl.chip.cores_per_chip_in_name}")
    kwargs = {"chip_config_name": "megacore_dense"} if sl.chip.generation == "v4" else {}
    try:
        topo = topologies.get_topology_desc(
            platform="tpu", topology_name=sl.topology, num_slices=sl.num_slices, **kwargs
        )
    except Exception as e:  # noqa: BLE001 - libtpu's errors are of several types; the message is what we show
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TopologyError(f"topology {sl.topology} x {sl.num_slices} slice(s): libtpu refused it ({text})") from None
    devices = list(topo.devices)
    if len(devices) != sl.devices_total:
        raise TopologyError(
            f"topology {sl.topology} x {sl.num_slices}: libtpu gave {len(devices)} devices, expected {sl.devices_total}"
        )
    return devices
