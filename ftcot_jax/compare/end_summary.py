"""Step 3 of `ftcot compare --to-the-end`: the epoch records of both systems -> one report (a row per epoch and
system, the best and last epochs, the wall-time ratio, per epoch how many test questions got the same parsed
answer and the same completion from both), written as end.json, end.md and accuracy.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftcot_jax.files import write_json_atomic, write_text_atomic
from ftcot_jax.plots import pyplot, save_figure

NAMES = {"jax": "ftcot-jax", "torch": "torch"}


def read_predictions(path: str | Path) -> dict[int, dict]:
    """predictions/epoch_NNN.jsonl -> {sample_index: record}."""
    with open(path) as f:
        return {r["sample_index"]: r for r in map(json.loads, f) if r}


def agreement(ours: dict[int, dict], theirs: dict[int, dict]) -> dict:
    """On the questions both answered: how many got the same parsed answer, and the same completion text (the
    same generated tokens: both decode their tokens up to the first EOS with the same tokenizer)."""
    common = sorted(set(ours) & set(theirs))
    return {
        "n": len(common),
        "same_answer": sum(ours[i]["prediction"] == theirs[i]["prediction"] for i in common),
        "same_completion": sum(ours[i]["completion"] == theirs[i]["completion"] for i in common),
        "both_correct": sum(bool(ours[i]["correct"]) and bool(theirs[i]["correct"]) for i in common),
        "ours_correct": sum(bool(ours[i]["correct"]) for i in common),
        "torch_correct": sum(bool(theirs[i]["correct"]) for i in common),
    }


def summarize_end(manifest: dict, records: dict[str, dict[int, dict]], predictions: dict[str, dict[int, str]]) -> dict:
    """`records[system][epoch]` (the workers' epoch records, with `wall_s`), `predictions[system][epoch]` (paths)
    -> the report."""
    rows = [
        {k: v for k, v in rec.items() if k not in ("losses", "job")} | {"system": system}
        for system, by_epoch in records.items()
        for _, rec in sorted(by_epoch.items())
    ]
    best, last, wall = {}, {}, {}
    for system, by_epoch in records.items():
        if by_epoch:
            done = [by_epoch[e] for e in sorted(by_epoch)]
            b = max(done, key=lambda r: r["accuracy"])  # the first epoch of the highest accuracy
            best[system] = {"epoch": b["epoch"], "accuracy": b["accuracy"], "n": b["n"]}
            last[system] = {"epoch": done[-1]["epoch"], "accuracy": done[-1]["accuracy"], "n": done[-1]["n"]}
            wall[system] = {
                "epochs": len(done),
                "wall_s": sum(r.get("wall_s") or 0.0 for r in done),
                "train_s": sum(r.get("train_s") or 0.0 for r in done),
                "eval_s": sum(r.get("eval_s") or 0.0 for r in done),
                # CPU seconds only where every epoch has them (records written before they were kept do not)
                **{
                    k: (sum(r[k] for r in done) if all(r.get(k) is not None for r in done) else None)
                    for k in ("train_cpu_s", "eval_cpu_s")
                },
            }
    ratio = None
    if {"jax", "torch"} <= set(wall) and wall["jax"]["epochs"] == wall["torch"]["epochs"] and wall["jax"]["wall_s"]:
        ratio = {
            k: wall["torch"][k] / wall["jax"][k] if wall["jax"][k] and wall["torch"][k] is not None else None
            for k in ("wall_s", "train_s", "eval_s", "train_cpu_s", "eval_cpu_s")
        }
    agree = {}
    if {"jax", "torch"} <= set(predictions):
        for epoch in sorted(set(predictions["jax"]) & set(predictions["torch"])):
            agree[epoch] = agreement(
                read_predictions(predictions["jax"][epoch]), read_predictions(predictions["torch"][epoch])
            )
    report = {
        "manifest": manifest,
        "rows": rows,
        "loss_curves": {s: [x for e in sorted(r) for x in r[e]["losses"]] for s, r in records.items()},
        "best": best,
        "last": last,
        "wall": wall,
        "torch_over_ours": ratio,
        "agreement": agree,
    }
    report["table"] = format_end_table(report)
    return report


def _f(v, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def _seconds(r: dict, phase: str) -> str:
    """Wall seconds of a phase, with the process's CPU seconds beside them where recorded."""
    wall, cpu = r.get(f"{phase}_s"), r.get(f"{phase}_cpu_s")
    return _f(wall, "{:.0f}") + ("" if cpu is None else f" ({cpu:.0f})")


def format_end_table(report: dict) -> str:
    """Per epoch and system: train loss, accuracy (n), train s, eval s, peak RSS; then best/last, ratio, agreement."""
    lines = [
        "| epoch | system | train loss | test accuracy | train s (CPU s) | eval s (CPU s) | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(report["rows"], key=lambda r: (r["epoch"], r["system"])):
        lines.append(
            f"| {r['epoch']} | {NAMES[r['system']]} | {_f(r.get('train_loss'), '{:.4f}')} | "
            f"{r['accuracy']:.2%} (n={r['n']}) | {_seconds(r, 'train')} | {_seconds(r, 'eval')} | "
            f"{_f(r.get('peak_rss_mb'), '{:.0f}')} |"
        )
    lines.append("")
    for s in report["best"]:
        b, la = report["best"][s], report["last"][s]
        lines.append(
            f"{NAMES[s]}: best epoch {b['epoch']} {b['accuracy']:.2%}, last epoch {la['epoch']} {la['accuracy']:.2%} "
            f"(n={la['n']}); {report['wall'][s]['epochs']} epochs in {report['wall'][s]['wall_s']:.0f} s wall"
        )
    if report["torch_over_ours"]:
        t = report["torch_over_ours"]
        lines.append(
            f"wall time torch / ours: {_f(t['wall_s'], '{:.2f}x')} (train {_f(t['train_s'], '{:.2f}x')}, "
            f"evaluation {_f(t['eval_s'], '{:.2f}x')}); CPU seconds torch / ours: train "
            f"{_f(t['train_cpu_s'], '{:.2f}x')}, evaluation {_f(t['eval_cpu_s'], '{:.2f}x')}"
        )
    for epoch, a in sorted(report["agreement"].items()):
        lines.append(
            f"epoch {epoch}: same parsed answer on {a['same_answer']} of {a['n']} test questions, identical "
            f"completions on {a['same_completion']}, both correct on {a['both_correct']}; correct: ours "
            f"{a['ours_correct']}, torch {a['torch_correct']} ({a['ours_correct'] - a['torch_correct']:+d} questions)"
        )
    return "\n".join(lines)


def write_end_report(out: Path, report: dict) -> None:
    """end.json (everything but the table), end.md (the table), accuracy.png."""
    write_json_atomic(out / "end.json", {k: v for k, v in report.items() if k != "table"}, indent=1)
    write_text_atomic(out / "end.md", report["table"] + "\n")
    plot_end(report, out / "accuracy.png")


def plot_end(report: dict, path: Path) -> None:
    """Test accuracy per epoch (both systems) and the per-step training loss curves."""
    fig, (ax, ax2) = pyplot().subplots(1, 2, figsize=(12, 4.5))
    m = report["manifest"]
    for system, style in (("jax", "-"), ("torch", "--")):
        rows = sorted((r for r in report["rows"] if r["system"] == system), key=lambda r: r["epoch"])
        if rows:
            ax.plot(
                [r["epoch"] + 1 for r in rows],
                [100 * r["accuracy"] for r in rows],
                style,
                marker="o",
                label=NAMES[system],
            )
        curve = report["loss_curves"].get(system) or []
        if curve:
            ax2.plot(range(1, len(curve) + 1), curve, style, label=NAMES[system])
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test accuracy % (n={m['eval_n']})")
    ax.set_title(f"{m['student']}: {m['task']} {m['method']}, same samples, batches and scorer", fontsize=9)
    ax.legend(fontsize=8)
    ax2.set_xlabel("step")
    ax2.set_ylabel("train loss")
    ax2.set_title("training loss per step", fontsize=9)
    if ax2.lines:
        ax2.legend(fontsize=8)
    save_figure(fig, path)
