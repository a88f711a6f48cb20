"""`ftcot report RUN_DIR...`: the paper's table layout (methods x tasks) from run directories, beside the
paper's own numbers for the same student, plus PNG plots.

Input: what `ftcot run` leaves in a run dir — config.json (the resolved RunConfig) and
eval/<task>/<method>.json (summary per epoch; zero_shot.json for the base student).
Output: report.md and plots/{accuracy_per_epoch,loss,accuracy_vs_d,accuracy_vs_k}.png in the output directory.

Two numbers per cell:
- "best": the best test accuracy over the evaluated epochs: the paper's protocol for open students
  (model selection on the test split);
- "last": the accuracy after the last epoch (no selection on the test split).
Methods evaluated with self-consistency (`eval.samples` K > 1) add two rows, maj@K and pass@K, at the same
epoch as their greedy row (ftcot_jax/self_consistency.py); the K plot shows maj@k for k = 1, 2, 4, .. K.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ftcot_jax.config import RunConfig, from_dict
from ftcot_jax.files import write_text_atomic
from ftcot_jax.paths import as_path
from ftcot_jax.pipeline.curate import METHOD_LABELS, methods_of
from ftcot_jax.pipeline.paper import PAPER_NEAREST_DECODER, PAPER_STUDENTS, paper_diverse_d, paper_key, paper_value
from ftcot_jax.plots import pyplot, save_figure

TASK_COLUMNS = {  # paper table header names
    "single_eq": "SingleEq",
    "addsub": "AddSub",
    "multiarith": "MultiArith",
    "gsm8k": "GSM8K",
    "aqua": "AQuA",
    "svamp": "SVAMP",
    "date_understanding": "Date",
    "tracking_shuffled_objects": "Shuffled",
    "last_letter_concatenation": "LastLetter",
    "coin_flip": "Coin",
    "commonsense_qa": "CSQA",
    "strategy_qa": "StrategyQA",
}
PAPER_KINDS = ("zero_shot", "ft", "ft_cot", "diverse")
METHOD_ORDER = {"zero_shot": 0, "ft": 1, "ft_cot": 2, "diverse": 3, "step_by_step": 4}


# ----------------------------------------------------------------------------- reading runs


@dataclasses.dataclass
class Cell:
    run_dir: Path
    student: str
    task: str
    method: str  # zero_shot | ft | ft_cot | ft_cot_t70_8aug ...
    kind: str  # zero_shot | ft | ft_cot | diverse
    d: int | None  # diverse D
    label: str
    best: dict | None
    last: dict | None
    history: list[dict]
    train_dir: Path | None
    samples: int | None
    params: int | None
    export: dict | None = None  # the exported student: {"dir", step, epoch, selection, ...} (trained.TrainedFormat)

    @property
    def order(self):
        return (METHOD_ORDER[self.kind], self.d or 0)


def _run_config(cfg: dict, where: Path) -> RunConfig:
    try:
        return from_dict(RunConfig, cfg)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where} is not a valid run config ({e})") from None


def read_run(run_dir: str | Path) -> list[Cell]:
    run_dir = as_path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} does not exist; expected a run directory made by `ftcot run`")
    run_cfg = _run_config(json.loads(cfg_path.read_text()), cfg_path)
    student = run_cfg.student.display_name
    keys = (["zero_shot"] if run_cfg.eval.zero_shot else []) + [m.key for m in methods_of(run_cfg)]
    cells = []
    for task in run_cfg.tasks:
        d = run_dir / "eval" / task
        # only the methods of the run's current config: results another config left behind are not shown
        for f in [d / f"{k}.json" for k in keys if (d / f"{k}.json").is_file()]:
            try:
                r = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{f} is not valid JSON ({e})") from None
            kind = r.get("kind") or ("zero_shot" if r.get("method") == "zero_shot" else r.get("method"))
            if kind not in METHOD_ORDER:
                raise ValueError(f"{f}: unknown method kind {kind!r}")
            cells.append(
                Cell(
                    run_dir,
                    student,
                    task,
                    r["method"],
                    kind,
                    r.get("diverse_samples"),
                    r.get("label", kind),
                    r.get("best_over_epochs"),
                    r.get("last_epoch"),
                    r.get("history", []),
                    run_dir / r["train_dir"] if r.get("train_dir") else None,
                    r.get("samples"),
                    r.get("params"),
                    r.get("export"),
                )
            )
    return cells


# ----------------------------------------------------------------------------- the table


def pct(summary: dict | None, key: str = "accuracy") -> str:
    if not summary or summary.get(key) is None:
        return "-"
    return f"{100 * summary[key]:.2f}"


def sample_counts(cells) -> list[int]:
    """The K values of self-consistency among these cells' evaluations (best or last epoch)."""
    ks = {(s or {}).get("samples") for c in cells for s in (c.best, c.last)}
    return sorted(k for k in ks if isinstance(k, int) and k > 1)


