"""What both workers of `ftcot compare` share: numpy batch helpers, host measurements, scoring, the worker entry.

Nothing here imports JAX or PyTorch: the PyTorch worker imports this module and nothing else of ours that
would pull JAX into its process (honest memory and thread numbers).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ftcot_jax import scoring
from ftcot_jax.files import write_json_atomic

IGNORE = -100  # HF's ignore_index for labels
# HF config keys of dropout rates (set to 0 where a comparison runs without dropout)
DROPOUT_KEYS = (
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "summary_first_dropout",
    "dropout_rate",
    "attention_dropout",
    "hidden_dropout",
    "dropout",
)


# ----------------------------------------------------------------------------- batches


def hf_labels_from_targets(targets: np.ndarray, loss_mask: np.ndarray) -> np.ndarray:
    """Decoder: our (targets, loss_mask) -> HF `labels` (-100 = no loss), which HF shifts internally.

    Our position j predicts targets[j] = input_ids[j+1] with weight loss_mask[j]; HF's labels[j+1] is
    the token that position j must predict."""
    labels = np.full(targets.shape, IGNORE, np.int64)
    labels[..., 1:] = np.where(loss_mask[..., :-1] > 0, targets[..., :-1], IGNORE)
    return labels


def canonical_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the model consumes, in HF terms (int64, labels with -100), from our batch arrays.
    Used to hash the batches: both systems must hash to the same digest at every step."""
    out = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "decoder_input_ids" in batch:
        out["decoder_input_ids"] = batch["decoder_input_ids"]
        out["decoder_attention_mask"] = batch["decoder_attention_mask"]
        out["labels"] = np.where(batch["loss_mask"] > 0, batch["targets"], IGNORE)
    else:
        out["labels"] = hf_labels_from_targets(batch["targets"], batch["loss_mask"])
    return {k: np.ascontiguousarray(np.asarray(v).astype(np.int64)) for k, v in out.items()}


