"""The padding-free layout (TrainConfig.pack_multiple) against the padded step, on real Fine-tune-CoT batches.

    python scripts/bench_packing.py                       # GPT-2 small, 6 GSM8K gold-rationale batches of 8 x 256
    python scripts/bench_packing.py --steps 12 --pack-multiples 0,64,128,256 --out bench_packing.json

The batches are cut exactly as `ftcot compare` cuts them (compare.prepare.cut_batches: the trainer's own
encoding and Batcher, every batch padded to `--seq-len`). Each variant is one `train.setup` in this
process; every distinct step shape is compiled first (timed as compile), then the variants run batch by
batch in alternating order (A B, B A, ...) so machine noise hits them alike. Every variant starts from
the same weights and sees the same batches, so their losses must agree; the table prints the largest gap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pack-multiples", default="0,128", help="variants; 0 = the padded step")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--steps", type=int, default=6, help="batches (each variant runs each once)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--layers", type=int, default=12, help="GPT-2 small has 12")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--out", default="bench_packing.json")
    args = p.parse_args(argv)
    variants = [int(x) for x in args.pack_multiples.split(",") if x.strip()]
    if not variants or any(v < 0 for v in variants):
        raise SystemExit(f"--pack-multiples: expected integers >= 0, got {args.pack_multiples!r}")

    import jax

    from ftcot_jax import models
    from ftcot_jax import samples as sample_files
    from ftcot_jax.compare.prepare import cut_batches
    from ftcot_jax.config import MeshConfig, StudentSection, TrainConfig
    from ftcot_jax.config.compare import DEFAULT_TOKENIZER, PRESETS, CompareSpec
    from ftcot_jax.train.step import setup

    spec = CompareSpec(task=args.task, steps=args.steps, warmup_steps=0, batch_size=args.batch, seq_len=args.seq_len)
    tok = models.load_tokenizer(DEFAULT_TOKENIZER)
    batches, cut = cut_batches(spec, sample_files.gold_samples(args.task, "ft_cot"), tok, "decoder")
    hf = dict(
        PRESETS["gpt2-small"],
        n_layer=args.layers,
        vocab_size=max(50257, len(tok)),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id or tok.eos_token_id,
    )

    runs = {}
    for pm in variants:
        cfg = TrainConfig(
            run_dir="unused",
            batch_size=args.batch,
            dropout=False,
            student=StudentSection(from_scratch=True, model_config=hf, precision=args.precision),
            bucket=args.seq_len,
            max_length=args.seq_len,
            mesh=MeshConfig(num_devices=1),
            pack_multiple=pm,
        )
        st = setup(cfg, tokenizer=tok, total_steps=args.steps)
        state = st.init_state()
        t = time.perf_counter()
        with jax.set_mesh(st.mesh):
            step, n_shapes = st.compile_ahead(state, batches)
        runs[pm] = {
            "st": st,
            "step": step,
            "shapes": n_shapes,
            "state": state,
            "compile_s": time.perf_counter() - t,
            "times": [],
            "losses": [],
            "tokens": [],
        }
        print(
            f"pack_multiple {pm}: {n_shapes} step shapes compiled in {runs[pm]['compile_s']:.1f}s",
            file=sys.stderr,
            flush=True,
        )

    for i, b in enumerate(batches):
        for pm in variants if i % 2 == 0 else variants[::-1]:
            r = runs[pm]
            with jax.set_mesh(r["st"].mesh):
                t = time.perf_counter()
                fed = r["st"].put_batch(b)
                r["state"], m = r["step"](r["state"], fed)
                loss = float(m["loss"])  # waits for the step
                r["times"].append(time.perf_counter() - t)
            r["losses"].append(loss)
            r["tokens"].append(int(fed["pack_index"].shape[-1]) if "pack_index" in fed else args.batch * args.seq_len)

    base = runs[variants[0]]
    rows = []
    for pm in variants:
        r = runs[pm]
        rows.append(
            {
                "pack_multiple": pm,
                "compile_s": r["compile_s"],
                "step_shapes": r["shapes"],
                "step_s_median": statistics.median(r["times"]),
                "step_s_all": r["times"],
                "tokens_computed": r["tokens"],
                "losses": r["losses"],
                "per_batch_speedup_vs_first": [a / x for a, x in zip(base["times"], r["times"], strict=True)],
                "total_speedup_vs_first": sum(base["times"]) / sum(r["times"]),
                "max_loss_gap_vs_first": float(np.max(np.abs(np.subtract(r["losses"], base["losses"])))),
            }
        )
    print(
        f"\nGPT-2 small ({args.layers} layers), {args.steps} {args.task} batches of {args.batch} x {args.seq_len}, "
        f"{args.precision}, real tokens per batch {cut['real_tokens']}"
    )
    print(
        f"{'pack_multiple':>13} | {'shapes':>6} | {'compile s':>9} | {'step s':>7} | {'vs first':>8} | "
        f"{'tokens computed (mean)':>22} | max dloss"
    )
    print("-" * 98)
    for r in rows:
        print(
            f"{r['pack_multiple']:>13} | {r['step_shapes']:>6} | {r['compile_s']:9.1f} | {r['step_s_median']:7.2f} | "
            f"{r['total_speedup_vs_first']:7.2f}x | {np.mean(r['tokens_computed']):22.0f} | "
            f"{r['max_loss_gap_vs_first']:.1e}"
        )
    with open(args.out, "w") as f:
        json.dump(
            {
                "task": args.task,
                "batch": args.batch,
                "seq_len": args.seq_len,
                "layers": args.layers,
                "precision": args.precision,
                "real_tokens": cut["real_tokens"],
                "device": jax.devices()[0].device_kind,
                "results": rows,
            },
            f,
            indent=2,
        )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
