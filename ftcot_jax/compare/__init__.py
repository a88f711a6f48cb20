"""`ftcot compare`: the same fine-tuning job in ftcot-jax and in the PyTorch reference setup, side by side
(docs/compare.md).

    from ftcot_jax.compare.run import run_compare
    report = run_compare(CompareSpec(model="gpt2-small", out_dir="runs/compare"))  # ftcot_jax.config.CompareSpec

- `common`: numpy helpers both workers import (batch hashing, HF labels, host measurements, scoring, entry point)
- `prepare`: initial weights exported for both systems, the batches cut and hashed, the eval prompts
- `jax_worker` / `torch_worker`: one run each, in its own process
- `run`: the A/B plan and the worker subprocesses
- `summary`: the report (table, JSON, loss-curve plot)
- `end_prepare`, `end_jax`, `end_torch`, `end_run`, `end_summary`: `--to-the-end`, whole epochs of a run config's
  student in both systems, every epoch scored on the test split (`end_run.run_end`)

This package module imports nothing: `python -m ftcot_jax.compare.torch_worker` loads it first, and the
PyTorch worker's process must not load JAX.
"""