def hash_arrays(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over (name, shape, int64 bytes) of each array, in name order."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[k]).astype(np.int64))
        h.update(k.encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_batches(path: str | Path) -> list[dict[str, np.ndarray]]:
    """batches.npz -> list of {name: (accum=1, batch, length) array}, in step order."""
    with np.load(path) as z:
        steps: dict[int, dict] = {}
        for key in z.files:
            i, name = key.split("/", 1)
            steps.setdefault(int(i), {})[name] = z[key]
    return [steps[i] for i in sorted(steps)]


# ----------------------------------------------------------------------------- measurements


def count_generated(ids: Sequence[int], eos_ids: set[int]) -> int:
    """Generated tokens up to and including the first EOS (the same count for both systems)."""
    for n, t in enumerate(ids):
        if int(t) in eos_ids:
            return n + 1
    return len(ids)


def flops_per_token(n_params: int, hf_config: dict, seq_len: int) -> float:
    """Training FLOPs per token: 6N (dense) + 12 * layers * d_model * seq_len (attention scores)."""
    layers = hf_config.get("n_layer") or hf_config.get("num_hidden_layers") or hf_config.get("num_layers") or 0
    if hf_config.get("is_encoder_decoder"):
        layers = layers + (hf_config.get("num_decoder_layers") or layers)
    d = hf_config.get("n_embd") or hf_config.get("hidden_size") or hf_config.get("d_model") or 0
    return 6.0 * n_params + 12.0 * layers * d * seq_len


def matmul_shapes(hf_config: dict, rows: int, max_dim: int = 8192) -> list[tuple[int, int, int]]:
    """The (M, K, N) shapes of the model's own weight products at `rows` tokens per step (the attention
    projections, the MLP's two (or, gated, the up) products, the LM head), each dimension capped at `max_dim`
    so that the peak measurement stays short. The peak both systems' MFU divides by is their best rate on these."""
    d = hf_config.get("n_embd") or hf_config.get("hidden_size") or hf_config.get("d_model") or 0
    ff = hf_config.get("n_inner") or hf_config.get("intermediate_size") or hf_config.get("d_ff") or 4 * d
    vocab = hf_config.get("vocab_size") or d
    if not d:
        return [(1024, 1024, 1024)]
    m = min(rows, max_dim)
    dims = [(d, 3 * d), (d, d), (d, ff), (ff, d), (d, vocab)]
    return sorted({(m, min(k, max_dim), min(n, max_dim)) for k, n in dims})


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def pin_threads(threads: int) -> int:
    """Restrict this process to the first `threads` CPUs (the same set for both systems)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    n = threads or len(cpus)
    if n > len(cpus):
        raise ValueError(f"threads={n} but only {len(cpus)} CPUs are available")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus[:n])
    return n


def too_slow(job: dict, matmul_flops: float) -> dict | None:
    """The skip record when the estimated step time (model FLOPs / measured matmul rate) is over the limit."""
    est = job["flops_per_step"] / matmul_flops
    if est <= job["max_est_step_s"]:
        return None
    return {
        "skipped": f"not trained: a step would take ~{est:.0f}s (measured {job['precision']} matmul rate "
        f"{matmul_flops / 1e9:.2f} GFLOP/s, {job['flops_per_step'] / 1e12:.2f} TFLOP per step); "
        f"limit max_est_step_s {job['max_est_step_s']:g}",
        "estimated_step_s": est,
        "matmul_flops": matmul_flops,
    }


def step_stats(step_times: list[float], warmup: int, tokens_per_step: int, real_tokens: list[int]) -> dict:
    timed = step_times[warmup:]
    med = statistics.median(timed)
    total = sum(timed)
    return {
        "step_time_s": med,
        "step_time_mean_s": total / len(timed),
        "tokens_per_s": tokens_per_step * len(timed) / total,
        "real_tokens_per_s": sum(real_tokens[warmup:]) / total,
        "first_step_s": step_times[0],
        # compile (and first-touch) time: what the first step cost beyond a steady step
        "compile_s": max(step_times[0] - med, 0.0),
    }


def score(items: list[dict], texts: list[str], finish_reasons: list[str], task: str, template: str) -> dict:
    """Both systems' completions scored by the reference evaluator (`scoring`): accuracy, n, 3 examples."""
    records = [
        scoring.evaluate_completion(task, text, it["answer"], template, fr)
        for it, text, fr in zip(items, texts, finish_reasons, strict=True)
    ]
    s = scoring.summarize(records)
    return {"accuracy": float(s["accuracy"]), "n": int(s["n"]), "completions": texts[:3]}


def epoch_record(system: str, epoch: int, losses: list[float], summary: dict, *, threads: int, **times) -> dict:
    """One system's record of one epoch of `ftcot compare --to-the-end`, the same fields for both systems.

    `summary` is `scoring.summarize` of the epoch's predictions (accuracy, n). `times` are `train_s`, `eval_s`
    (wall seconds) and `train_cpu_s`, `eval_cpu_s` (this process's CPU seconds over all its threads: unlike wall
    time, barely moved by other work on a shared machine), None where unknown; `peak_rss_mb` is added here and
    anything else in `times` (system-specific facts) is kept as given.
    """
    return {
        "system": system,
        "epoch": epoch,
        "losses": losses,
        "train_loss": sum(losses) / len(losses) if losses else None,
        "accuracy": float(summary["accuracy"]),
        "n": int(summary["n"]),
        "train_s": None,
        "eval_s": None,
        "train_cpu_s": None,
        "eval_cpu_s": None,
        **times,
        "peak_rss_mb": peak_rss_mb(),
        "threads": threads,
    }


# ----------------------------------------------------------------------------- worker entry point


def worker_main(argv: list[str], run: Callable[[dict], dict]) -> int:
    """`python -m ftcot_jax.compare.<jax|torch>_worker --worker JOB.json`: run the job, write its result."""
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m <module> --worker JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[1]).read_text())
    res = run(job)
    res["job"] = {k: v for k, v in job.items() if k != "result_path"}
    write_json_atomic(job["result_path"], res, indent=None)
    return 0
