"""`ftcot train` on a real task: gold samples built from the dataset through the sample-file format,
one epoch of a tiny from-scratch GPT-2, evaluation on the task's real test split, results written."""

from __future__ import annotations

import json

from ftcot_jax.cli import main
from ftcot_jax.samples import read_samples
from tests.helpers.models import CHAR_GPT2


def test_cli_trains_on_gold_samples_and_evaluates(tmp_path, capsys, char_tokenizer_dir):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        json.dumps(
            {
                "from_scratch": True,
                "model_config": dict(CHAR_GPT2, n_positions=512),
                "tokenizer": str(char_tokenizer_dir),
                "batch_size": 32,
                "eval_every_epochs": 1,
                "eval_limit": 4,
                "eval_max_new_tokens": 8,
                "log_every_steps": 1,
                "max_length": 200,
            }
        )
    )
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--config",
            str(cfg),
            "--run-dir",
            str(run),
            "--task",
            "multiarith",
            "--method",
            "ft",
            "--epochs",
            "1",
            "--set",
            "mesh.data=4",
            "--set",
            "mesh.fsdp=2",
            "--set",
            "export=false",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    samples = read_samples(run / "samples" / "gold_multiarith_ft.tfrecord")
    assert len(samples) == 420 and samples[0].method == "ft" and samples[0].rationale == ""
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 14  # ceil(420 / 32)
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "multiarith" and results["samples"] == 420
    # One evaluation on the first 4 questions of multiarith's real test split, scored by the evaluator.
    (ev,) = results["history"]
    assert ev["n"] == 4 and ev["epoch"] == 0 and results["best_over_epochs"] == results["last_epoch"] == ev
    preds = [json.loads(x) for x in (run / "predictions" / "epoch_000.jsonl").read_text().splitlines()]
    from ftcot_jax.tasks import load_task

    assert [p["sample_index"] for p in preds] == [e.sample_index for e in load_task("multiarith").split("test")[:4]]
    assert all(p["prompt"].endswith(" ###") for p in preds)
    assert (run / "checkpoints" / "14").is_dir()
    assert json.loads((run / "config.json").read_text())["mesh"] == {
        "data": 4,
        "fsdp": 2,
        "tensor": 1,
        "num_devices": 0,
    }
