"""Our side of `ftcot compare`: the trainer's own setup and jitted step on the prepared batches, then a timed
greedy `decode.generate` over the eval prompts.

Run as `python -m ftcot_jax.compare.jax_worker --worker JOB.json` (`compare.run` does this, one process per
run). JAX's CPU client starts at the first computation, after `pin_threads`, so it sees the pinned CPUs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftcot_jax import decode, models
from ftcot_jax.compare.common import (
    canonical_batch,
    count_generated,
    hash_arrays,
    load_batches,
    peak_rss_mb,
    pin_threads,
    rss_mb,
    score,
    too_slow,
    worker_main,
)
from ftcot_jax.config import EvalSection, MeshConfig, OptimConfig, StudentSection, TrainConfig
from ftcot_jax.train.metrics import measure_matmul_flops
from ftcot_jax.train.step import setup


def run(job: dict) -> dict:
    """Train on every prepared batch (each step shape compiled first), then evaluate; the result record."""
    threads = pin_threads(job["threads"])
    out_dir = Path(job["out_dir"])
    base_rss = rss_mb()
    # after pin_threads: the same CPUs (and XLA thread pool) as the step below
    dtype = jnp.bfloat16 if job["precision"] == "bf16" else jnp.float32
    flops = measure_matmul_flops(dtype=dtype, shapes=job.get("matmul_shapes"))
    if skip := too_slow(job, flops):
        return skip
    batches = load_batches(out_dir / "batches.npz")
    t0 = time.perf_counter()
    model, tok = models.load(str(out_dir / "init"))
    load_s = time.perf_counter() - t0
    cfg = TrainConfig(
        run_dir=str(out_dir / "jax_run"),
        student=StudentSection(precision=job["precision"]),
        batch_size=job["batch_size"],
        seed=job["seed"],
        bucket=job["seq_len"],
        max_length=job["seq_len"],
        dropout=False,
        optim=OptimConfig(lr=job["lr"]),
        mesh=MeshConfig(num_devices=job["jax_devices"]),
        eval=EvalSection(every_epochs=0),
        export=False,
        pack_multiple=job.get("pack_multiple", 128),
    )
    st = setup(cfg, model=model, tokenizer=tok, total_steps=len(batches))
    del model
    state = st.init_state()
    losses, times, hashes, packed = [], [], [], []
    with jax.set_mesh(st.mesh):
        # The padding-free layout gives a batch's step a shape that depends on its token count (a bounded
        # set: multiples of cfg.pack_multiple): every shape is compiled here, before the timed steps, and
        # reported as compile time (what a long run pays once).
        t = time.perf_counter()
        step, n_shapes = st.compile_ahead(state, batches)
        aot_compile_s = time.perf_counter() - t
        for b in batches:
            t = time.perf_counter()
            fed = st.put_batch(b)
            state, m = step(state, fed)
            # tokens per data shard the step computed on (None: the padded batch)
            packed.append(int(fed["pack_index"].shape[-1]) if "pack_index" in fed else None)
            losses.append(float(m["loss"]))  # waits for the step
            times.append(time.perf_counter() - t)
            # the arrays the step consumed (the global device arrays), hashed after the step
            host = {k: np.asarray(jax.device_get(v))[0] for k, v in fed.items()}
            hashes.append(hash_arrays(canonical_batch(host)))
    train_peak = peak_rss_mb()
    res = {
        "losses": losses,
        "step_times": times,
        "batch_hashes": hashes,
        "load_s": load_s,
        "threads": threads,
        "aot_compile_s": aot_compile_s,
        "step_shapes": n_shapes,
        "packed_tokens": packed,
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "base_rss_mb": base_rss,
        "train_peak_rss_mb": train_peak,
    }
    res.update(_device_memory())
    res["matmul_flops"] = flops
    items = json.loads((out_dir / "eval.json").read_text())
    if items and job.get("eval", True):
        student = nnx.merge(st.student.graphdef, jax.device_get(state.params))
        try:
            res["eval"] = evaluate(student, tok, items, job)
        except Exception as e:  # a failed evaluation must not hide the training numbers
            res["eval_error"] = f"{type(e).__name__}: {e}"[:500]
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def _device_memory() -> dict:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"device_peak_mb": stats["peak_bytes_in_use"] / 2**20}
    return {}


def evaluate(model, tok, items: list[dict], job: dict) -> dict:
    """Greedy `decode.generate`, timed after one warm-up batch (compilation), scored like the torch side.

    Not `evaluation.generate_and_score`: the throughput needs the generated token ids, which its records
    do not carry, and the prompts are the prepared ones both systems decode."""
    prompts = [it["prompt"] for it in items]
    bs = job["eval_batch_size"]
    t = time.perf_counter()
    decode.generate(model, tok, prompts[:bs], max_new_tokens=job["max_new_tokens"], batch_size=bs)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    gens = decode.generate(model, tok, prompts, max_new_tokens=job["max_new_tokens"], batch_size=bs)
    dt = time.perf_counter() - t
    eos = set(job["eos_ids"])
    texts = [g.text for g in gens]
    # decode.Generation.token_ids excludes the EOS; count it like the HF side does (stop=None here, so
    # finish_reason "stop" means the row ended with an EOS)
    n_tok = sum(count_generated(list(g.token_ids), eos) + (g.finish_reason == "stop") for g in gens)
    return score(items, texts, [g.finish_reason for g in gens], job["task"], job["template"]) | {
        "decode_s": dt,
        "decode_first_batch_s": warm,
        "generated_tokens": n_tok,
        "decode_tokens_per_s": n_tok / dt,
    }


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], run))
