"""`ftcot compile`: compile what `ftcot train` / `ftcot run` would run for a Cloud TPU slice, on this host."""

from __future__ import annotations

import json
import os
import sys

from ftcot_jax.cli.common import CLIError


def add_parsers(sub):
    p = sub.add_parser(
        "compile",
        help="compile a config's train step and decode for a TPU slice on this host (memory, fits, collectives)",
        description="Ahead-of-time compilation with libtpu's compiler (no TPU needed; `pip install -e '.[tpu]'`): "
        "the train step and the evaluation decode of CONFIG (a train or run config) on the slice, with abstract "
        "weights. Prints per-chip memory, whether it fits, the collectives and a step-time lower bound; exits 1 "
        "when it does not fit. Example: ftcot compile configs/paper/reference.yaml --topology v5e-8 "
        "student.model=gpt2-large train.mesh.fsdp=8",
    )
    p.add_argument("config", help="a TrainConfig or RunConfig YAML (ftcot train / ftcot run)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides (right after CONFIG)")
    p.add_argument(
        "--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE", help="override after options"
    )
    p.add_argument(
        "--topology",
        required=True,
        help="v5e-8, v5litepod-16, v4-8, v5p-8, v6e-8, a compiler topology (v5e:2x4), or cpu (this host's devices)",
    )
    p.add_argument("--num-slices", type=int, default=1, help="slices joined by the data-centre network (>= 1)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON ('-': stdout only)")
    p.add_argument("--max-batch", action="store_true", help="find the largest global batch that fits (bisection)")
    p.add_argument("--no-decode", action="store_true", help="compile the train step only")
    p.set_defaults(func=_run)


def _gib(n) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def print_report(rep: dict, out=sys.stdout) -> None:
    where = "this host" if rep["topology"] is None else f"{rep['topology_name']} ({rep['topology']})"
    if rep["num_slices"] > 1:
        where += f" x {rep['num_slices']} slices"
    print(
        f"{rep['student']} ({rep['family']}, {rep['params'] / 1e6:.1f}M params) on {where}: {rep['devices']} "
        f"{rep['platform']} devices, mesh {rep['mesh']}, batch {rep['batch_size']} x {rep['max_length']} "
        f"(grad_accum {rep['grad_accum']}), {rep['precision']}, remat {rep['remat']}",
        file=out,
    )
    rows = [
        ("parameters per chip", _gib(rep["param_bytes_per_chip"])),
        ("optimizer state per chip", _gib(rep["opt_state_bytes_per_chip"])),
        ("peak HBM per chip (compiler)", _gib(rep["peak_hbm_bytes_per_chip"])),
        ("HBM per chip", _gib(rep["hbm_capacity_bytes_per_chip"])),
        ("fits", "yes" if rep["fits"] else "NO"),
        ("model FLOPs per step", f"{rep['flops_per_step']:.3e}"),
    ]
    if rep["step_time_lower_bound_s"] is not None:
        rows.append(("step time at peak bf16 (lower bound)", f"{rep['step_time_lower_bound_s'] * 1e3:.2f} ms"))
    for prog in rep["programs"]:
        state = "fits" if prog["fits"] else ("does not fit" if prog["error"] is None else "failed")
        rows.append((f"{prog['name']}", f"{state}, peak {_gib(prog['peak_bytes'] or prog['needed_bytes'])}, "
                     f"compiled in {prog['compile_s']:.1f} s"))  # fmt: skip
    coll = ", ".join(
        f"{k} x{v['count']} ({v['bytes'] / 2**20:.1f} MiB)" for k, v in rep["collectives"].items() if v["count"]
    )
    rows.append(("collectives", coll or "none"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}", file=out)


def _run(args):
    # This process compiles for other devices and runs nothing: JAX keeps to the CPU here (also on a TPU VM,
    # whose own chips stay free), libtpu's compiler describes the slice.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # Deferred: JAX and the compiler only for this command.
    from ftcot_jax.aot import compile as aot
    from ftcot_jax.aot.config import load_compile_config
    from ftcot_jax.aot.topology import TopologyError, parse

    try:
        sl = None if args.topology.lower() == "cpu" else parse(args.topology, args.num_slices)
        cfg = load_compile_config(args.config, list(args.overrides) + list(args.set_overrides))
        if args.max_batch:
            best, tried = aot.max_batch(cfg, sl)
            for b, ok in tried:
                print(f"  batch {b}: {'fits' if ok else 'does not fit'}")
            print(f"largest batch that fits: {best}" if best else "no batch fits")
            if args.json:
                _write(args.json, {"max_batch": best, "tried": [{"batch": b, "fits": ok} for b, ok in tried]})
            return 0 if best else 1
        report = aot.compile_config(cfg, sl, decode=not args.no_decode)
    except TopologyError as e:
        raise CLIError(str(e)) from None
    rep = aot.to_json(report, sl)
    print_report(rep)
    if args.json:
        _write(args.json, rep)
    if not rep["fits"]:
        print(aot.does_not_fit_line(report, sl), file=sys.stderr)
        return 1
    return 0


def _write(path: str, data: dict) -> None:
    if path == "-":
        print(json.dumps(data, indent=2))
        return
    from ftcot_jax.files import write_json_atomic

    write_json_atomic(path, data)
