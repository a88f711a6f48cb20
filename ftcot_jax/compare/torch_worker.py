"""The PyTorch baseline of `ftcot compare`: the reference trainer's inner loop.

What follows the reference (github.com/itsnamgyu/reasoning-teacher, `custom_train.py` and
`src/custom/model.py`): an HF transformers model (`AutoModelForCausalLM` / `AutoModelForSeq2SeqLM`),
`torch.optim.AdamW(model.parameters(), lr)` with torch's defaults (betas 0.9/0.999, eps 1e-8, weight decay
0.01), no schedule, no clipping, loss = the model's own `outputs.loss` on labels that are -100 on prompt and
padding, train() mode, `torch.set_float32_matmul_precision("high")`, bf16 = `torch.autocast(bf16)` over fp32
weights (Lightning's "bf16-mixed"). Evaluation = HF `generate` (greedy) with an attention mask.

What is deliberately the same as ours instead: the batches (read from the prepared batches.npz, built
once by our data pipeline: same rows, order, right padding and length) and dropout 0 (in config.json).

Run as `python -m ftcot_jax.compare.torch_worker --worker JOB.json` (`compare.run` does this). Of our
modules it imports only `compare.common`, so no JAX is loaded in its process.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from ftcot_jax.compare.common import (
    DROPOUT_KEYS,
    IGNORE,
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


def to_torch_batch(b: dict[str, np.ndarray], model_type: str, device) -> dict:
    """Our (1, B, L) arrays -> the HF keyword arguments, labels built like the reference does it:
    a copy of the ids with -100 wherever no loss is taken (the prompt, the padding)."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a[0]).astype(np.int64)).to(device)  # noqa: E731
    if model_type == "decoder":
        ids = t(b["input_ids"])
        # loss_mask[j] weights the prediction of token j+1: token j+1 is a label token.
        is_label = torch.zeros_like(ids, dtype=torch.bool)
        is_label[:, 1:] = torch.from_numpy(b["loss_mask"][0, :, :-1] > 0).to(device)
        labels = ids.masked_fill(~is_label, IGNORE)
        return {"input_ids": ids, "attention_mask": t(b["attention_mask"]), "labels": labels}
    labels = t(b["targets"]).masked_fill(~torch.from_numpy(b["loss_mask"][0] > 0).to(device), IGNORE)
    return {
        "input_ids": t(b["input_ids"]),
        "attention_mask": t(b["attention_mask"]),
        "decoder_input_ids": t(b["decoder_input_ids"]),
        "decoder_attention_mask": t(b["decoder_attention_mask"]),
        "labels": labels,
    }


PROBE_LIMIT_S = 60.0