def _fmt_params(n: int | None) -> str:
    if not n:
        return ""
    return f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


@dataclasses.dataclass
class Report:
    path: Path
    table: str  # the markdown tables (what `ftcot run` prints)
    plots: list[Path]
    cells: list[Cell]


def build_tables(cells: list[Cell], *, paper: bool = True) -> str:
    tasks = sorted({c.task for c in cells}, key=lambda t: list(TASK_COLUMNS).index(t))
    students = list(dict.fromkeys(c.student for c in cells))
    head = "| Method | Student | Params | " + " | ".join(TASK_COLUMNS[t] for t in tasks) + " |"
    sep = "|---|---|---|" + "---|" * len(tasks)
    out = []
    for title, which in (
        ("best test accuracy over epochs (the paper's protocol for open students)", "best"),
        ("accuracy after the last epoch (no model selection on the test split)", "last"),
    ):
        lines = [f"**Test accuracy (%), {title}**", "", head, sep]
        for student in students:
            mine = [c for c in cells if c.student == student]
            params = next((c.params for c in mine if c.params), None)
            rows: dict[tuple, dict[str, Cell]] = {}
            for c in sorted(mine, key=lambda c: c.order):
                rows.setdefault((c.kind, c.d, c.label), {})[c.task] = c
            for (_kind, _d, label), by_task in rows.items():
                vals = [pct(getattr(by_task[t], which)) if t in by_task else "" for t in tasks]
                lines.append(f"| {label} | {student} | {_fmt_params(params)} | " + " | ".join(vals) + " |")
                for k in sample_counts(by_task.values()):
                    for key, name in (("maj_accuracy", "maj"), ("pass_accuracy", "pass")):
                        vals = [_sc_pct(by_task.get(t), which, k, key) for t in tasks]
                        lines.append(
                            f"| {label}, {name}@{k} | {student} | {_fmt_params(params)} | " + " | ".join(vals) + " |"
                        )
            if paper and which == "best":
                lines += _paper_rows(student, rows, tasks)
        n_line = _n_line(cells, tasks)
        out.append("\n".join(lines) + "\n\n" + n_line)
    return "\n\n".join(out)


def _sc_pct(cell: Cell | None, which: str, k: int, key: str) -> str:
    """A self-consistency number of a cell's best or last epoch when it was evaluated with K = k samples."""
    if cell is None:
        return ""
    summary = getattr(cell, which)
    return pct(summary, key) if summary and summary.get("samples") == k else "-"


