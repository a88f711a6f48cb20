"""`ftcot compare --to-the-end`: the same pretrained student trained for whole epochs in ftcot-jax and in the
PyTorch reference loop, on the same curated samples and batches, each epoch scored on the test split.

    from ftcot_jax.compare.end_run import run_end
    report = run_end(load_compare_spec(None, ["mode=to_the_end", "end.task=single_eq", "end.method=ft"]))

Protocol (docs/compare.md, "Accuracy to the end"):
1. `end_prepare.prepare_end` (this process, once): curated samples, the exported student, every epoch's batches,
   the test prompts.
2. Per epoch, ours then PyTorch, each in its own process (`end_jax`: the trainer's public `train`; `end_torch`: the
   reference loop and HF `generate`): alternating, so machine noise hits both alike; each writes its epoch
   record to `<system>/epoch_NNN.json`. A record that exists is not run again: an interrupted comparison resumes
   per system and epoch (ours from the trainer's checkpoint, PyTorch from its own).
3. `end_summary`: the table, end.json and accuracy.png, rewritten after every epoch record.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ftcot_jax.compare.end_prepare import prepare_end
from ftcot_jax.compare.end_summary import summarize_end, write_end_report
from ftcot_jax.compare.run import run_worker
from ftcot_jax.config.compare import CompareSpec
from ftcot_jax.files import write_json_atomic

END_WORKERS = {"jax": "ftcot_jax.compare.end_jax", "torch": "ftcot_jax.compare.end_torch"}


def _num(v, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def record_path(out: Path, system: str, epoch: int) -> Path:
    return out / system / f"epoch_{epoch:03d}.json"


def predictions_path(out: Path, system: str, epoch: int) -> Path:
    """Where each system's epoch predictions are: ours in the trainer's run dir, PyTorch's beside it."""
    if system == "jax":
        return out / "jax" / "run" / "predictions" / f"epoch_{epoch:03d}.jsonl"
    return out / "torch" / "predictions" / f"epoch_{epoch:03d}.jsonl"


def epoch_job(spec: CompareSpec, manifest: dict, out: Path, system: str, epoch: int, threads: int) -> dict:
    return {
        "name": f"end-{system}-epoch{epoch:03d}",
        "system": system,
        "epoch": epoch,
        "out_dir": str(out),
        "threads": threads,
        "seed": manifest["seed"],
        "steps_per_epoch": manifest["steps_per_epoch"],
        "samples": manifest["samples_path"],
        "model_type": manifest["model_type"],
        "precision": manifest["precision"],
        "dropout": manifest["dropout"],
        "optim": manifest["optim"],
        "task": manifest["task"],
        "template": manifest["template"],
        "eval_batch_size": manifest["eval_batch_size"],
        "max_new_tokens": manifest["max_new_tokens"],
        "eos_ids": manifest["eos_ids"],
    }


def subprocess_runner(spec: CompareSpec, out: Path, log) -> Callable[[str, dict], dict]:
    """Each epoch in its own worker process (`compare.run.run_worker`: same thread settings, its own log)."""

    def run(system: str, job: dict) -> dict:
        return run_worker(system, job, out, spec, log, modules=END_WORKERS)

    return run


def collect(out: Path, manifest: dict, systems) -> tuple[dict, dict]:
    """The epoch records written so far, and the prediction files beside them."""
    records: dict[str, dict[int, dict]] = {s: {} for s in systems}
    preds: dict[str, dict[int, str]] = {s: {} for s in systems}
    for s in systems:
        for e in range(manifest["epochs"]):
            if record_path(out, s, e).exists():
                records[s][e] = json.loads(record_path(out, s, e).read_text())
                preds[s][e] = str(predictions_path(out, s, e))
    return records, preds


def run_end(spec: CompareSpec, *, runner: Callable[[str, dict], dict] | None = None, log=print) -> dict:
    """Prepare (or reuse), run every (epoch, system) without a record, write the report after each; the report.
    `runner(system, job)` replaces the worker subprocesses (tests run the workers in-process)."""
    out = Path(spec.out_dir).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    manifest = prepare_end(spec, out, log)
    threads = spec.threads or len(os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    runner = runner or subprocess_runner(spec, out, log)
    systems = spec.end.systems
    for epoch in range(manifest["epochs"]):
        for system in systems:
            path = record_path(out, system, epoch)
            if path.exists():
                log(f"epoch {epoch} {system}: done before, skipped")
                continue
            log(f"epoch {epoch} {system} ...")
            t = time.perf_counter()
            res = runner(system, epoch_job(spec, manifest, out, system, epoch, threads))
            res["wall_s"] = time.perf_counter() - t  # the worker process's whole life, start-up included
            if "error" in res:
                raise RuntimeError(f"epoch {epoch} of {system} failed: {res['error'][:300]}")
            write_json_atomic(path, res, indent=1)
            log(
                f"  epoch {epoch} {system}: train loss {_num(res['train_loss'], '{:.4f}')}, accuracy "
                f"{res['accuracy']:.2%} (n={res['n']}), train {_num(res.get('train_s'), '{:.0f}')} s, eval "
                f"{_num(res.get('eval_s'), '{:.0f}')} s, peak RSS {res['peak_rss_mb']:.0f} MB"
            )
            write_end_report(out, summarize_end(manifest, *collect(out, manifest, systems)))
    report = summarize_end(manifest, *collect(out, manifest, systems))
    write_end_report(out, report)
    log(report["table"])
    return report
