"""The PyTorch side of `ftcot compare --to-the-end`: one epoch of the reference loop, then HF greedy evaluation.

One process per epoch (`python -m ftcot_jax.compare.end_torch --worker JOB.json`): the model from the exported
`init/` (`torch_worker.load_hf_model`: a weight it lacks is an error), `torch.optim.AdamW` with the run's optimizer
settings (the reference's: betas 0.9/0.999, eps 1e-8, weight decay 0.01, constant lr), the state of the previous
epoch from `torch/ckpt/`, then the epoch's prepared batches in order (`torch_worker.reference_step`: loss on label
tokens only), a checkpoint (model and optimizer; with the epoch's losses and time, so a kill during evaluation
does not retrain), then `torch_worker.hf_greedy` on every test prompt, scored by `scoring` and written as
`torch/predictions/epoch_NNN.jsonl` with the trainer's fields. Imports no JAX.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from ftcot_jax import scoring
from ftcot_jax.compare.common import epoch_record, load_batches, peak_rss_mb, pin_threads, worker_main
from ftcot_jax.compare.torch_worker import hf_greedy, load_hf_model, reference_step, to_torch_batch
from ftcot_jax.files import write_jsonl_atomic


def _ckpt(out: Path, epoch: int) -> Path:
    return out / "torch" / "ckpt" / f"epoch_{epoch:03d}.pt"


def _save(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill while saving leaves the previous checkpoint whole


def run(job: dict) -> dict:
    """Train epoch `job["epoch"]` (unless its checkpoint exists) and evaluate it; the epoch's record."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    threads = pin_threads(job["threads"])
    torch.set_num_threads(threads)
    torch.manual_seed(job["seed"] + job["epoch"])  # dropout masks only; the batches are prepared
    torch.set_float32_matmul_precision("high")  # the reference sets this
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out, epoch, bf16 = Path(job["out_dir"]), job["epoch"], job["precision"] == "bf16"
    model, tok = load_hf_model(str(out / "init"), job["model_type"], device, no_dropout=not job["dropout"])
    o = job["optim"]
    opt = torch.optim.AdamW(
        model.parameters(), lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"], weight_decay=o["weight_decay"]
    )
    done = _ckpt(out, epoch)
    if done.exists():  # trained before a kill during its evaluation: evaluate only
        state = torch.load(done, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        losses, train_s, train_cpu_s = state["losses"], state["train_s"], state.get("train_cpu_s")
    else:
        if epoch > 0:
            prev = _ckpt(out, epoch - 1)
            if not prev.exists():
                raise FileNotFoundError(f"{prev}: epoch {epoch} needs the state after epoch {epoch - 1}")
            state = torch.load(prev, map_location=device, weights_only=False)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optim"])
        model.train()
        losses = [
            reference_step(model, opt, to_torch_batch(b, job["model_type"], device), device, bf16)
            for b in load_batches(out / "batches" / f"epoch_{epoch:03d}.npz")
        ]
        train_s, train_cpu_s = time.perf_counter() - t_start, time.process_time() - cpu_start
        _save(
            done,
            {
                "model": model.state_dict(),
                "optim": opt.state_dict(),
                "losses": losses,
                "train_s": train_s,
                "train_cpu_s": train_cpu_s,
            },
        )
        for older in done.parent.glob("epoch_*.pt"):  # the next epoch needs only this one
            if older != done:
                older.unlink()
    train_peak = peak_rss_mb()

    model.eval()
    items = json.loads((out / "eval.json").read_text())
    t, cpu = time.perf_counter(), time.process_time()
    order = sorted(range(len(items)), key=lambda i: len(tok(items[i]["prompt"])["input_ids"]))  # as ours batches
    gens = hf_greedy(
        model,
        tok,
        [items[i]["prompt"] for i in order],
        batch_size=job["eval_batch_size"],
        max_new_tokens=job["max_new_tokens"],
        eos_ids=job["eos_ids"],
        device=device,
        bf16=bf16,
    )
    records: list[dict | None] = [None] * len(items)
    for i, (text, reason, _) in zip(order, gens, strict=True):
        it = items[i]
        r = scoring.evaluate_completion(job["task"], text, it["answer"], job["template"], reason)
        records[i] = {
            "sample_index": it["sample_index"],
            "question": it["question"],
            "answer": it["answer"],
            "prompt": it["prompt"],
            "completion": text,
            "finish_reason": reason,
            **r,
        }
    eval_s, eval_cpu_s = time.perf_counter() - t, time.process_time() - cpu
    write_jsonl_atomic(out / "torch" / "predictions" / f"epoch_{epoch:03d}.jsonl", records)
    summary = scoring.summarize(records)
    return epoch_record(
        "torch",
        epoch,
        losses,
        summary,
        threads=threads,
        train_s=train_s,
        eval_s=eval_s,
        train_cpu_s=train_cpu_s,
        eval_cpu_s=eval_cpu_s,
        train_peak_rss_mb=train_peak,
        torch_version=torch.__version__,
    )


def main(argv: list[str]) -> int:
    try:
        return worker_main(argv, run)
    except (FileNotFoundError, ValueError) as e:  # bad input: one line for the driver to show
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
