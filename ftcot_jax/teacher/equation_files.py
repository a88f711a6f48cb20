"""The raw equation files of the arithmetic tasks the reference teacher solves: (question, annotated equation)
per sample_index of SingleEq, AddSub, MultiArith and SVAMP, read once from the bundled raw data."""

from __future__ import annotations

import functools
import json
from pathlib import Path

FILES = {
    "single_eq": "SingleEq/questions.json",
    "addsub": "AddSub/AddSub.json",
    "multiarith": "MultiArith/MultiArith.json",
    "svamp": "SVAMP/SVAMP.json",
}


@functools.cache
def equations(task: str, data_dir: str) -> tuple[tuple[str, str], ...]:
    """(question as the task stores it, equation) per sample_index, from the bundled raw file."""
    path = Path(data_dir) / "raw" / FILES[task]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"reference teacher: cannot read {path} ({e}); expected the bundled {task} file") from None
    out = []
    for i, row in enumerate(data):
        try:
            if task == "svamp":
                out.append((row["Body"].strip() + " " + row["Question"].strip(), row["Equation"]))
            else:
                q = row["sQuestion"] if task == "single_eq" else row["sQuestion"].strip()
                (eq,) = row["lEquations"]
                out.append((q, eq))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"reference teacher: record {i} of {path} has no single equation") from None
    return tuple(out)
