"""Answer cleansing and scoring: the reference evaluator's logic (`src/evaluation/evaluator.py` of
github.com/itsnamgyu/reasoning-teacher).

The default behaviour is the reference's, quirks included, so accuracies are comparable with the paper:

- Prefix rule: with no prefix for the template (zs, zs_cot, ft_token, None) the *first* answer candidate in
  the whole completion is the prediction; with a prefix (fs_cot "The answer is", ft_cot_token "-->",
  ft_cot_natural "Therefore, the answer is") the *first* candidate after the first occurrence of the prefix,
  or the *last* candidate of the whole completion when the prefix is missing.
- Multiple choice uses `[ABCDE]` / `[ABCDEF]` / `[ABC]` anywhere, so capitals inside words count
  ("Bob" yields "B"; "Answer: C" yields "A" first).
- GSM8K and MultiArith compare *strings* after removing commas: a prediction "18.0" is wrong for gold "18"
  (and "18" is wrong for a gold "18.0"); AddSub, SVAMP and SingleEq compare floats within 1e-6.
  `lenient_numbers=True` compares all five arithmetic tasks as floats instead (not the reference).
- StrategyQA golds "Yes"/"No" are lower-cased; candidates are the words "yes"/"no" after mapping quotes,
  newlines, dots, whitespace, colons and commas to spaces ("Yes." and "no," count; "yes!" does not).
- Last letter concatenation: the single candidate is the whole text with quotes, newlines, dots and
  whitespace removed (so "The answer is yajo" never equals "yajo"; after "-->" it is the rest of the text).
- `complete` is `finish_reason == "stop"` (False when no finish reason is known, as for the reference's
  custom-model completions).

Extension (not in the reference, which would crash): a `None` completion (e.g. a failed generation) is
scored as no prediction: wrong, no candidates, format not correct.
"""

from __future__ import annotations

import re

from ftcot_jax.prompts import PREDICTION_PREFIXES
from ftcot_jax.tasks.task import TASK_NAMES

ARITHMETIC = ("gsm8k", "addsub", "multiarith", "svamp", "single_eq")
FLOAT_ANSWER = ("addsub", "svamp", "single_eq")  # compared as floats (|pred - gold| <= 1e-6)
_MC_PATTERNS = {
    "aqua": re.compile(r"[ABCDE]"),
    "commonsense_qa": re.compile(r"[ABCDE]"),
    "date_understanding": re.compile(r"[ABCDEF]"),
    "tracking_shuffled_objects": re.compile(r"[ABC]"),
}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_YES_NO_SEPARATORS = re.compile("\"|'|\n|\\.|\\s|:|,")
_LETTER_NOISE = re.compile("\"|'|\n|\\.|\\s")
_TOL = 1e-6

Answer = str | float


def _check(task: str, template: str | None) -> None:
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task '{task}'; expected one of: {', '.join(TASK_NAMES)}")
    if template not in PREDICTION_PREFIXES:
        names = ", ".join(str(t) for t in PREDICTION_PREFIXES)
        raise ValueError(f"unknown prediction template '{template}'; expected one of: {names}")


def extract_candidates(task: str, text: str, *, lenient_numbers: bool = False) -> list[Answer]:
    """Every substring of `text` that has the task's answer format, in order."""
    if task in _MC_PATTERNS:
        return _MC_PATTERNS[task].findall(text)
    if task in ARITHMETIC:
        found = _NUMBER.findall(text.replace(",", ""))
        return [float(x) for x in found] if (task in FLOAT_ANSWER or lenient_numbers) else found
    if task in ("strategy_qa", "coin_flip"):
        words = _YES_NO_SEPARATORS.sub(" ", text.lower()).split(" ")
        return [w for w in words if w in ("yes", "no")]
    if task == "last_letter_concatenation":
        return [_LETTER_NOISE.sub("", text)]
    raise ValueError(f"unknown task '{task}'; expected one of: {', '.join(TASK_NAMES)}")


