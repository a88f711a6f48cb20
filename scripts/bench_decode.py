"""Greedy decoding throughput: ftcot-jax (jitted prefill + while_loop KV cache) vs HF PyTorch `generate`.

Same model (SmolLM2-135M-Instruct from its GGUF by default; HF side loads our exported HF copy of the same
weights), same prompts, same left-padded batches, exactly --new-tokens new tokens per row (EOS ignored on
both sides, so both do the same work). Compile time (our first call at a shape) and HF warm-up are reported
separately and excluded from tokens/s.

    python scripts/bench_decode.py                      # batch 1, 8, 32; 64 new tokens
    python scripts/bench_decode.py --quick --out bench.json
    python scripts/bench_decode.py --random-init smollm2-135m --dtype bf16 --new-tokens 256 \
        --hf-modes eager,static-compile          # real shapes, random weights and prompt ids (no GGUF)

HF modes: `eager` = generate with its dynamic cache, `static` = a static cache without compilation,
`static-compile` = a static cache and HF's own compilation of the forward (generate compiles it on CUDA).
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


# Random-init shapes (HF configs) for --random-init; weights and prompt ids are random, so no tokenizer is needed.
SMOLLM2_135M = dict(
    model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
    rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu", bos_token_id=1, eos_token_id=2,
    pad_token_id=2,
)  # fmt: skip
RANDOM_INIT = {"smollm2-135m": SMOLLM2_135M}
HF_MODES = ("eager", "static", "static-compile")


def random_model(spec: str, dtype):
    """(model, None): a random init of a named shape (RANDOM_INIT) or of an HF config given as JSON."""
    from ftcot_jax import models

    config = RANDOM_INIT[spec] if spec in RANDOM_INIT else json.loads(spec)
    return models.from_config(config, seed=0, dtype=dtype), None


def random_prompts(n: int, vocab: int, pad_id: int, seed: int = 0):
    """Left-padded random prompt ids of 40..63 tokens (ids avoid 0..2 and the pad id)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(40, 64, n)
    L = int(lengths.max())
    ids = np.full((n, L), pad_id, np.int64)
    mask = np.zeros((n, L), np.int64)
    for r, k in enumerate(lengths):
        row = rng.integers(3, vocab, k)
        row[row == pad_id] = 3
        ids[r, L - k :], mask[r, L - k :] = row, 1
    return ids, mask


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


def bench_hf(tm, ids, mask, n_new, repeats, pad_id, mode="eager"):
    """HF `generate` in one of HF_MODES (synchronised before each clock read on CUDA)."""
    import torch

    device = next(tm.parameters()).device
    kw = {"disable_compile": True} if mode != "static-compile" else {}
    if mode != "eager":
        kw["cache_implementation"] = "static"

    def run():
        with torch.no_grad():
            out = tm.generate(
                input_ids=torch.tensor(ids, device=device),
                attention_mask=torch.tensor(mask, device=device),
                do_sample=False,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                num_beams=1,
                pad_token_id=pad_id,
                **kw,
            )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    t = time.perf_counter()
    run()
    warm = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t)
    best = min(times)
    return out[:, ids.shape[1] :].cpu().numpy(), {
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
    ap.add_argument(
        "--random-init",
        metavar="SHAPE",
        help=f"random weights and prompt ids instead of --model: {', '.join(RANDOM_INIT)} or an HF config as JSON",
    )
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="compute dtype of both sides")
    ap.add_argument("--hf-modes", default="eager", help=f"comma-separated, of {', '.join(HF_MODES)}")
    ap.add_argument("--hf-device", default="auto", help="torch device for HF (auto: cuda if available)")
    ap.add_argument("--out", help="write results as JSON here (rewritten after each batch size)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.new_tokens, args.repeats = "1,8", 32, 1
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    hf_modes = [m for m in args.hf_modes.split(",") if m]
    if bad := [m for m in hf_modes if m not in HF_MODES]:
        ap.error(f"unknown --hf-modes {bad}; expected {', '.join(HF_MODES)}")

    import jax
    import jax.numpy as jnp

    from ftcot_jax import models
    from ftcot_jax.models import cpu_xla

    t = time.perf_counter()
    dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    model, tok = random_model(args.random_init, dtype) if args.random_init else models.load(args.model, dtype=dtype)
    load_s = time.perf_counter() - t
    if tok is not None:
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    else:
        from ftcot_jax.models.api import pad_id as config_pad_id

        pad_id = config_pad_id(model)
    tm = None
    if not args.skip_hf:
        import torch
        import transformers

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        hf_device = args.hf_device if args.hf_device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        with tempfile.TemporaryDirectory() as d:
            models.save_hf(model, tok, d)
            torch_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
            tm = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch_dtype).to(hf_device).eval()

    rows = []
    for B in batch_sizes:
        if tok is None:
            ids, mask = random_prompts(B, model.config.vocab_size, pad_id)
        else:
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
            row["hf_modes"] = {}
            for i, mode in enumerate(hf_modes):
                hf_tok, hf = bench_hf(tm, ids, mask, args.new_tokens, args.repeats, pad_id, mode)
                hf["speedup"] = ours["tokens_per_s"] / hf["tokens_per_s"]
                hf["greedy_token_agreement"] = float((ours_tok == hf_tok).mean())
                row["hf_modes"][mode] = hf
                if i == 0:  # the first mode is the table's HF column
                    row["hf"] = hf
                    row["speedup"] = hf["speedup"]
                    row["greedy_token_agreement"] = hf["greedy_token_agreement"]
                    row["matmul_floor"]["ceiling_vs_hf"] = row["matmul_floor"]["tokens_per_s"] / hf["tokens_per_s"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.out:
            write_out(args, tm, load_s, rows)

    model_name = args.model if not args.random_init else f"random init {args.random_init}"
    print(
        f"\nmodel={model_name}  new_tokens={args.new_tokens}  device={jax.devices()[0].platform}  "
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
    for r in rows:
        for mode, hf in list(r.get("hf_modes", {}).items())[1:]:
            print(f"{r['batch']:>5} HF {mode}: {hf['tokens_per_s']:.1f} tok/s, speedup {hf['speedup']:.2f}")
    return 0


def write_out(args, tm, load_s, rows):
    """The results so far as JSON at --out."""
    import jax

    torch_threads = hf_device = None
    if tm is not None:
        import torch

        torch_threads = torch.get_num_threads()
        hf_device = str(next(tm.parameters()).device)
    meta = {
        "model": args.model if not args.random_init else f"random init {args.random_init}",
        "dtype": args.dtype,
        "hf_modes": args.hf_modes,
        "hf_device": hf_device,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "torch_threads": torch_threads,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "load_s": load_s,
        "load_avg": os.getloadavg(),
    }
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
