"""Teacher files in the shape of the reference's released ones (`B_<teacher>__C_zs_cot/D_<task>.json`), written
by the tests: `finetune_key`, `train_key`, `prediction_template` and `epoch` present and null, `method: "ft_cot"`,
the temperatures under `metadata.parameters`, no step-2 `finish_reason`, several completions for some samples."""

from __future__ import annotations

import json

from ftcot_jax.tasks import load_task


def completion(ex, c: int, correct: bool) -> dict:
    step1 = f"Q: {ex.question}\nA: Let's think step by step."
    rationale = f" Rationale {c} of question {ex.sample_index}."
    return {
        "sample_index": ex.sample_index,
        "completion_index": c,
        "question": ex.question,
        "answer": ex.answer,
        "prompt": f"{step1}{rationale} Therefore, the answer is",
        "completion": f" {ex.answer if correct else 'wrong'}.",
        "reasoning_prompt": step1,
        "reasoning_completion": rationale,
        "reasoning_finish_reason": "stop",
    }


def released_file(path, task: str, *, per_sample=(1, 5, 1), correct=(True, True, False), n_test=1, **meta) -> dict:
    """Writes a file for the first len(per_sample) train questions (per_sample[i] completions each, the answer
    right or wrong per `correct`) and the first `n_test` test questions; `meta` replaces metadata keys."""
    t = load_task(task)
    data = {}
    for ex, n, ok in zip(t.split("train")[: len(per_sample)], per_sample, correct, strict=True):
        data[str(ex.sample_index)] = [completion(ex, c, ok) for c in range(n)]
    for ex in t.split("test")[:n_test]:
        data[str(ex.sample_index)] = [completion(ex, 0, True)]
    metadata = {
        "dataset_key": task,
        "base_model": "text-davinci-002",
        "completion_key": "zs_cot",
        "finetune_key": None,
        "train_key": None,
        "method": "ft_cot",
        "prediction_template": None,
        "parameters": {"temperature": 0, "max_tokens": 128, "reasoning_temperature": 0, "reasoning_max_tokens": 128},
        "epoch": None,
    } | meta
    doc = {"metadata": metadata, "data": data}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return doc