def measure_matmul_flops(device, dtype, shapes=None, repeats: int = 5) -> float:
    """The best FLOP/s of `[M, K] @ [K, N]` over `shapes` (default one 1024 x 1024 x 1024), each timed
    `repeats` times, interleaved; on torch's own thread pool (after `torch.set_num_threads`). Where a 256^3
    probe shows that would take over PROBE_LIMIT_S (bf16 on a CPU without bf16 kernels: < 1 GFLOP/s), the
    probe's rate is the answer (the run is then reported as too slow to train)."""
    shapes = [tuple(int(d) for d in s) for s in shapes] if shapes else [(1024, 1024, 1024)]
    if shapes != [(256, 256, 256)]:
        probe = measure_matmul_flops(device, dtype, [(256, 256, 256)], repeats=2)
        if sum(2.0 * m * k * n for m, k, n in shapes) * (repeats + 1) / probe > PROBE_LIMIT_S:
            return probe
    operands = []
    for m, k, n in shapes:
        a = torch.full((m, k), 0.5, dtype=dtype, device=device)
        b = torch.full((k, n), 0.5, dtype=dtype, device=device)
        a @ b  # first touch, untimed
        operands.append((a, b))
    best = [float("inf")] * len(shapes)
    for _ in range(repeats):
        for i, (a, b) in enumerate(operands):
            _sync(device)
            t = time.perf_counter()
            a @ b
            _sync(device)
            best[i] = min(best[i], time.perf_counter() - t)
    return max(2.0 * m * k * n / dt for (m, k, n), dt in zip(shapes, best, strict=True))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(job: dict) -> dict:
    """Train on every prepared batch, then evaluate with HF generate; the result record."""
    threads = pin_threads(job["threads"])
    torch.set_num_threads(threads)
    torch.manual_seed(job["seed"])
    torch.set_float32_matmul_precision("high")  # the reference sets this (TF32 on Ampere GPUs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(job["out_dir"])
    base_rss = rss_mb()
    bf16 = job["precision"] == "bf16"
    flops = measure_matmul_flops(device, torch.bfloat16 if bf16 else torch.float32, job.get("matmul_shapes"))
    if skip := too_slow(job, flops):
        return skip
    batches = load_batches(out_dir / "batches.npz")
    t0 = time.perf_counter()
    model, tok = load_hf_model(str(out_dir / "init"), job["model_type"], device)
    load_s = time.perf_counter() - t0
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=job["lr"])
    fwd = torch.compile(model) if job["mode"] == "compile" else model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    losses, times, hashes = [], [], []
    for b in batches:
        t = time.perf_counter()
        kw = to_torch_batch(b, job["model_type"], device)
        losses.append(reference_step(fwd, opt, kw, device, bf16))
        times.append(time.perf_counter() - t)
        hashes.append(hash_arrays({k: v.cpu().numpy() for k, v in kw.items()}))
    res = {
        "losses": losses,
        "step_times": times,
        "batch_hashes": hashes,
        "load_s": load_s,
        "threads": threads,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "platform": device.type,
        "base_rss_mb": base_rss,
        "train_peak_rss_mb": peak_rss_mb(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }
    if device.type == "cuda":
        res["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    res["matmul_flops"] = flops
    items = json.loads((out_dir / "eval.json").read_text())
    if items and job.get("eval", True):
        model.eval()
        try:
            res["eval"] = hf_eval(model, tok, items, job, device, bf16)
        except Exception as e:  # a failed evaluation must not hide the training numbers
            res["eval_error"] = f"{type(e).__name__}: {e}"[:500]
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def reference_step(fwd, opt, kw: dict, device, bf16: bool) -> float:
    """One step of the reference trainer: zero_grad, forward (autocast bf16 when asked), backward, AdamW step;
    the loss (read back, so the step has finished)."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = fwd(**kw).loss
    loss.backward()
    opt.step()
    return float(loss.item())


def load_hf_model(init: str, model_type: str, device, *, no_dropout: bool = False):
    """(model, tokenizer) from the exported directory, fp32. A weight the directory lacks would be a silent random
    init in transformers: here it is an error naming it. `no_dropout` zeroes the config's dropout rates."""
    cls = transformers.AutoModelForSeq2SeqLM if model_type == "encoder_decoder" else transformers.AutoModelForCausalLM
    kw = {}
    if no_dropout:
        config = transformers.AutoConfig.from_pretrained(init)
        for k in DROPOUT_KEYS:
            if isinstance(getattr(config, k, None), float):
                setattr(config, k, 0.0)
        kw["config"] = config
    model, info = cls.from_pretrained(init, dtype=torch.float32, output_loading_info=True, **kw)
    if info.get("missing_keys"):
        raise ValueError(
            f"{init}: PyTorch would random-init {len(info['missing_keys'])} weights it lacks "
            f"({', '.join(sorted(info['missing_keys'])[:3])}); both systems must start from the same weights"
        )
    return model.to(device), transformers.AutoTokenizer.from_pretrained(init)


def hf_greedy(model, tok, prompts: list[str], *, batch_size: int, max_new_tokens: int, eos_ids, device, bf16: bool):
    """HF greedy `generate` with attention_mask (left padding for decoders), in `batch_size` chunks in the given
    order; per prompt (text up to the first EOS, finish reason "stop"/"length", generated tokens counted with it)."""
    decoder = not model.config.is_encoder_decoder
    tok.padding_side = "left" if decoder else "right"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    eos = set(eos_ids)
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i : i + batch_size], return_tensors="pt", padding=True).to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            ids = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tok.pad_token_id,
                eos_token_id=list(eos_ids),
            )
        rows = ids[:, enc["input_ids"].shape[1] :] if decoder else ids[:, 1:]  # T5: drop the start token
        for row in rows.cpu().tolist():
            n = count_generated(row, eos)
            stopped = n < len(row) or bool(row and row[-1] in eos)
            out.append((tok.decode(row[:n], skip_special_tokens=True), "stop" if stopped else "length", n))
    return out


def hf_eval(model, tok, items: list[dict], job: dict, device, bf16: bool) -> dict:
    """`hf_greedy` over the eval prompts, timed after one warm-up batch."""
    bs = job["eval_batch_size"]
    prompts = [it["prompt"] for it in items]
    greedy = functools.partial(
        hf_greedy, model, tok, batch_size=bs, max_new_tokens=job["max_new_tokens"], eos_ids=job["eos_ids"]
    )
    t = time.perf_counter()
    greedy(prompts[:bs], device=device, bf16=bf16)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    gens = greedy(prompts, device=device, bf16=bf16)
    dt = time.perf_counter() - t
    texts, reasons = [g[0] for g in gens], [g[1] for g in gens]
    n_tok = sum(g[2] for g in gens)
    return score(items, texts, reasons, job["task"], job["template"]) | {
        "decode_s": dt,
        "decode_first_batch_s": warm,
        "generated_tokens": n_tok,
        "decode_tokens_per_s": n_tok / dt,
    }


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:], run))
