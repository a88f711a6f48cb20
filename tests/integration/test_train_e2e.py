"""End to end: a tiny GPT-2 trained from scratch on a synthetic last-letter task through the real
train -> greedy decode -> reference evaluator path reaches >= 90% test accuracy."""

from __future__ import annotations

import json

from ftcot_jax.config import TrainConfig, from_dict
from ftcot_jax.tasks import Example
from ftcot_jax.trained import train_and_export as train
from tests.helpers.data import last_letter_samples
from tests.helpers.models import CHAR_GPT2


def test_tiny_gpt2_learns_last_letters(tmp_path, char_tokenizer):
    tok = char_tokenizer
    train_samples = last_letter_samples(512, seed=0)
    test = [
        Example(sample_index=s.sample_index, question=s.question, answer=s.answer, rationale=None)
        for s in last_letter_samples(32, seed=99)
    ]
    cfg = from_dict(
        TrainConfig,
        dict(
            run_dir=str(tmp_path / "run"),
            student={"from_scratch": True, "model_config": dict(CHAR_GPT2, n_embd=64, n_positions=64)},
            epochs=12,
            batch_size=32,
            bucket=32,
            eval={"every_epochs": 6, "batch_size": 32, "max_new_tokens": 4},
            optim={"lr": 3e-3, "warmup_steps": 20, "decay": "cosine", "clip_grad_norm": 1.0},
            mesh={"data": 2, "fsdp": 2, "tensor": 1, "num_devices": 4},
            log_every_steps=16,
        ),
    )
    result = train(cfg, tokenizer=tok, samples=train_samples, eval_examples=test)

    assert result.steps == 12 * 16
    assert [h["epoch"] for h in result.history] == [5, 11]
    assert result.best["accuracy"] >= 0.9, result.history
    assert result.last["accuracy"] == result.history[-1]["accuracy"]
    # Losses went down, per-sample predictions and the export exist.
    assert result.losses[result.steps] < 0.1 < result.losses[1]
    run = tmp_path / "run"
    preds = [json.loads(line) for line in (run / "predictions" / "epoch_011.jsonl").read_text().splitlines()]
    assert len(preds) == 32 and {"completion", "prediction", "correct", "sample_index"} <= set(preds[0])
    assert sum(p["correct"] for p in preds) / 32 == result.history[-1]["accuracy"]
    saved = json.loads((run / "results.json").read_text())
    assert saved["best_over_epochs"]["accuracy"] == result.best["accuracy"]
    assert (run / "export" / "model.safetensors").is_file() and (run / "export" / "config.json").is_file()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in lines if m["kind"] == "train"]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(train_lines[-1])
    assert any(m["kind"] == "eval" and "accuracy" in m for m in lines)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
