"""The paper's students on a Cloud TPU slice, compiled on this host (no TPU): for each student, the first
setting of a ladder that fits (data-parallel, then fsdp, then remat block, then remat full), with the peak HBM
per chip the compiler reports for each try. Resumable: students already in --out are skipped.

    python scripts/tpu_table.py --topology v5e-8 --out docs/tpu/v5e-8.json            # reference batch 8 x 512
    python scripts/tpu_table.py --topology v5e-8 --batch 32 --length 1024 --out docs/tpu/v5e-8_32x1024.json

Prints a markdown table (docs/tpu.md has the measured ones) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from ftcot_jax.aot.compile import compile_config, fits_within, to_json  # noqa: E402
from ftcot_jax.aot.config import load_compile_config  # noqa: E402
from ftcot_jax.aot.topology import parse  # noqa: E402
from ftcot_jax.files import write_json_atomic  # noqa: E402

STUDENTS = [
    "t5-small", "flan-t5-small", "smollm2-135m", "gpt2", "t5-base", "flan-t5-base", "gpt2-medium",
    "smollm2-360m", "t5-large", "flan-t5-large", "gpt2-large", "gpt2-xl", "smollm2-1.7b", "flan-t5-xl", "t5-3b",
]  # fmt: skip
LADDER = [("data", "none"), ("fsdp", "none"), ("fsdp", "block"), ("fsdp", "full")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", required=True)
    ap.add_argument("--num-slices", type=int, default=1)
    ap.add_argument("--config", default="configs/paper/reference.yaml")
    ap.add_argument("--students", nargs="*", default=STUDENTS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--precision", default=None, help="fp32 | bf16 (default: the config's)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sl = parse(args.topology, args.num_slices)
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.is_file() else {}
    for student in args.students:
        if student in done:
            continue
        tries = []
        for axis, remat in LADDER:
            sets = [f"student.model={student}", f"train.batch_size={args.batch}", f"train.max_length={args.length}"]
            sets += [f"train.remat={remat}", "train.mesh.data=-1" if axis == "data" else "train.mesh.fsdp=-1"]
            if axis == "fsdp":
                sets.append("train.mesh.data=1")
            if args.precision:
                sets.append(f"student.precision={args.precision}")
            cfg = load_compile_config(args.config, sets)
            t = time.perf_counter()
            rep = compile_config(cfg, sl, decode=False)
            j = to_json(rep, sl)
            tries.append(
                {"mesh": j["mesh"], "remat": remat, "fits": fits_within(rep, sl), "peak": j["peak_hbm_bytes_per_chip"],
                 "compile_s": round(time.perf_counter() - t, 1), "params": j["params"], "precision": j["precision"]}
            )  # fmt: skip
            peak = j["peak_hbm_bytes_per_chip"] / 2**30
            print(f"{student} {axis} remat={remat}: fits={tries[-1]['fits']} peak={peak:.2f} GiB "
                  f"({tries[-1]['compile_s']} s)", flush=True)  # fmt: skip
            if tries[-1]["fits"]:
                break
        done[student] = {"topology": sl.topology, "batch": args.batch, "length": args.length, "tries": tries}
        write_json_atomic(out, done)
    print(table(done, sl.chip.hbm_bytes))
    return 0


def table(done: dict, capacity: int) -> str:
    rows = ["| student | params | data-parallel peak/chip | first setting that fits | its peak/chip | compile s |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for student, r in done.items():
        first = r["tries"][0]
        fit = next((t for t in r["tries"] if t["fits"]), None)
        setting = "none fits" if fit is None else (
            ", ".join(f"{k}={v}" for k, v in fit["mesh"].items() if v > 1) + f", remat {fit['remat']}")  # fmt: skip
        fit_peak = "-" if fit is None else f"{fit['peak'] / 2**30:.2f} GiB"
        seconds = sum(t["compile_s"] for t in r["tries"])
        rows.append(
            f"| {student} | {first['params'] / 1e6:.0f}M | {first['peak'] / 2**30:.2f} GiB"
            f"{'' if first['fits'] else ' (no)'} | {setting} | {fit_peak} | {seconds:.0f} |"
        )
    return "\n".join(rows) + f"\n\nHBM per chip: {capacity / 2**30:.2f} GiB"


if __name__ == "__main__":
    sys.exit(main())
