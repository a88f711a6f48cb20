"""`ftcot compare`: the same fine-tuning job in ftcot-jax and in the PyTorch reference setup, side by side.

    from ftcot_jax.compare.run import run_compare
    from ftcot_jax.config import CompareSpec
    report = run_compare(CompareSpec(model="gpt2-small", out_dir="runs/compare"))

Protocol (docs/compare.md):
1. `prepare.prepare` (this process, once): the initial weights, the batches and their hashes, the eval prompts.
2. One subprocess per (system, mode, precision) run: ours (`compare.jax_worker`, the trainer's own
   `train.step.setup` step) and the PyTorch baseline (`compare.torch_worker`: HF transformers model,
   torch.optim.AdamW, labels -100 on prompt and padding). Both read the same batches, hash what they
   actually fed to the model and record step times, losses, peak memory and greedy-eval results.
   Runs alternate between the systems (A B A B ...) so machine noise hits both alike.
3. `summary.summarize`: a table, JSON and a PNG of the loss curves; headline = the ratios within one run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ftcot_jax.compare.common import matmul_shapes, step_stats
from ftcot_jax.compare.prepare import prepare
from ftcot_jax.compare.summary import summarize, write_report
from ftcot_jax.config.compare import CompareSpec
from ftcot_jax.files import write_json_atomic

WORKER_MODULES = {"jax": "ftcot_jax.compare.jax_worker", "torch": "ftcot_jax.compare.torch_worker"}


def worker_env(threads: int, xla_flags: str = "") -> dict:
    """Same thread settings for both systems; our XLA flags without the tests' virtual-device split."""
    env = dict(os.environ)
    n = str(threads)
    env.update(
        OMP_NUM_THREADS=n,
        MKL_NUM_THREADS=n,
        OPENBLAS_NUM_THREADS=n,
        TOKENIZERS_PARALLELISM="false",
        TF_CPP_MIN_LOG_LEVEL="2",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    flags += xla_flags.split()
    env["XLA_FLAGS"] = " ".join(flags)
    if not env["XLA_FLAGS"]:
        env.pop("XLA_FLAGS")
    return env


def run_worker(system: str, job: dict, out: Path, spec: CompareSpec, log=print, modules=WORKER_MODULES) -> dict:
    """One run in its own process (honest peak memory, fresh thread pools); returns its result dict.
    `modules`: the worker module of each system."""
    name = job["name"]
    job_path = out / "jobs" / f"{name}.json"
    res_path = out / "results" / f"{name}.json"
    res_path.parent.mkdir(parents=True, exist_ok=True)
    job = dict(job, result_path=str(res_path))
    write_json_atomic(job_path, job, indent=1)
    env = worker_env(job["threads"], spec.xla_flags if system == "jax" else "")
    if res_path.exists():
        res_path.unlink()
    t = time.perf_counter()
    with open(out / "logs" / f"{name}.log", "w") as logf:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", modules[system], "--worker", str(job_path)],
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                timeout=spec.timeout_s,
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t
    if rc != 0 or not res_path.exists():
        tail = (out / "logs" / f"{name}.log").read_text().strip().splitlines()[-3:]
        err = f"exit {rc}: " + " | ".join(tail)
        log(f"  {name}: FAILED ({err[:300]})")
        return {"name": name, "error": err, "wall_s": wall}
    res = json.loads(res_path.read_text())
    res.update(name=name, wall_s=wall)
    if "skipped" in res:
        log(f"  {name}: {res['skipped']}")
        res["error"] = res["skipped"]
    return res


def run_plan(spec: CompareSpec) -> list[dict]:
    """(system, mode, precision) runs in A B A B order: per repeat and precision, ours then each torch mode."""
    plan = []
    for r in range(spec.repeats):
        for p in spec.precisions:
            plan.append({"system": "jax", "mode": "xla", "precision": p, "repeat": r})
            for m in spec.torch_modes:
                plan.append({"system": "torch", "mode": m, "precision": p, "repeat": r})
    return plan


def run_compare(spec: CompareSpec, *, samples=None, eval_examples=None, log=print) -> dict:
    """Prepare, run every planned worker, and write the report (also after each run); returns the report.
    `samples`/`eval_examples` replace the task's gold samples / test split (tests)."""
    out = Path(spec.out_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    threads = spec.threads or len(os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    t = time.perf_counter()
    manifest = prepare(spec, out, samples=samples, eval_examples=eval_examples)
    log(
        f"prepared {manifest['model']} ({manifest['n_params'] / 1e6:.1f}M params), {manifest['steps']} batches of "
        f"{spec.batch_size} x {spec.seq_len} from {manifest['samples_used']} {manifest['task']} samples "
        f"({manifest['samples_left_out_longer_than_seq_len']} longer than seq_len left out), "
        f"{manifest['eval_n']} eval prompts in {time.perf_counter() - t:.0f}s -> {out}"
    )
    common = {
        "out_dir": str(out.resolve()),
        "batch_size": spec.batch_size,
        "seq_len": spec.seq_len,
        "lr": spec.lr,
        "seed": spec.seed,
        "threads": threads,
        "jax_devices": spec.jax_devices,
        "task": manifest["task"],
        "pack_multiple": spec.pack_multiple,
        "template": manifest["template"],
        "eval_batch_size": spec.eval_batch_size,
        "max_new_tokens": spec.max_new_tokens,
        "eos_ids": manifest["eos_ids"],
        "model_type": manifest["model_type"],
        "max_est_step_s": spec.max_est_step_s,
        "flops_per_step": manifest["flops_per_token"] * spec.batch_size * spec.seq_len,
        # the peak both MFUs divide by: each framework's best rate on the model's own matmul shapes
        "matmul_shapes": matmul_shapes(manifest["hf_config"], spec.batch_size * spec.seq_len),
    }
    runs = []
    for item in run_plan(spec):
        name = f"{item['system']}-{item['mode']}-{item['precision']}-r{item['repeat']}"
        # torch.compile'd models are evaluated by the eager runs (HF generate runs the eager model).
        job = dict(
            common,
            **item,
            name=name,
            warmup_steps=spec.warmup_steps,
            eval=not (item["system"] == "torch" and item["mode"] == "compile"),
        )
        log(f"run {len(runs) + 1}: {name} ...")
        res = run_worker(item["system"], job, out, spec, log)
        res.update(item)
        if "step_times" in res:
            res.update(
                step_stats(
                    res["step_times"], spec.warmup_steps, spec.batch_size * spec.seq_len, manifest["real_tokens"]
                )
            )
            res["compile_s"] += res.get("aot_compile_s", 0.0)  # ours compiles every batch shape up front
            log(
                f"  {name}: {res['tokens_per_s']:.0f} tok/s, step {res['step_time_s']:.3f}s, "
                f"final loss {res['losses'][-1]:.4f}, wall {res['wall_s']:.0f}s"
            )
        runs.append(res)
        try:  # a partial report after every run: a long comparison stopped early still leaves its numbers
            write_report(out, summarize(spec, manifest, runs))
        except Exception as e:  # noqa: BLE001 (the final summary below raises if it is really broken)
            log(f"  (partial report not written: {type(e).__name__}: {e})")
    report = summarize(spec, manifest, runs)
    write_report(out, report)
    log(report["table"])
    return report
