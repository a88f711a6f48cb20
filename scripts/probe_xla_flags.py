"""Matmul GFLOP/s (fp32, bf16) of XLA:CPU under the oneDNN/XNNPACK flag sets, and of torch, each in a fresh process.

    python scripts/probe_xla_flags.py                                 # every flag set, 1024 x 1024, all cores
    python scripts/probe_xla_flags.py --sets default,onednn-dot --n 512 --threads 2

XLA reads XLA_FLAGS once, when its CPU client starts, so every flag set is measured in its own process (this
script, run with `--measure`), under the same thread settings `ftcot compare` gives its workers. A flag set
jaxlib rejects (an unknown flag aborts with the list of known ones, or a crash) is reported with the error.
Writes OUT/xla_flags_probe.json. `ftcot compare --set xla_flags="..."` then runs our side with any of them;
docs/compare.md has the flags jaxlib accepts and what they measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

XLA_FLAG_SETS = {
    "default": "",
    "onednn-dot": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "onednn-custom-call": "--xla_cpu_experimental_onednn_custom_call=true",
    "xnn-dot": "--xla_cpu_experimental_xnn_fusion_type=dot",
    "ynn-dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "xnn-graph-greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "no-xnnpack": "--xla_cpu_use_xnnpack=false",
    "max-isa-amx": "--xla_cpu_max_isa=AMX",
}
DTYPES = ("float32", "bfloat16")
RESULT = "RESULT "
TIMEOUT_S = 300


def measure_jax(n: int, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a jitted n x n matmul per dtype (best of `repeats`, after a compiling call)."""
    import jax
    import jax.numpy as jnp

    out = {}
    for name in DTYPES:
        a = jnp.ones((n, n), getattr(jnp, name)) * 0.5
        f = jax.jit(lambda x, y: x @ y)
        f(a, a).block_until_ready()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            f(a, a).block_until_ready()
            best = min(best, time.perf_counter() - t)
        out[name] = 2 * n**3 / best
    return out


def measure_torch(n: int, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of an n x n torch matmul per dtype (best of `repeats`, after a warm-up call)."""
    import torch

    out = {}
    for name in DTYPES:
        a = torch.ones((n, n), dtype=getattr(torch, name)) * 0.5
        a @ a
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t)
        out[name] = 2 * n**3 / best
    return out


def probe(n: int = 1024, threads: int = 0, flag_sets: dict[str, str] | None = None, log=print) -> dict:
    """{flag set name (and "torch"): {"flags", "float32", "bfloat16" (GFLOP/s)} or {"flags", "error"}}."""
    from ftcot_jax.compare.run import worker_env  # loads JAX: only here, not in the measuring processes

    threads = threads or len(os.sched_getaffinity(0))
    results = {}
    for name, flags in {**(XLA_FLAG_SETS if flag_sets is None else flag_sets), "torch": None}.items():
        system = "torch" if flags is None else "jax"
        cmd = [sys.executable, os.path.abspath(__file__), "--measure", system, "--n", str(n)]
        try:
            p = subprocess.run(
                cmd, env=worker_env(threads, flags or ""), capture_output=True, text=True, timeout=TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            results[name] = {"flags": flags, "error": f"timeout ({TIMEOUT_S} s)"}
            log(f"{name:20s} timeout ({TIMEOUT_S} s)")
            continue
        line = next((x for x in p.stdout.splitlines() if x.startswith(RESULT)), None)
        if p.returncode or line is None:
            err = p.stderr.strip().splitlines() or ["?"]
            results[name] = {"flags": flags, "error": next((x for x in err if "Unknown flag" in x), err[-1])[:200]}
        else:
            results[name] = {"flags": flags, **{k: v / 1e9 for k, v in json.loads(line[len(RESULT) :]).items()}}
        r = results[name]
        log(
            f"{name:20s} "
            + (
                f"fp32 {r['float32']:7.1f} GFLOP/s  bf16 {r['bfloat16']:7.1f} GFLOP/s"
                if "error" not in r
                else f"error: {r['error']}"
            )
            + f"   {flags or ''}"
        )
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default=",".join(XLA_FLAG_SETS), help=f"flag sets to measure: {', '.join(XLA_FLAG_SETS)}")
    p.add_argument("--n", type=int, default=1024, help="matrix size")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--out", default="runs/compare", help="directory for xla_flags_probe.json")
    p.add_argument("--measure", choices=("jax", "torch"), help=argparse.SUPPRESS)  # one measuring process
    args = p.parse_args(argv)
    if args.measure:
        res = (measure_jax if args.measure == "jax" else measure_torch)(args.n)
        print(RESULT + json.dumps(res), flush=True)
        return 0
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in names if s not in XLA_FLAG_SETS]
    if unknown:
        raise SystemExit(f"--sets: unknown flag set(s) {', '.join(unknown)}; known: {', '.join(XLA_FLAG_SETS)}")
    res = probe(args.n, args.threads, {s: XLA_FLAG_SETS[s] for s in names})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "xla_flags_probe.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out / 'xla_flags_probe.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
