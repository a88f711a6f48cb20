"""Where a rationale for each task can come from without a language model: facts about the data that the
reference (program) teacher relies on, kept below the config so that a run naming a task the program cannot
teach fails at load, before any work.

- gold rationale: the dataset ships one (GSM8K, AQuA, StrategyQA);
- equation: the raw files annotate each question with its equation (SingleEq, AddSub, MultiArith, SVAMP);
- program: a program can read the question and simulate it (Coin Flip, Last Letter, Tracking).
"""

from __future__ import annotations

from ftcot_jax.tasks.task import TASK_NAMES

GOLD_RATIONALE = ("gsm8k", "aqua", "strategy_qa")
EQUATION = ("single_eq", "addsub", "multiarith", "svamp")
PROGRAM = ("coin_flip", "last_letter_concatenation", "tracking_shuffled_objects")
SUPPORTED_TASKS = GOLD_RATIONALE + EQUATION + PROGRAM
UNSUPPORTED_REASON = "it has no gold rationales, equations or a parseable structure to write a rationale from"


def check_supported(task: str) -> None:
    """ValueError naming the task when the reference teacher cannot teach it (or it is no task at all)."""
    if task not in SUPPORTED_TASKS:
        if task not in TASK_NAMES:
            raise ValueError(f"unknown task '{task}'; expected one of: {', '.join(TASK_NAMES)}")
        raise ValueError(
            f"the reference teacher cannot teach '{task}': {UNSUPPORTED_REASON}; "
            f"it supports: {', '.join(SUPPORTED_TASKS)}"
        )
