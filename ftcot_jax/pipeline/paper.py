"""The paper's open-student experiments (Ho et al. 2023, ACL): its students, its grid of runs, its numbers.

- `PAPER_STUDENTS`: the nine open students, each with its hub id and its rows in the paper's tables;
- `paper_grid()` / `paper_cell(name)`: every student x task x method run as config overrides (`ftcot run
  configs/paper/reference.yaml --paper-cell gpt2/multiarith/ft_cot`);
- `paper_results()` / `paper_value(...)`: the paper's test accuracies (paper_results.json, beside this module).
"""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

from ftcot_jax.pipeline.curate import METHOD_LABELS
from ftcot_jax.tasks import TASK_NAMES


@dataclasses.dataclass(frozen=True)
class PaperStudent:
    hub_id: str  # what `student.model` is set to in the paper grid
    table: str  # the paper table with its rows
    params: str  # the Params column of its rows
    display: str  # its name in the report


# Our student key (model basename, lower case, "_" -> "-") -> the paper's student, in the paper's order.
PAPER_STUDENTS = {
    "gpt2": PaperStudent("gpt2", "tab:performance_gpt2", "124M", "GPT-2 124M"),
    "gpt2-medium": PaperStudent("gpt2-medium", "tab:performance_gpt2", "355M", "GPT-2 Medium 355M"),
    "gpt2-large": PaperStudent("gpt2-large", "tab:performance_gpt2", "774M", "GPT-2 Large 774M"),
    "t5-small": PaperStudent("t5-small", "tab:performance_t5", "60M", "T5-Small 60M"),
    "t5-base": PaperStudent("t5-base", "tab:performance_t5", "220M", "T5-Base 220M"),
    "t5-large": PaperStudent("t5-large", "tab:performance_t5", "700M", "T5-Large 700M"),
    "flan-t5-small": PaperStudent("google/flan-t5-small", "tab:performance_flan_t5", "60M", "Flan-T5-Small 60M"),
    "flan-t5-base": PaperStudent("google/flan-t5-base", "tab:performance_flan_t5", "220M", "Flan-T5-Base 220M"),
    "flan-t5-large": PaperStudent("google/flan-t5-large", "tab:performance_flan_t5", "700M", "Flan-T5-Large 700M"),
}
# For a student the paper did not train: its smallest open decoder student, for scale only.
PAPER_NEAREST_DECODER = "gpt2"
NO_DIVERSE = ("gsm8k", "aqua", "commonsense_qa")  # no T=0.7 teacher data in the paper


def paper_diverse_d(task: str) -> int | None:
    """The number of diverse rationales D the paper used on `task` (None: no diverse reasoning run)."""
    if task in NO_DIVERSE:
        return None
    return 64 if task in ("multiarith", "svamp") else 8


def paper_grid() -> list[tuple[str, list[str]]]:
    """(cell name, overrides) for every cell of the paper's open-model grid: student x task x method."""
    cells = []
    for sname, student in PAPER_STUDENTS.items():
        for task in TASK_NAMES:
            methods = [("ft", ["curate.methods=[ft]"]), ("ft_cot", ["curate.methods=[ft_cot]"])]
            d = paper_diverse_d(task)
            if d is not None:
                methods.append((f"ft_cot_t70_{d}aug", ["curate.methods=[diverse]", f"curate.diverse_samples=[{d}]"]))
            for key, extra in methods:
                name = f"{sname}/{task}/{key}"
                cells.append(
                    (name, [f"student.model={student.hub_id}", f"tasks=[{task}]", f"run_dir=runs/paper/{name}", *extra])
                )
    return cells


def paper_cell(name: str) -> list[str]:
    """The overrides of one grid cell, named STUDENT/TASK/METHOD."""
    cells = dict(paper_grid())
    if name not in cells:
        raise ValueError(
            f"unknown paper grid cell '{name}'; expected STUDENT/TASK/METHOD such as gpt2/multiarith/ft_cot"
        )
    return cells[name]


def paper_results() -> dict:
    """The paper's tables: {"tables": {table: [{"method", "params", <task>: accuracy, ...}, ...]}, ...}."""
    return json.loads(resources.files("ftcot_jax.pipeline").joinpath("paper_results.json").read_text())


def paper_key(student: str) -> str | None:
    """The `PAPER_STUDENTS` key of a student name or path, or None when the paper did not train it."""
    name = student.rstrip("/").split("/")[-1].lower().replace("_", "-")
    return name if name in PAPER_STUDENTS else None


def paper_value(student_key: str, method: str, task: str) -> float | None:
    """The paper's test accuracy (%) of a student, method kind (zero_shot | ft | ft_cot | diverse) and task."""
    s = PAPER_STUDENTS[student_key]
    for row in paper_results()["tables"][s.table]:
        if row["method"] == METHOD_LABELS[method] and row["params"] == s.params:
            return row.get(task)
    return None
