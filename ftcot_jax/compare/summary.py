"""Step 3 of `ftcot compare`: the runs' results -> one report (rows per configuration, headline ratios within a
repeat, the loss noise yardstick), written as compare.json, compare.md and loss_curves.png.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from pathlib import Path

import numpy as np

from ftcot_jax.config.compare import CompareSpec
from ftcot_jax.files import write_json_atomic, write_text_atomic
from ftcot_jax.plots import pyplot, save_figure
from ftcot_jax.train.metrics import checked_mfu, format_mfu


def _config_key(r: dict) -> str:
    return f"{'ftcot-jax' if r['system'] == 'jax' else 'torch'} {r['mode']} {r['precision']}"


def summarize(spec: CompareSpec, manifest: dict, runs: list[dict]) -> dict:
    """The report: one row per configuration (medians over its repeats), headline ratios, the loss noise
    yardstick, the curves, the failures, every run, and the table that prints them."""
    ok = [r for r in runs if "error" not in r]
    for r in ok:  # identical batches: every consumed batch hash equals the one prepared
        r["batches_identical"] = r["batch_hashes"] == manifest["batch_hashes"]
    # One peak per precision for every MFU: the faster of the two frameworks' own matmul measurement.
    peaks = {}
    for r in ok:
        peaks[r["precision"]] = max(peaks.get(r["precision"], 0.0), r.get("matmul_flops", 0.0))
    fpt = manifest["flops_per_token"]
    reference = {
        p: next((r for r in ok if r["system"] == "jax" and r["precision"] == p), None) for p in spec.precisions
    }
    configs: dict[str, dict] = {}
    for r in ok:
        configs.setdefault(_config_key(r), []).append(r)
    rows = []
    for key, rs in configs.items():
        first = rs[0]
        med = functools.partial(_median, rs)
        row = {
            "config": key,
            "system": first["system"],
            "mode": first["mode"],
            "precision": first["precision"],
            "runs": len(rs),
            "tokens_per_s": med("tokens_per_s"),
            "real_tokens_per_s": med("real_tokens_per_s"),
            "step_time_s": med("step_time_s"),
            "compile_s": med("compile_s"),
            "peak_rss_mb": med("train_peak_rss_mb"),
            "rss_delta_mb": None,
            "device_peak_mb": med("device_peak_mb"),
            "final_loss": first["losses"][-1],
            "batches_identical": all(x["batches_identical"] for x in rs),
        }
        row["rss_delta_mb"] = statistics.median(x["train_peak_rss_mb"] - x["base_rss_mb"] for x in rs)
        peak = peaks.get(first["precision"]) or 0.0
        # None where the step's model FLOP rate beat the measured peak (printed "peak unreliable")
        row["model_flops_per_s"] = row["tokens_per_s"] * fpt
        row["mfu"] = checked_mfu(row["model_flops_per_s"], peak)
        ref = reference.get(first["precision"])
        if ref is not None:
            row["max_loss_gap_vs_jax"] = float(np.max(np.abs(np.subtract(first["losses"], ref["losses"]))))
        evals = [x["eval"] for x in rs if "eval" in x]
        if evals:
            row["accuracy"] = evals[0]["accuracy"]
            row["decode_tokens_per_s"] = statistics.median(e["decode_tokens_per_s"] for e in evals)
        rows.append(row)
    headline = _headline(spec, ok)
    noise = _noise_scale(ok)
    curves = {key: rs[0]["losses"] for key, rs in configs.items()}
    report = {
        "spec": dataclasses.asdict(spec),
        "manifest": {k: v for k, v in manifest.items() if k not in ("batch_sample_ids",)},
        "peak_flops": peaks,
        "rows": rows,
        "headline": headline,
        "loss_noise_scale": noise,
        "loss_curves": curves,
        "failed": [{"name": r["name"], "error": r["error"]} for r in runs if "error" in r],
        "runs": [{k: v for k, v in r.items() if k not in ("batch_hashes",)} for r in runs],
    }
    report["table"] = format_table(report)
    return report


def _median(runs: list[dict], key: str):
    """The median of `key` over the runs that have it (None when none does)."""
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def _headline(spec: CompareSpec, runs: list[dict]) -> dict:
    """Ratios measured within the same repeat (neighbouring runs): ours / best torch mode, per precision."""
    out = {}
    for p in spec.precisions:
        train_r, decode_r = [], []
        for rep in range(spec.repeats):
            here = [r for r in runs if r["repeat"] == rep and r["precision"] == p]
            ours = next((r for r in here if r["system"] == "jax"), None)
            theirs = [r for r in here if r["system"] == "torch"]
            if ours is None or not theirs:
                continue
            best = max(theirs, key=lambda r: r["tokens_per_s"])
            train_r.append(
                {"repeat": rep, "ratio": ours["tokens_per_s"] / best["tokens_per_s"], "best_torch_mode": best["mode"]}
            )
            hf = [r for r in theirs if "eval" in r]
            if "eval" in ours and hf:
                decode_r.append(ours["eval"]["decode_tokens_per_s"] / max(r["eval"]["decode_tokens_per_s"] for r in hf))
        out[p] = {
            "train_speedup_vs_best_torch": [x["ratio"] for x in train_r],
            "best_torch_mode": [x["best_torch_mode"] for x in train_r],
            "train_speedup_median": statistics.median(x["ratio"] for x in train_r) if train_r else None,
            "decode_speedup_vs_hf_generate": decode_r,
            "decode_speedup_median": statistics.median(decode_r) if decode_r else None,
        }
    return out


def _noise_scale(runs: list[dict]) -> dict:
    """How far the loss curve moves from fp32 to bf16 within one system: the yardstick for 'within noise'."""
    out = {}
    for system in ("jax", "torch"):
        a = next(
            (r for r in runs if r["system"] == system and r["precision"] == "fp32" and r["mode"] != "compile"), None
        )
        b = next(
            (r for r in runs if r["system"] == system and r["precision"] == "bf16" and r["mode"] != "compile"), None
        )
        if a and b:
            out[f"{system}_fp32_vs_bf16_max_gap"] = float(np.max(np.abs(np.subtract(a["losses"], b["losses"]))))
    return out


def _fmt(v, f="{:.3g}"):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return f.format(v)


def _cell(row: dict, key: str, f: str, peak: float | None) -> str:
    if key == "config":
        return row[key]
    if key == "mfu":
        return format_mfu(row.get("model_flops_per_s"), peak)
    return _fmt(row.get(key), f)


def format_table(report: dict) -> str:
    """The report as a markdown table, then the headline ratios, the noise yardstick and the failures."""
    cols = [
        ("config", "config", "{}"),
        ("tok/s", "tokens_per_s", "{:.0f}"),
        ("real tok/s", "real_tokens_per_s", "{:.0f}"),
        ("step s", "step_time_s", "{:.3f}"),
        ("compile s", "compile_s", "{:.1f}"),
        ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ("RSS delta MB", "rss_delta_mb", "{:.0f}"),
        ("MFU", "mfu", "{:.1%}"),
        ("final loss", "final_loss", "{:.4f}"),
        ("max |dloss| vs ours", "max_loss_gap_vs_jax", "{:.2e}"),
        ("same batches", "batches_identical", "{}"),
        ("accuracy", "accuracy", "{:.3f}"),
        ("decode tok/s", "decode_tokens_per_s", "{:.0f}"),
    ]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in report["rows"]:
        cells = [_cell(row, k, f, report["peak_flops"].get(row["precision"])) for _, k, f in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for p, h in report["headline"].items():
        tr = ", ".join(f"{x:.2f}x" for x in h["train_speedup_vs_best_torch"]) or "-"
        dr = ", ".join(f"{x:.2f}x" for x in h["decode_speedup_vs_hf_generate"]) or "-"
        lines.append(
            f"{p}: train ours / best torch ({'/'.join(h['best_torch_mode']) or '-'}) per repeat: {tr}; "
            f"greedy decode ours / HF generate per repeat: {dr}"
        )
    if report["loss_noise_scale"]:
        lines.append(
            "loss noise yardstick (fp32 vs bf16 within one system, max gap): "
            + ", ".join(f"{k}={v:.2e}" for k, v in report["loss_noise_scale"].items())
        )
    for r in report["runs"]:
        if r.get("eval_error"):
            lines.append(f"eval failed in {r['name']}: {r['eval_error'][:200]}")
    for f in report["failed"]:
        lines.append(f"FAILED {f['name']}: {f['error'][:200]}")
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> None:
    """compare.json (everything but the table), compare.md (the table), loss_curves.png."""
    write_json_atomic(out / "compare.json", {k: v for k, v in report.items() if k != "table"}, indent=1)
    write_text_atomic(out / "compare.md", report["table"] + "\n")
    plot_losses(
        report["loss_curves"],
        out / "loss_curves.png",
        title=f"{report['manifest']['model']}: batch {report['manifest']['batch_size']} x "
        f"{report['manifest']['seq_len']}, same batches",
    )


def plot_losses(curves: dict[str, list[float]], path: Path, title: str = "") -> None:
    """Both systems' loss curves, and |torch - ours| per step on a log scale."""
    fig, (ax, ax2) = pyplot().subplots(1, 2, figsize=(12, 4.5))
    styles = {"jax": "-", "torch": "--"}
    for key, losses in curves.items():
        ax.plot(
            range(1, len(losses) + 1),
            losses,
            styles["jax" if key.startswith("ftcot") else "torch"],
            marker="o",
            ms=3,
            label=key,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    for p in ("fp32", "bf16"):
        ours = next((v for k, v in curves.items() if k.startswith("ftcot") and k.endswith(p)), None)
        for k, v in curves.items():
            if ours is not None and k.startswith("torch") and k.endswith(p):
                ax2.plot(range(1, len(v) + 1), np.abs(np.subtract(v, ours)), marker="o", ms=3, label=f"|{k} - ours|")
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("|loss difference|")
    ax2.set_title("gap between the curves", fontsize=9)
    if ax2.lines:
        ax2.legend(fontsize=8)
    save_figure(fig, path)