def cleanse_prediction(
    task: str, completion: str | None, template: str | None, *, lenient_numbers: bool = False
) -> tuple[Answer | None, list[Answer]]:
    """(prediction, candidates) by the prefix rule; prediction None when there is no candidate."""
    _check(task, template)
    if completion is None:
        return None, []
    prefix = PREDICTION_PREFIXES[template]
    first = True
    if prefix is None:
        candidates = extract_candidates(task, completion, lenient_numbers=lenient_numbers)
    else:
        at = completion.find(prefix)
        if at == -1:
            candidates = extract_candidates(task, completion, lenient_numbers=lenient_numbers)
            first = False  # no prefix: the model probably ended with its answer
        else:
            candidates = extract_candidates(task, completion[at + len(prefix) :], lenient_numbers=lenient_numbers)
    if not candidates:
        return None, candidates
    return (candidates[0] if first else candidates[-1]), candidates


def cleanse_answer(task: str, answer: str, *, lenient_numbers: bool = False) -> Answer:
    """Gold answer in comparable form: commas removed (arithmetic), lower-cased (strategy_qa), float (3 tasks)."""
    if task in ARITHMETIC:
        answer = answer.replace(",", "")
    if task == "strategy_qa":
        answer = answer.lower()
    if task in FLOAT_ANSWER or (lenient_numbers and task in ARITHMETIC):
        try:
            return float(answer)
        except ValueError:
            raise ValueError(
                f"task '{task}': gold answer {answer!r} is not a number; expected a numeric string"
            ) from None
    return answer


def _same(task: str, prediction: Answer | None, answer: Answer) -> bool:
    if prediction is None:
        return False
    if isinstance(answer, float):
        return abs(prediction - answer) <= _TOL
    return prediction == answer


def evaluate_completion(
    task: str,
    completion: str | None,
    answer: str,
    template: str | None,
    finish_reason: str | None = None,
    *,
    lenient_numbers: bool = False,
) -> dict:
    """Per-sample record: prediction, correct, contains_answer, correct_format, complete."""
    prediction, candidates = cleanse_prediction(task, completion, template, lenient_numbers=lenient_numbers)
    gold = cleanse_answer(task, answer, lenient_numbers=lenient_numbers)
    prefix = PREDICTION_PREFIXES[template]
    return {
        "prediction": prediction,
        "correct": _same(task, prediction, gold),
        "contains_answer": any(_same(task, c, gold) for c in candidates),
        "correct_format": completion is not None and (prefix is None or prefix in completion),
        "complete": finish_reason == "stop",
    }


def check_answer(
    task: str, completion: str | None, answer: str, template: str | None, *, lenient_numbers: bool = False
) -> bool:
    """Is the parsed prediction equal to the cleansed gold answer (the teacher-curation filter)?"""
    prediction, _ = cleanse_prediction(task, completion, template, lenient_numbers=lenient_numbers)
    return _same(task, prediction, cleanse_answer(task, answer, lenient_numbers=lenient_numbers))


SUMMARY_KEYS = ("correct", "contains_answer", "correct_format", "complete")


def summarize(records: list[dict]) -> dict:
    """Column means of the records: accuracy (mean of `correct`), contains_answer, correct_format, complete, n."""
    n = len(records)
    if n == 0:
        return {"accuracy": 0.0, "contains_answer": 0.0, "correct_format": 0.0, "complete": 0.0, "n": 0}
    for i, r in enumerate(records):
        missing = [k for k in SUMMARY_KEYS if k not in r]
        if missing:
            raise ValueError(f"record {i} has no {', '.join(missing)}; expected evaluate_completion records")
    means = {k: sum(bool(r[k]) for r in records) / n for k in SUMMARY_KEYS}
    return {
        "accuracy": means["correct"],
        "contains_answer": means["contains_answer"],
        "correct_format": means["correct_format"],
        "complete": means["complete"],
        "n": n,
    }