def _paper_rows(student: str, rows: dict, tasks: list[str]) -> list[str]:
    key = paper_key(student)
    note = ""
    if key is None:
        key, note = PAPER_NEAREST_DECODER, " (nearest size, another student)"
    paper_student = PAPER_STUDENTS[key]
    lines = []
    for kind, d, _label in rows:
        if kind not in PAPER_KINDS:
            continue  # a method the paper did not run
        vals = []
        for t in tasks:
            if kind == "diverse" and d != paper_diverse_d(t):
                vals.append("")  # the paper only has its own D per task
                continue
            v = paper_value(key, kind, t)
            vals.append("-" if v is None else f"{v:.2f}")
        if any(vals):
            plabel = METHOD_LABELS[kind] + (f" D={d}" if kind == "diverse" else "")
            lines.append(
                f"| {plabel} (paper) | {paper_student.display}{note} | {paper_student.params} | "
                + " | ".join(vals)
                + " |"
            )
    return lines


def _n_line(cells: list[Cell], tasks: list[str]) -> str:
    parts = []
    for t in tasks:
        ns = {(c.best or {}).get("n") for c in cells if c.task == t and c.best}
        eps = {len(c.history) for c in cells if c.task == t and c.kind != "zero_shot"}
        samples = ", ".join(f"{c.method} {c.samples}" for c in cells if c.task == t and c.samples)
        parts.append(
            f"{TASK_COLUMNS[t]}: {'/'.join(str(n) for n in sorted(ns))} test questions, "
            f"{'/'.join(str(e) for e in sorted(eps))} evaluated epochs"
            + (f"; train samples: {samples}" if samples else "")
        )
    return "_" + "; ".join(parts) + "_"


# ----------------------------------------------------------------------------- plots


def _metrics(train_dir: Path | None, kind: str) -> list[dict]:
    """The rows of one kind in a train dir's metrics.jsonl ([] when there is none)."""
    path = train_dir / "metrics.jsonl" if train_dir else None
    if path is None or not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interrupt
        if r.get("kind") == kind:
            rows.append(r)
    return rows


def _loss_curve(train_dir: Path | None) -> tuple[list[int], list[float]]:
    by_step = {}
    for r in _metrics(train_dir, "train"):
        if "loss" in r:
            by_step[int(r["step"])] = float(r["loss"])  # a resumed run logs the replayed steps again: last wins
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def decode_seconds_section(cells: list[Cell]) -> list[str]:
    """Mean wall seconds of one evaluation's greedy decode and of its K samples, per trained method and task
    (metrics.jsonl rows of kind eval): what each method's answers cost to decode."""
    rows = []
    for c in sorted(cells, key=lambda c: (list(TASK_COLUMNS).index(c.task), c.order)):
        evals = [r for r in _metrics(c.train_dir, "eval") if "greedy_decode_seconds" in r]
        if not evals:
            continue
        greedy = sum(r["greedy_decode_seconds"] for r in evals) / len(evals)
        sampled = [r["sample_decode_seconds"] for r in evals if "sample_decode_seconds" in r]
        k = next((r.get("samples") for r in evals if r.get("samples")), None)
        extra = f"{sum(sampled) / len(sampled):.0f} (K={k})" if sampled else "-"
        rows.append(f"| {TASK_COLUMNS[c.task]} | {c.label} | {len(evals)} | {greedy:.0f} | {extra} |")
    if not rows:
        return []
    head = ["## Decode seconds per evaluation (mean over evaluated epochs)", ""]
    return head + ["| task | method | evaluations | greedy | K samples |", "|---|---|---|---|---|", *rows, ""]


