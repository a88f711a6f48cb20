"""`ftcot run` configs for tests: the quickstart shrunk to seconds."""

from __future__ import annotations

import yaml

from tests.helpers.models import CHAR_LLAMA


def tiny_run_config(tmp_path, run_dir, tokenizer_dir, **extra) -> str:
    """A shrunk quickstart written to tmp_path: same shape as configs/quickstart.yaml, tiny everything (a random
    CHAR_LLAMA student named tiny-llama, 8 train questions, 4 test questions, 2 epochs); keywords replace
    top-level sections."""
    cfg = {
        "run_dir": str(run_dir),
        "tasks": ["last_letter_concatenation"],
        "teacher": {"model": "reference", "cache_dir": str(tmp_path / "cache")},
        "curate": {"methods": ["ft", "ft_cot"], "max_train_questions": 8},
        "student": {
            "from_scratch": True,
            "model_config": CHAR_LLAMA,
            "tokenizer": str(tokenizer_dir),
            "name": "tiny-llama",
        },
        "train": {
            "epochs": 2,
            "batch_size": 4,
            "bucket": 64,
            "max_length": 256,
            "seed": 0,
            "mesh": {"num_devices": 1},
            "optim": {"lr": 3e-3},
            "log_every_steps": 1,
            "async_checkpointing": False,
            "export": False,
        },
        "eval": {"limit": 4, "batch_size": 4, "max_new_tokens": 16, "zero_shot_max_new_tokens": 8},
    }
    for k, v in extra.items():
        cfg[k] = v
    path = tmp_path / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)
