"""Many run cells compiled for one slice, each distinct shape once: the cells of a grid differ in student,
task and method, and only the student (and the train section) changes what is compiled."""

from __future__ import annotations

import dataclasses
import json

from ftcot_jax.aot.compile import CompileReport, compile_config, does_not_fit_line, fits_within, to_json
from ftcot_jax.aot.shapes import student_hf_config
from ftcot_jax.aot.topology import Slice
from ftcot_jax.config import TrainConfig, to_dict


def shape_key(cfg: TrainConfig) -> str:
    """What decides the compiled programs: the student's architecture and the train section's shapes and
    settings (tasks, methods, paths and the schedule's length do not)."""
    d = to_dict(cfg)
    for k in ("run_dir", "task", "method", "samples", "split_name", "epochs", "max_steps", "export", "seed"):
        d.pop(k, None)
    d["student"] = {"arch": student_hf_config(cfg.student), "precision": cfg.student.precision}
    return json.dumps(d, sort_keys=True, default=str)


@dataclasses.dataclass
class GridRow:
    cells: list[str]
    report: CompileReport
    json: dict


def compile_cells(cells: list[tuple[str, TrainConfig]], sl: Slice | None, *, decode: bool = True, log=print):
    """Compile each distinct shape of `cells` ((name, trainer config)) once, in order of first appearance."""
    groups: dict[str, list[tuple[str, TrainConfig]]] = {}
    for name, cfg in cells:
        groups.setdefault(shape_key(cfg), []).append((name, cfg))
    rows = []
    for i, members in enumerate(groups.values(), 1):
        names = [n for n, _ in members]
        log(
            f"[{i}/{len(groups)}] {names[0]}"
            + (f" (+{len(names) - 1} cells of the same shape)" if len(names) > 1 else "")
        )
        report = compile_config(members[0][1], sl, decode=decode)
        rows.append(GridRow(names, report, to_json(report, sl)))
    return rows


def grid_table(rows: list[GridRow], sl: Slice | None) -> str:
    """A markdown table: one row per distinct shape."""
    out = [
        "| student | cells | params | mesh | batch x length | remat | peak HBM/chip | fits | train step compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        j = r.json
        mesh = "x".join(f"{k}{v}" for k, v in j["mesh"].items() if v > 1) or "1"
        out.append(
            f"| {j['student']} | {len(r.cells)} | {j['params'] / 1e6:.0f}M | {mesh} | {j['batch_size']} x "
            f"{j['max_length']} | {j['remat']} | {j['peak_hbm_bytes_per_chip'] / 2**30:.2f} GiB | "
            f"{'yes' if j['fits'] else 'no'} | {j['programs'][0]['compile_s']:.0f} |"
        )
    return "\n".join(out)


def failures(rows: list[GridRow], sl: Slice | None) -> list[str]:
    return [does_not_fit_line(r.report, sl) for r in rows if not fits_within(r.report, sl)]
