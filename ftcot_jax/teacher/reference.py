"""The `reference` teacher: a program, NOT a language model, for offline runs and tests.

It answers through the same Backend interface and cache code path as an LLM teacher, with rationales
taken from the data instead of generated:

- gsm8k, aqua, strategy_qa: the dataset's gold rationale. GSM8K's calculator annotations `<<48/2=24>>`
  are removed (they are tool markup, not reasoning text an LLM teacher would write).
- single_eq, addsub, multiarith, svamp: written from the annotated equation (`lEquations` / `Equation` in
  the bundled raw files, teacher/equation_files.py) by the solver of teacher/equations.py, one arithmetic
  step per sentence.
- coin_flip, last_letter_concatenation, tracking_shuffled_objects: a program reads the question and
  writes out every step of the simulation (teacher/simulators.py).
- date_understanding, commonsense_qa: nothing to write a rationale from (tasks/rationale_sources.py). teach()
  raises a fatal TeacherError naming the task (`ftcot teach` stops at once) and `check_supported` raises
  ValueError.

The step-2 answer text states the answer the rationale reaches (" 43.", " (C).", " yes.", " yajo."): the
gold answer whenever the data is consistent. A few dataset rows are not (SingleEq/SVAMP equations that
give another number than the gold answer, two malformed SingleEq/AddSub equations): there the record
answers what the equation gives (or "unknown"), so the zs_cot filter rejects it in curation exactly as it
rejects a wrong LLM answer, and no rationale ever contradicts its own answer. Every item of a supported
task gets a record. Records carry protocol="reference", teacher_model="reference", zero token counts.

Samples (diverse reasoning): the stand-in for an LLM teacher's temperature samples. At temperature 0 every
completion index of a question gets the same rationale, completion 0's, as greedy decoding would. At a
temperature > 0 completion index k > 0 gets variant k of the rationale: the same correct reasoning in another
style (other wording, another order of the steps, more or less detail), chosen deterministically from
(task, question, k); teacher/variants.py writes them. Completion 0 is the greedy rationale at every temperature.

This module is the backend: it finds each item's data, picks the writer and stamps the records.
"""

from __future__ import annotations

import re

from ftcot_jax.tasks import load_task
from ftcot_jax.tasks.rationale_sources import EQUATION, GOLD_RATIONALE, SUPPORTED_TASKS, check_supported
from ftcot_jax.teacher import equation_files, equations, simulators, variants
from ftcot_jax.teacher.backend import TeacherError, TeachItem, zs_cot_record
from ftcot_jax.teacher.rationale import RationaleError, fmt
from ftcot_jax.teacher.records import TeacherRecord

__all__ = ["ENDPOINT", "MODEL", "SUPPORTED_TASKS", "VERSION", "ReferenceBackend"]

MODEL = "reference"
# The version of the rationales this program writes: part of the teach stage hash, so a run re-teaches (and drops
# its cached reference answers) when the text changes. 2: last letters built up one letter at a time ("so far").
VERSION = 2
ENDPOINT = "local:reference"  # no server: the rationales come from the bundled data files


def _answer_text(task: str, gold: str) -> str:
    if task in ("aqua", "tracking_shuffled_objects", "commonsense_qa", "date_understanding"):
        return f" ({gold})."
    return f" {gold}."


class ReferenceBackend:
    """Backend protocol implementation (see ftcot_jax/teacher/backend.py) without any model."""

    model = MODEL
    endpoint = ENDPOINT
    protocol = "reference"

    def __init__(self, data_dir=None):
        self._data_dir = data_dir
        self._tasks: dict = {}

    def _task(self, name: str):
        if name not in self._tasks:
            self._tasks[name] = load_task(name) if self._data_dir is None else load_task(name, data_dir=self._data_dir)
        return self._tasks[name]

    def solve(self, task: str, sample_index: int, question: str, gold: str, variant: int = 0) -> tuple[str, str]:
        """(rationale, answer) for one item; variant 0 is the greedy rationale, variant k > 0 another style of
        it (module doc). The answer is the gold answer when the rationale reaches it, else what the rationale
        reaches ("unknown" when the annotation is unusable): such records are wrong on purpose and curation
        drops them. RationaleError when the item is not the dataset's."""
        check_supported(task)
        if variant < 0:
            raise ValueError(f"variant must be >= 0, got {variant}")
        if task in GOLD_RATIONALE:
            ex = self._task(task).example(sample_index)
            if ex.question != question:
                raise RationaleError(f"{task}#{sample_index}: question differs from the dataset's")
            if not ex.rationale or not ex.rationale.strip():
                raise RationaleError(f"{task}#{sample_index}: the dataset has no gold rationale")
            text = ex.rationale.strip()
            if task == "gsm8k":
                text = re.sub(r"<<[^<>]*>>", "", text)
            if variant:
                text = variants.gold_rationale_variant(task, text, gold, variant, question)
            return text, gold
        if task in EQUATION:
            rows = equation_files.equations(task, str(self._task(task).data_dir))
            if not 0 <= sample_index < len(rows) or rows[sample_index][0] != question:
                raise RationaleError(f"{task}#{sample_index}: question differs from the raw file's")
            equation = rows[sample_index][1]
            try:
                text, value = equations.equation_rationale(equation, variant, f"{task}\x00{question}")
            except RationaleError as e:
                return f"The annotated equation {equation.strip()!r} cannot be used ({e}).", "unknown"
            return text, gold if equations.close(value, float(gold.replace(",", ""))) else fmt(value)
        if task == "last_letter_concatenation":
            return simulators.last_letter_rationale(question, gold, variant)
        fn = {"coin_flip": simulators.coin_flip_rationale, "tracking_shuffled_objects": simulators.tracking_rationale}[
            task
        ]
        return fn(question, variant)

    def record(
        self, item: TeachItem, completion_index: int, temperature: float, rationale: str, answer: str
    ) -> TeacherRecord:
        return zs_cot_record(
            item,
            completion_index,
            teacher=self,
            rationale=rationale,
            answer_text=_answer_text(item.task, answer),
            temperature=temperature,
        )

    async def teach(self, item: TeachItem, completion_indices: list[int], temperature: float) -> list[TeacherRecord]:
        """One record per completion index: the greedy rationale at temperature 0, variant `index` above it."""
        try:
            check_supported(item.task)
        except ValueError as e:
            err = TeacherError(str(e))
            err.fatal = True  # every item of the task would fail the same way: stop the run
            raise err from None
        gold = item.gold_answer.strip()
        out = []
        for c in completion_indices:
            try:
                text, answer = self.solve(
                    item.task, item.sample_index, item.question, gold, c if temperature > 0 else 0
                )
            except RationaleError as e:
                raise TeacherError(f"reference teacher: {e}") from None
            out.append(self.record(item, c, temperature, text, answer))
        return out
