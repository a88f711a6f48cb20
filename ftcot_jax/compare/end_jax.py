"""Our side of `ftcot compare --to-the-end`: one epoch through the normal trainer's public API.

One process per epoch (`python -m ftcot_jax.compare.end_jax --worker JOB.json`): `train.loop.train` with the
prepared trainer config (`train_config.json`) and `epochs` = this epoch + 1, the student loaded from the
exported `init/`, the curated samples and the prepared test questions. The trainer resumes from its own
checkpoint of the previous epoch, trains this epoch, evaluates the test split with its greedy decoder and
writes `predictions/epoch_NNN.jsonl` and `results.json`; this worker reads only those and `TrainResult`.
Train seconds run from the `train` call to the epoch's last step (restore and compilation included: XLA's
persistent cache serves the shapes of earlier epochs), evaluation seconds from there to the return;
CPU seconds (this process, all threads) over the same spans.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from ftcot_jax import models
from ftcot_jax import samples as sample_files
from ftcot_jax.compare.common import epoch_record, pin_threads, worker_main
from ftcot_jax.config import TrainConfig, load_config
from ftcot_jax.jax_setup import enable_compilation_cache
from ftcot_jax.train.loop import train


def run(job: dict) -> dict:
    """Train epoch `job["epoch"]` (the trainer resumes the earlier ones) and read its evaluation; its record."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    threads = pin_threads(job["threads"])
    enable_compilation_cache()
    out, epoch = Path(job["out_dir"]), job["epoch"]
    cfg = load_config(out / "train_config.json", [], cls=TrainConfig)
    cfg = dataclasses.replace(cfg, epochs=epoch + 1)
    model, tok = models.load(str(out / "init"))
    samples = sample_files.load_samples([job["samples"]])
    examples = [SimpleNamespace(**it) for it in json.loads((out / "eval.json").read_text())]
    last_step = (epoch + 1) * job["steps_per_epoch"]
    marks: dict[int, tuple[float, float]] = {}  # step -> (wall, CPU) clock when its metrics arrived
    result = train(
        cfg,
        model=model,
        tokenizer=tok,
        samples=samples,
        eval_examples=examples,
        on_step=lambda step, metrics: marks.setdefault(step, (time.perf_counter(), time.process_time())),
    )
    t_end, cpu_end = time.perf_counter(), time.process_time()
    summary = next((h for h in result.history if h["epoch"] == epoch), None)
    if summary is None:
        raise ValueError(f"{cfg.run_dir}: the trainer recorded no evaluation of epoch {epoch}")
    losses = [result.losses[s] for s in sorted(result.losses) if s > last_step - job["steps_per_epoch"]]
    timed = last_step in marks  # False: the epoch had finished before a kill, only its evaluation is known
    run_dir = Path(cfg.run_dir)
    times = {}
    if timed:
        (wall, cpu) = marks[last_step]
        times = {
            "train_s": wall - t_start,
            "eval_s": t_end - wall,
            "train_cpu_s": cpu - cpu_start,
            "eval_cpu_s": cpu_end - cpu,
        }
    return epoch_record(
        "jax",
        epoch,
        losses,
        summary,
        threads=threads,
        **times,
        resumed_from_step=result.resumed_from,
        predictions=str(run_dir / "predictions" / f"epoch_{epoch:03d}.jsonl"),
        results_json=str(run_dir / "results.json"),
    )


def main(argv: list[str]) -> int:
    try:
        return worker_main(argv, run)
    except (FileNotFoundError, ValueError) as e:  # bad input: one line for the driver to show
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
