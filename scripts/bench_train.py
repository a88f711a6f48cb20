"""Throughput of our jitted train step: tokens/s and MFU for GPT-2 small (124M, random init), beside the
same step in PyTorch eager (HF transformers) and in HF's own Flax GPT-2, measured in one run.

    python scripts/bench_train.py                     # batch 8 x 256, fp32 and bf16, 3 timed steps each
    python scripts/bench_train.py --steps 5 --precisions fp32 --out bench_train.json
    python scripts/bench_train.py --precisions fp32 --batch 4 --baselines torch,hf-flax \
        --hf-flax-python /tmp/hfflax/bin/python   # a venv with transformers<5, jax, flax, optax
    python scripts/bench_train.py --data gsm8k --precisions fp32 --baselines torch,hf-flax \
        --hf-flax-python /tmp/hfflax/bin/python --repeats 2

`--data random` (default): every row is a full 256-token sequence with the loss on every position (the
kernels alone: the label-only head and the padding-free layout save nothing there). `--data gsm8k`: the
project's real work, Fine-tune-CoT batches of GSM8K gold rationales cut exactly like `ftcot compare` does
(prompt + label + EOS, right padding to the length, loss on the label only); every system trains on the
same batches (written to one .npz the baselines read), each the way it would: ours with the label-only head
and the padding-free layout, torch and HF Flax with full logits and -100/zero-weight masks. tokens/s counts
batch x length tokens per step either way; real tok/s counts the non-padding ones.

Compilation (every step shape, before the timed steps) is timed separately and left out of the throughput.
MFU = 6 * N_params * real tokens/s / peak, with the peak of the device from the table in ftcot_jax/train/metrics.py,
or for a CPU a jitted matmul measured in the same process (so on a CPU the MFU is "fraction of what XLA's own
matmul reaches", not of the vendor's number).

Baselines (fp32 only, each in its own process, alternated with ours `--repeats` times; the headline is the
ratio within each repeat, as these machines are noisy):
- `torch`: HF `GPT2LMHeadModel` (same config, dropout 0, train mode), `labels=input_ids`,
  `torch.optim.AdamW`, eager; needs the `torch` extra.
- `hf-flax`: HF's `FlaxGPT2LMHeadModel` with a jitted value_and_grad + optax AdamW step and donated
  state (the shape of HF's run_clm_flax example). transformers v5 dropped the Flax models, so this runs
  in another interpreter given by `--hf-flax-python` (a venv with `transformers<5`, jax, flax, optax).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np


def bench(
    precision: str, batch: int, length: int, steps: int, layers: int, seed: int = 0, batches: list | None = None
) -> dict:
    """Our step: one warm-up step, then `steps` timed ones; `batches` (len >= steps + 1) or random all-label."""
    import jax
    import jax.numpy as jnp

    from ftcot_jax.config import MeshConfig, StudentSection, TrainConfig
    from ftcot_jax.train.metrics import mfu, peak_flops_per_device
    from ftcot_jax.train.step import setup

    hf = {
        "model_type": "gpt2",
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_embd": 768,
        "n_layer": layers,
        "n_head": 12,
    }
    cfg = TrainConfig(
        run_dir="unused",
        student=StudentSection(from_scratch=True, model_config=hf, precision=precision),
        batch_size=batch,
        dropout=False,
        bucket=length,
        max_length=length,
        mesh=MeshConfig(num_devices=1),
    )

    class _Tok:  # the step needs no tokenizer; the student only checks for an EOS id
        eos_token_id = 50256
        pad_token_id = 50256

    t0 = time.perf_counter()
    st = setup(cfg, tokenizer=_Tok(), total_steps=steps + 1)
    state = st.init_state()
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0

    if batches is None:
        rng = np.random.default_rng(seed)
        ids = rng.integers(0, hf["vocab_size"], (1, batch, length + 1), dtype=np.int32)
        b = dict(
            input_ids=ids[..., :-1],
            targets=ids[..., 1:],
            attention_mask=np.ones((1, batch, length), np.int32),
            positions=np.broadcast_to(np.arange(length, dtype=np.int32), (1, batch, length)).copy(),
            loss_mask=np.ones((1, batch, length), np.float32),
        )
        batches = [b] * (steps + 1)
    with jax.set_mesh(st.mesh):
        t0 = time.perf_counter()
        step, n_shapes = st.compile_ahead(state, batches[: steps + 1])  # every step shape, before timing
        compile_s = time.perf_counter() - t0
        state, m = step(state, st.put_batch(batches[0]))  # warm-up run (first execution allocates)
        first_loss = float(m["loss"])
        times = []
        for b in batches[1 : steps + 1]:
            t0 = time.perf_counter()
            state, m = step(state, st.put_batch(b))
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
    tokens = batch * length
    step_s = statistics.median(times)
    tps = tokens / step_s
    # Model FLOPs count only real (non-padding) tokens: padding is not useful work, whoever computes it.
    real_tps = sum(int(b["attention_mask"].sum()) for b in batches[1 : steps + 1]) / sum(times)
    peak, peak_src = peak_flops_per_device(dtype=jnp.bfloat16 if precision == "bf16" else jnp.float32)
    return {
        "precision": precision,
        "batch": batch,
        "length": length,
        "n_params": st.student.n_params,
        "init_s": init_s,
        "compile_s": compile_s,
        "step_s_median": step_s,
        "step_s_all": times,
        "tokens_per_s": tps,
        "real_tokens_per_s": real_tps,
        "mfu": mfu(st.student.n_params, real_tps, peak),
        "peak_flops": peak,
        "peak_source": peak_src,
        "model_tflops_per_s": 6 * st.student.n_params * real_tps / 1e12,
        "first_loss": first_loss,
        "last_loss": float(m["loss"]),
        "step_shapes": n_shapes,
    }


def _gpt2_config(layers: int) -> dict:
    return {
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_embd": 768,
        "n_layer": layers,
        "n_head": 12,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }


def _tokens(batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50257, (batch, length), dtype=np.int64)


def _read_batches(path: str) -> list[dict[str, np.ndarray]]:
    """The .npz of `--data gsm8k`: one (steps, 1, B, L) array per name (numpy only: the HF Flax worker runs
    in another venv without ftcot_jax)."""
    with np.load(path) as z:
        stacked = {k: z[k] for k in z.files}
    return [{k: v[i] for k, v in stacked.items()} for i in range(len(next(iter(stacked.values()))))]


def _write_batches(path: str, batches: list[dict[str, np.ndarray]]) -> None:
    np.savez(path, **{k: np.stack([b[k] for b in batches]) for k in batches[0]})


def worker_torch(batch: int, length: int, steps: int, layers: int, batches: str | None = None) -> dict:
    """HF GPT-2 in PyTorch eager, fp32: the reference trainer's inner loop (all-label, or `batches` with
    labels -100 on prompt and padding, as the reference builds them)."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**_gpt2_config(layers))).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    if batches:
        from ftcot_jax.compare.torch_worker import to_torch_batch

        feeds = [to_torch_batch(b, "decoder", "cpu") for b in _read_batches(batches)]
    else:
        ids = torch.from_numpy(_tokens(batch, length))
        feeds = [{"input_ids": ids, "labels": ids}] * (steps + 1)
    times, losses = [], []
    for i in range(steps + 1):  # the first step is warm-up
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(**feeds[i]).loss
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
        if i:
            times.append(time.perf_counter() - t)
    return {
        "system": "torch eager",
        "version": f"torch {torch.__version__}, transformers {transformers.__version__}",
        "compile_s": 0.0,
        "step_s_all": times,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def worker_hf_flax(batch: int, length: int, steps: int, layers: int, batches: str | None = None) -> dict:
    """HF's FlaxGPT2LMHeadModel, fp32: jitted value_and_grad + optax AdamW, state donated; with `batches`,
    the attention mask and a loss weighted by our loss mask (mean over label tokens)."""
    import functools

    import jax
    import optax
    import transformers

    model = transformers.FlaxGPT2LMHeadModel(transformers.GPT2Config(**_gpt2_config(layers)), seed=0)
    tx = optax.adamw(3e-4)
    params = model.params
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, b):
        def loss_fn(p):
            logits = model(
                b["input_ids"],
                attention_mask=b["attention_mask"],
                position_ids=b["positions"],
                params=p,
                train=True,
                dropout_rng=jax.random.key(0),
            ).logits
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, b["targets"])
            return (nll * b["loss_mask"]).sum() / b["loss_mask"].sum()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    if batches:
        feeds = [{k: jax.numpy.asarray(v[0]) for k, v in b.items()} for b in _read_batches(batches)]
    else:  # all-label: position j predicts token j+1 (the last position has no target)
        ids = _tokens(batch, length + 1).astype(np.int32)
        w = np.ones((batch, length), np.float32)
        feeds = [
            {
                "input_ids": ids[:, :-1],
                "targets": ids[:, 1:],
                "attention_mask": np.ones((batch, length), np.int32),
                "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)),
                "loss_mask": w,
            }
        ]
        feeds = [{k: jax.numpy.asarray(v) for k, v in feeds[0].items()}] * (steps + 1)
    t = time.perf_counter()
    compiled = step.lower(params, opt_state, feeds[0]).compile()
    compile_s = time.perf_counter() - t
    times, losses = [], []
    for i in range(steps + 1):
        t = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, feeds[i])
        losses.append(float(loss))
        if i:
            times.append(time.perf_counter() - t)
    return {
        "system": "HF Flax",
        "version": f"transformers {transformers.__version__}, jax {jax.__version__}",
        "compile_s": compile_s,
        "step_s_all": times,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


WORKERS = {"torch": worker_torch, "hf-flax": worker_hf_flax}


def gsm8k_batches(batch: int, length: int, n: int):
    """The first `n` GSM8K Fine-tune-CoT batches exactly as `ftcot compare` cuts them (SmolLM2 tokenizer,
    the only one shipped offline); returns (batches, real tokens per batch)."""
    from ftcot_jax import models
    from ftcot_jax import samples as sample_files
    from ftcot_jax.compare.prepare import cut_batches
    from ftcot_jax.config.compare import DEFAULT_TOKENIZER, CompareSpec

    spec = CompareSpec(steps=n, warmup_steps=0, batch_size=batch, seq_len=length)
    tok = models.load_tokenizer(DEFAULT_TOKENIZER)
    batches, cut = cut_batches(spec, sample_files.gold_samples("gsm8k", "ft_cot"), tok, "decoder")
    return batches, cut["real_tokens"]


def run_baseline(name: str, python: str, args) -> dict:
    """One baseline in a fresh process (`python` interpreter), its JSON result with tokens/s added."""
    cmd = [
        python,
        os.path.abspath(__file__),
        "--worker",
        name,
        "--batch",
        str(args.batch),
        "--length",
        str(args.length),
        "--steps",
        str(args.steps),
        "--layers",
        str(args.layers),
    ]
    if args.batches:
        cmd += ["--batches", args.batches]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"baseline '{name}' failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["step_s_median"] = statistics.median(res["step_s_all"])
    res["tokens_per_s"] = args.batch * args.length / res["step_s_median"]
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per precision (median reported)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--layers", type=int, default=12, help="GPT-2 small has 12")
    p.add_argument("--out", default="bench_train.json")
    p.add_argument("--baselines", default="", help="comma list of: torch, hf-flax (fp32, side by side)")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds of ours and each baseline")
    p.add_argument(
        "--hf-flax-python",
        default=None,
        help="interpreter of a venv with transformers<5 + jax + flax + optax (for hf-flax)",
    )
    p.add_argument(
        "--data",
        default="random",
        choices=("random", "gsm8k"),
        help="random all-label rows, or GSM8K Fine-tune-CoT batches (gold rationales) as `ftcot compare`",
    )
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--batches", default=None, help=argparse.SUPPRESS)  # the .npz a baseline worker trains on
    args = p.parse_args(argv)
    if args.worker:  # inside a baseline's own process
        print(json.dumps(WORKERS[args.worker](args.batch, args.length, args.steps, args.layers, args.batches)))
        return 0
    baselines = [b for b in args.baselines.split(",") if b]
    for b in baselines:
        if b not in WORKERS:
            raise SystemExit(f"--baselines: unknown baseline '{b}'; expected one of: {', '.join(sorted(WORKERS))}")
    if "hf-flax" in baselines and not args.hf_flax_python:
        raise SystemExit(
            "--baselines hf-flax needs --hf-flax-python: the python of a venv with transformers<5, "
            "e.g. python -m venv /tmp/hfflax && /tmp/hfflax/bin/pip install 'transformers<5' "
            "jax flax optax"
        )

    import jax

    from ftcot_jax.train.metrics import format_mfu

    batches, real_tokens = None, None
    if args.data == "gsm8k":
        batches, real_tokens = gsm8k_batches(args.batch, args.length, args.steps + 1)
        args.batches = os.path.splitext(args.out)[0] + ".batches.npz"
        _write_batches(args.batches, batches)
    rows, side = [], []
    precisions = [x for x in args.precisions.split(",") if x]
    for rep in range(max(args.repeats, 1)):
        for prec in precisions:
            print(f"[{rep + 1}/{args.repeats}] ours {prec} ...", file=sys.stderr, flush=True)
            rows.append(
                bench(prec, args.batch, args.length, args.steps, args.layers, batches=batches) | {"repeat": rep}
            )
        for b in baselines:
            print(f"[{rep + 1}/{args.repeats}] {b} ...", file=sys.stderr, flush=True)
            python = args.hf_flax_python if b == "hf-flax" else sys.executable
            side.append(run_baseline(b, python, args) | {"repeat": rep, "baseline": b})
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta = {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "n_devices_used": 1,
        "cpu_count": os.cpu_count(),
        "loadavg_at_end": load,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "data": args.data,
        "real_tokens_per_batch": real_tokens,
    }
    if real_tokens:
        print(f"\n{args.data} batches: real tokens per batch (of {args.batch * args.length}) {real_tokens}")
    print(
        f"\nGPT-2 small ({rows[0]['n_params'] / 1e6:.1f}M params), batch {args.batch} x {args.length}, "
        f"{meta['device']} ({meta['cpu_count']} cpus, load avg {load[0]:.1f})"
        if load
        else ""
    )
    print(
        f"{'precision':>9} | {'compile s':>9} | {'step s':>7} | {'tokens/s':>8} | {'real tok/s':>10} | "
        f"{'TFLOP/s':>7} | {'MFU':>6}"
    )
    print("-" * 75)
    for r in rows:
        print(
            f"{r['precision']:>9} | {r['compile_s']:9.1f} | {r['step_s_median']:7.2f} | {r['tokens_per_s']:8.1f} | "
            f"{r['real_tokens_per_s']:10.1f} | {r['model_tflops_per_s']:7.3f} | "
            f"{format_mfu(r['model_tflops_per_s'] * 1e12, r['peak_flops']):>6}"
        )
    if side:
        print(f"\n{'system':>24} | {'repeat':>6} | {'compile s':>9} | {'step s':>7} | {'tokens/s':>8} | ours / it")
        print("-" * 80)
        for r in side:
            ours = next(o for o in rows if o["repeat"] == r["repeat"] and o["precision"] == "fp32")
            r["ours_over_it"] = ours["tokens_per_s"] / r["tokens_per_s"]
            print(
                f"{'ftcot-jax fp32':>24} | {r['repeat'] + 1:>6} | {ours['compile_s']:9.1f} | "
                f"{ours['step_s_median']:7.2f} | {ours['tokens_per_s']:8.1f} |"
            )
            print(
                f"{r['system'] + ' fp32':>24} | {r['repeat'] + 1:>6} | {r['compile_s']:9.1f} | "
                f"{r['step_s_median']:7.2f} | {r['tokens_per_s']:8.1f} | {r['ours_over_it']:.2f}x"
            )
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": rows, "baselines": side}, f, indent=2)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
