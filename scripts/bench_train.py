"""Throughput of our jitted train step: tokens/s and MFU for GPT-2 small (124M, random init).

    python scripts/bench_train.py                     # batch 8 x 256, fp32 and bf16, 3 timed steps each
    python scripts/bench_train.py --steps 5 --precisions fp32 --out bench_train.json

Every row of the batch is a full 256-token sequence with the loss on every position, so tokens/s counts
exactly batch x length tokens per step. Compilation (the first call) is timed separately and left out
of the throughput. MFU = 6 * N_params * tokens/s / peak, with the peak of the device from the table in
ftcot_jax/metrics.py, or for a CPU a jitted matmul measured in the same process (so on a CPU the MFU is
"fraction of what XLA's own matmul reaches", not of the vendor's number).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def bench(precision: str, batch: int, length: int, steps: int, layers: int, seed: int = 0) -> dict:
    import jax
    import jax.numpy as jnp

    from ftcot_jax import train as T
    from ftcot_jax.config import MeshConfig, TrainConfig
    from ftcot_jax.metrics import mfu, peak_flops_per_device

    hf = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": layers,
          "n_head": 12}
    cfg = TrainConfig(run_dir="unused", from_scratch=True, model_config=hf, batch_size=batch, precision=precision,
                      dropout=False, bucket=length, max_length=length, mesh=MeshConfig(num_devices=1))

    class _Tok:  # the step needs no tokenizer; the student only checks for an EOS id
        eos_token_id = 50256
        pad_token_id = 50256

    t0 = time.perf_counter()
    st = T.setup(cfg, tokenizer=_Tok(), total_steps=steps + 1)
    state = st.init_state()
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, hf["vocab_size"], (1, batch, length + 1), dtype=np.int32)
    b = dict(input_ids=ids[..., :-1], targets=ids[..., 1:], attention_mask=np.ones((1, batch, length), np.int32),
             positions=np.broadcast_to(np.arange(length, dtype=np.int32), (1, batch, length)).copy(),
             loss_mask=np.ones((1, batch, length), np.float32))
    fed = st.put_batch(b)
    with jax.set_mesh(st.mesh):
        t0 = time.perf_counter()
        compiled = st.step_fn.lower(state, fed).compile()
        compile_s = time.perf_counter() - t0
        state, m = compiled(state, fed)  # warm-up run (first execution allocates)
        first_loss = float(m["loss"])
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, m = compiled(state, st.put_batch(b))
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
    tokens = batch * length
    step_s = statistics.median(times)
    tps = tokens / step_s
    peak, peak_src = peak_flops_per_device(dtype=jnp.bfloat16 if precision == "bf16" else jnp.float32)
    return {"precision": precision, "batch": batch, "length": length, "n_params": st.student.n_params,
            "init_s": init_s, "compile_s": compile_s, "step_s_median": step_s, "step_s_all": times,
            "tokens_per_s": tps, "mfu": mfu(st.student.n_params, tps, peak), "peak_flops": peak,
            "peak_source": peak_src, "model_tflops_per_s": 6 * st.student.n_params * tps / 1e12,
            "first_loss": first_loss, "last_loss": float(m["loss"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per precision (median reported)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--layers", type=int, default=12, help="GPT-2 small has 12")
    p.add_argument("--out", default="bench_train.json")
    args = p.parse_args(argv)

    import jax

    rows = []
    for prec in [x for x in args.precisions.split(",") if x]:
        print(f"benchmarking {prec} ...", file=sys.stderr, flush=True)
        rows.append(bench(prec, args.batch, args.length, args.steps, args.layers))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta = {"device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
            "n_devices_used": 1, "cpu_count": os.cpu_count(), "loadavg_at_end": load,
            "python": platform.python_version(), "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
    print(f"\nGPT-2 small ({rows[0]['n_params'] / 1e6:.1f}M params), batch {args.batch} x {args.length}, "
          f"{meta['device']} ({meta['cpu_count']} cpus, load avg {load[0]:.1f})" if load else "")
    print(f"{'precision':>9} | {'compile s':>9} | {'step s':>7} | {'tokens/s':>8} | {'TFLOP/s':>7} | {'MFU':>6}")
    print("-" * 62)
    for r in rows:
        print(f"{r['precision']:>9} | {r['compile_s']:9.1f} | {r['step_s_median']:7.2f} | {r['tokens_per_s']:8.1f} | "
              f"{r['model_tflops_per_s']:7.3f} | {r['mfu']:6.1%}")
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=2)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
