"""Greedy decoding throughput: ftcot-jax (jitted prefill + while_loop KV cache) vs HF PyTorch `generate`.

Same model (SmolLM2-135M-Instruct from its GGUF by default; HF side loads our exported HF copy of the same
weights), same prompts, same left-padded batches, exactly --new-tokens new tokens per row (EOS ignored on
both sides, so both do the same work). Compile time (our first call at a shape) and HF warm-up are reported
separately and excluded from tokens/s.

    python scripts/bench_decode.py                      # batch 1, 8, 32; 64 new tokens
    python scripts/bench_decode.py --quick --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
    "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
    "How much more money does Betty need to buy the wallet?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    'Take the last letters of each words in "Lino Mariel Aditya Elisabeth" and concatenate them.',
    "A coin is heads up. Ka flips the coin. Sherrie flips the coin. Is the coin still heads up?",
    "Today is Christmas Eve of 1937. What is the date 10 days ago in MM/DD/YYYY?",
    "Mark has a garden with flowers. He planted plants of three different colors in it. Ten of them are yellow, "
    "and there are 80% more of those in purple. How many flowers does Mark have in his garden?",
]


def prompts_for(n: int) -> list[str]:
    return [f"Q: {QUESTIONS[i % len(QUESTIONS)]}\nA: Let's think step by step." for i in range(n)]


def left_pad(tok, prompts):
    import numpy as np

    enc = [tok(p)["input_ids"] for p in prompts]
    L = max(map(len, enc))
    ids = np.zeros((len(enc), L), np.int64)
    mask = np.zeros((len(enc), L), np.int64)
    for r, e in enumerate(enc):
        ids[r, L - len(e) :], mask[r, L - len(e) :] = e, 1
    return ids, mask


def bench_ours(model, ids, mask, n_new, repeats):
    from ftcot_jax import decode

    t = time.perf_counter()
    out, _ = decode.generate_ids(model, ids, mask, max_new_tokens=n_new, eos_token_id=[])
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out, _ = decode.generate_ids(model, ids, mask, max_new_tokens=n_new, eos_token_id=[])
        times.append(time.perf_counter() - t)
    best = min(times)
    return out, {
        "first_call_s": first,
        "compile_s": max(first - best, 0.0),
        "decode_s": best,
        "tokens_per_s": ids.shape[0] * n_new / best,
    }


def matmul_floor(model, batch: int, repeats: int = 10) -> dict:
    """The weight products of one decode step and nothing else: a jitted chain of [batch, in] x [in, out]
    matmuls over every kernel of the model, then the LM head, each input depending on the previous output
    (as in the real step), compiled with the options our decode loop uses at this batch size. Its time is a
    floor for our per-token time with XLA's dot kernels at M = batch rows; `ceiling_vs_hf` = the speedup
    over HF we would have if everything else in the step were free."""
    import functools
    import math

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    kernels = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = var.get_metadata().get("out_sharding") or ()
        if str(path[-1]).endswith("kernel") and len(names) >= 2:
            n_in = 1 if names[0] == "embed" else len(names) - 1  # reads / writes the residual stream
            w = var[...]
            kernels.append(w.reshape(math.prod(w.shape[:n_in]), -1))
    head_VxD = model.head_VxD()
    width = max(max(w.shape[0] for w in kernels), head_VxD.shape[1])
    x_BxW = jnp.asarray(np.random.default_rng(0).standard_normal((batch, width), dtype=np.float32))

    from ftcot_jax.models import cpu_xla

    @functools.partial(jax.jit, compiler_options=cpu_xla.loop_compiler_options(batch, cpu_xla.platform_of(model)))
    def chain(kernels, head_VxD, x_BxW):
        s_Bx1 = jnp.zeros((batch, 1), jnp.float32)
        for w in kernels:
            s_Bx1 = jnp.mean((x_BxW[:, : w.shape[0]] + s_Bx1) @ w, axis=-1, keepdims=True)
        return ((x_BxW[:, : head_VxD.shape[1]] + s_Bx1) @ head_VxD.T).max()

    jax.block_until_ready(chain(kernels, head_VxD, x_BxW))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(chain(kernels, head_VxD, x_BxW))
        best = min(best, time.perf_counter() - t)
    n_bytes = sum(w.size * w.dtype.itemsize for w in kernels) + head_VxD.size * head_VxD.dtype.itemsize
    return {"step_s": best, "tokens_per_s": batch / best, "weight_gb_per_s": n_bytes / best / 1e9}


def bench_hf(tm, ids, mask, n_new, repeats, pad_id):
    import torch

    def run():
        with torch.no_grad():
            return tm.generate(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask),
                do_sample=False,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                num_beams=1,
                pad_token_id=pad_id,
            )

    t = time.perf_counter()
    run()
    warm = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t)
    best = min(times)
    return out[:, ids.shape[1] :].numpy(), {
        "warmup_s": warm,
        "decode_s": best,
        "tokens_per_s": ids.shape[0] * n_new / best,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="anything ftcot_jax.models.load accepts")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per side (best is reported)")
    ap.add_argument("--quick", action="store_true", help="batch 1 and 8, 32 new tokens, 1 timed run")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="0 = torch default (all cores). On a shared, oversubscribed machine torch's spinning "
        "OpenMP threads slow HF down ~10x; --torch-threads 1 gives the fairer baseline there.",
    )
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--out", help="write results as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.new_tokens, args.repeats = "1,8", 32, 1
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    import jax

    from ftcot_jax import models
    from ftcot_jax.models import cpu_xla

    t = time.perf_counter()
    model, tok = models.load(args.model)
    load_s = time.perf_counter() - t
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    tm = None
    if not args.skip_hf:
        import torch
        import transformers

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        with tempfile.TemporaryDirectory() as d:
            models.save_hf(model, tok, d)
            tm = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()

    rows = []
    for B in batch_sizes:
        ids, mask = left_pad(tok, prompts_for(B))
        ours_tok, ours = bench_ours(model, ids, mask, args.new_tokens, args.repeats)
        row = {
            "batch": B,
            "prompt_len": int(ids.shape[1]),
            "new_tokens": args.new_tokens,
            "ours": ours,
            "matmul_floor": matmul_floor(model, B),
            "loop_compiler_options": cpu_xla.loop_compiler_options(B, cpu_xla.platform_of(model)),
        }
        if tm is not None:
            hf_tok, hf = bench_hf(tm, ids, mask, args.new_tokens, args.repeats, pad_id)
            row["hf"] = hf
            row["speedup"] = ours["tokens_per_s"] / hf["tokens_per_s"]
            row["greedy_token_agreement"] = float((ours_tok == hf_tok).mean())
            row["matmul_floor"]["ceiling_vs_hf"] = row["matmul_floor"]["tokens_per_s"] / hf["tokens_per_s"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    print(
        f"\nmodel={args.model}  new_tokens={args.new_tokens}  device={jax.devices()[0].platform}  "
        f"cpus={os.cpu_count()}  load_s={load_s:.1f}"
    )
    print(
        f"{'batch':>5} {'prompt':>6} {'ours tok/s':>11} {'compile s':>10} {'HF tok/s':>10} {'speedup':>8} "
        f"{'agree':>6} | {'matmul floor tok/s':>18} {'GB/s':>5} {'ceiling vs HF':>13}"
    )
    for r in rows:
        hf, fl = r.get("hf", {}), r["matmul_floor"]
        print(
            f"{r['batch']:>5} {r['prompt_len']:>6} {r['ours']['tokens_per_s']:>11.1f} "
            f"{r['ours']['compile_s']:>10.1f} {hf.get('tokens_per_s', float('nan')):>10.1f} "
            f"{r.get('speedup', float('nan')):>8.2f} {r.get('greedy_token_agreement', float('nan')):>6.2f} | "
            f"{fl['tokens_per_s']:>18.1f} {fl['weight_gb_per_s']:>5.1f} {fl.get('ceiling_vs_hf', float('nan')):>13.2f}"
        )
    print(
        "matmul floor: only the step's weight products (every kernel + LM head at M = batch rows), jitted; "
        "ceiling = floor / HF, the most a step that did nothing else could reach"
    )
    if args.out:
        torch_threads = None
        if tm is not None:
            import torch

            torch_threads = torch.get_num_threads()
        meta = {
            "model": args.model,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "torch_threads": torch_threads,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "load_s": load_s,
            "load_avg": os.getloadavg(),
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