def make_plots(cells: list[Cell], out_dir: Path) -> list[Path]:
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = sorted({c.task for c in cells}, key=lambda t: list(TASK_COLUMNS).index(t))
    written = []

    def grid(n):
        cols = min(n, 3)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
        for ax in axes.flat[n:]:
            ax.axis("off")
        return fig, list(axes.flat)

    def name(c: Cell, multi: bool):
        return f"{c.label} ({c.student})" if multi else c.label

    multi = len({c.student for c in cells}) > 1
    # accuracy per epoch
    fig, axes = grid(len(tasks))
    for ax, t in zip(axes, tasks, strict=False):
        for c in sorted((c for c in cells if c.task == t), key=lambda c: c.order):
            if c.kind == "zero_shot":
                ax.axhline(100 * c.best["accuracy"], ls="--", color="gray", label=name(c, multi))
            elif c.history:
                line = ax.plot(
                    [h["epoch"] + 1 for h in c.history],
                    [100 * h["accuracy"] for h in c.history],
                    marker="o",
                    label=name(c, multi),
                )[0]
                sc = [h for h in c.history if h.get("maj_accuracy") is not None]
                for key, style, what in (("maj_accuracy", "--", "maj"), ("pass_accuracy", ":", "pass")):
                    if sc:
                        ax.plot(
                            [h["epoch"] + 1 for h in sc],
                            [100 * h[key] for h in sc],
                            ls=style,
                            marker="x",
                            color=line.get_color(),
                            label=f"{name(c, multi)}, {what}@{sc[-1]['samples']}",
                        )
        ax.set_title(TASK_COLUMNS[t])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    written.append(save_figure(fig, out_dir / "accuracy_per_epoch.png"))
    # loss curves
    fig, axes = grid(len(tasks))
    for ax, t in zip(axes, tasks, strict=False):
        for c in sorted((c for c in cells if c.task == t and c.kind != "zero_shot"), key=lambda c: c.order):
            steps, losses = _loss_curve(c.train_dir)
            if steps:
                ax.plot(steps, losses, label=name(c, multi))
        ax.set_title(TASK_COLUMNS[t])
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (per label token)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    written.append(save_figure(fig, out_dir / "loss.png"))
    # accuracy vs number of diverse rationales D
    d_tasks = [t for t in tasks if any(c.kind == "diverse" for c in cells if c.task == t)]
    if d_tasks:
        fig, axes = grid(len(d_tasks))
        for ax, t in zip(axes, d_tasks, strict=False):
            for student in dict.fromkeys(c.student for c in cells):
                div = sorted(
                    (c for c in cells if c.task == t and c.student == student and c.kind == "diverse"),
                    key=lambda c: c.d,
                )
                if div:
                    ax.plot(
                        [c.d for c in div],
                        [100 * c.best["accuracy"] for c in div if c.best],
                        marker="o",
                        label=f"diverse reasoning{f' ({student})' if multi else ''}",
                    )
                for c in cells:
                    if c.task == t and c.student == student and c.kind == "ft_cot" and c.best:
                        ax.axhline(
                            100 * c.best["accuracy"],
                            ls="--",
                            color="C1",
                            label=f"Fine-tune-CoT, greedy{f' ({student})' if multi else ''}",
                        )
            ax.set_xscale("log", base=2)
            ax.set_title(TASK_COLUMNS[t])
            ax.set_xlabel("D (rationales per question)")
            ax.set_ylabel("best test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        written.append(save_figure(fig, out_dir / "accuracy_vs_d.png"))
    # self-consistency: maj@k of the best epoch against the number of samples k
    k_tasks = [t for t in tasks if any((c.best or {}).get("maj_by_k") for c in cells if c.task == t)]
    if k_tasks:
        fig, axes = grid(len(k_tasks))
        for ax, t in zip(axes, k_tasks, strict=False):
            for c in sorted(
                (c for c in cells if c.task == t and (c.best or {}).get("maj_by_k")), key=lambda c: c.order
            ):
                ks = sorted(c.best["maj_by_k"], key=int)
                ax.plot(
                    [int(k) for k in ks], [100 * c.best["maj_by_k"][k] for k in ks], marker="o", label=name(c, multi)
                )
            ax.set_xscale("log", base=2)
            ax.set_title(TASK_COLUMNS[t])
            ax.set_xlabel("k (sampled rationales per question, majority vote)")
            ax.set_ylabel("maj@k test accuracy (%), best epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        written.append(save_figure(fig, out_dir / "accuracy_vs_k.png"))
    return written


# ----------------------------------------------------------------------------- the report


def students_section(cells: list[Cell]) -> list[str]:
    """Where each fine-tuned student is and how to use it (markdown lines; none for a run without training)."""
    trained = [c for c in sorted(cells, key=lambda c: (c.task, c.order)) if c.train_dir is not None]
    if not trained:
        return []
    md = ["## The students", "", "| Task | Method | Student | Checkpoint |", "|---|---|---|---|"]
    for c in trained:
        if c.export:
            where = c.train_dir / c.export["dir"]
            acc = "" if c.export.get("accuracy") is None else f", test accuracy {100 * c.export['accuracy']:.2f}"
            e = c.export.get("epoch")  # 0-based, as in predictions/epoch_NNN.jsonl; written here as people count
            when = "" if e is None else f", after epoch {e + 1}"
            ckpt = f"step {c.export['step']} ({c.export['selection']}{when}{acc}), HF format"
        else:
            where = c.train_dir
            ckpt = "orbax checkpoints (best epoch by default; `ftcot export-hf DIR OUT` writes an HF dir)"
        md.append(f"| {c.task} | {c.label} | `{where}` | {ckpt} |")
    first = trained[-1]
    where = first.train_dir / first.export["dir"] if first.export else first.train_dir
    md += [
        "",
        'Use one: `ftcot ask DIR "QUESTION"` (prints the rationale and the parsed answer), `ftcot serve DIR`, '
        f'`ftcot export-hf DIR OUT`; e.g. `ftcot ask {where} "..."`. DIR may also be the train dir '
        "(`--step best|last|N` picks the checkpoint).",
        "",
    ]
    return md


def stage_times_section(run_dirs: list[Path]) -> list[str]:
    """Wall time of each finished stage (stages.json) of each run, in the order the stages finished."""
    md = []
    for r in run_dirs:
        path = r / "stages.json"
        if not path.is_file():
            continue
        try:
            stages = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        done = sorted(
            ((sid, st) for sid, st in stages.items() if isinstance(st, dict) and st.get("finished")),
            key=lambda x: x[1]["finished"],
        )
        if not done:
            continue
        total = sum(float(st.get("seconds") or 0) for _, st in done)
        md += [f"## Wall time per stage: `{r}`", "", "| stage | seconds | finished (UTC) |", "|---|---|---|"]
        md += [f"| {sid} | {float(st.get('seconds') or 0):.0f} | {st['finished']} |" for sid, st in done]
        md += [f"| total | {total:.0f} | |", ""]
    return md


def write_report(run_dirs, out_dir, *, paper: bool = True, plots: bool = True) -> Report:
    run_dirs = [as_path(r) for r in run_dirs]
    if not run_dirs:
        raise ValueError("no run directories given")
    cells = [c for r in run_dirs for c in read_run(r)]
    if not cells:
        raise ValueError(
            f"no evaluation results in {', '.join(map(str, run_dirs))} (eval/<task>/*.json); "
            "has `ftcot run` finished a stage yet?"
        )
    out_dir = as_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = build_tables(cells, paper=paper)
    written = make_plots(cells, out_dir / "plots") if plots else []
    md = ["# Fine-tune-CoT report", "", "Runs: " + ", ".join(f"`{r}`" for r in run_dirs), "", table, ""]
    if paper:
        md += [
            "Paper numbers: Ho et al. 2023 (ACL), open-student tables (best of 20 epochs, teacher "
            "text-davinci-002); `-` = not run in the paper.",
            "",
        ]
    md += students_section(cells)
    md += decode_seconds_section(cells)
    md += stage_times_section(run_dirs)
    for p in written:
        md += [f"![{p.stem}]({p.relative_to(out_dir)})", ""]
    path = write_text_atomic(out_dir / "report.md", "\n".join(md))
    return Report(path, table, written, cells)
