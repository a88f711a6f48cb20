"""Raw benchmark files -> reference unified rows (the reference's `notebooks/old/Data Preparation.ipynb`).

Each `build_<task>(data_dir)` returns a list of (question, answer, rationale | None) tuples in the
reference's row order (position == sample_index). The rules, including the quirks, are the reference
notebook's ("Data Preparation.ipynb"), checked against its committed outputs; the tests pin a sha256 of
every task's rows so any drift fails loudly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Row = tuple[str, str, "str | None"]

_LETTERS = "ABCDEFGHIJ"


class TaskDataError(ValueError):
    """A bundled/cached data file is missing, unreadable or not what the task expects (one-line message)."""


# --- reading files with one-line errors -------------------------------------


def _read_text(path: Path, task: str, expected: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskDataError(f"task '{task}': data file {path} is missing; expected {expected}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TaskDataError(f"task '{task}': cannot read {path} ({e}); expected {expected}") from None


def read_json(path: Path, task: str, expected: str) -> Any:
    """json.load with a one-line error naming the task, the file and what it should have held."""
    text = _read_text(path, task, expected)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskDataError(
            f"task '{task}': {path} is corrupt or truncated (invalid JSON at line {e.lineno} col {e.colno});"
            f" expected {expected}"
        ) from None


def read_jsonl(path: Path, task: str, expected: str) -> list[Any]:
    """JSON-lines reader (one object per non-empty line) with one-line errors naming the bad line."""
    text = _read_text(path, task, expected)
    rows = []
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 / U+0085, which splitlines() breaks on.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise TaskDataError(
                f"task '{task}': {path} is corrupt or truncated (invalid JSON on line {lineno}); expected {expected}"
            ) from None
    return rows


def _field(task: str, path: Path, row: Any, i: int | None, *keys: str) -> Any:
    """Nested lookup row[k1][k2]... with a one-line error naming the record and the missing field."""
    value = row
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            where = f"{path}" if i is None else f"record {i} of {path}"
            raise TaskDataError(
                f"task '{task}': {where} has no field '{'.'.join(keys)}'; expected the original benchmark format"
            )
        value = value[key]
    return value


def _check_count(task: str, path: Path, rows: list, expected: int) -> None:
    if len(rows) != expected:
        raise TaskDataError(f"task '{task}': {path} has {len(rows)} records; expected {expected} (truncated file?)")


# --- shared verbalisation -----------------------------------------------------


def verbalize_multichoice(question: str, choices: list[str]) -> str:
    """`question + " Answer choices: (A) c1, (B) c2, ... ."`, each choice stripped (reference verbalize_multichoice)."""
    listed = ", ".join(f"({_LETTERS[i]}) {c.strip()}" for i, c in enumerate(choices))
    return question + " Answer choices: " + listed + "."


def _bigbench_choice(task: str, path: Path, n: int, *, strip_input: bool, shuffle_seed: int | None) -> list[Row]:
    """BIG-bench multiple-choice tasks (reference preprocess_bigbench_choice)."""
    examples = _field(task, path, read_json(path, task, "a BIG-bench task.json"), None, "examples")
    _check_count(task, path, examples, n)
    state = None
    if shuffle_seed is not None:
        # legacy RandomState: its permutation stream is frozen across numpy versions
        state = np.random.RandomState(shuffle_seed)
    rows = []
    for i, ex in enumerate(examples):
        text = _field(task, path, ex, i, "input")
        scores = _field(task, path, ex, i, "target_scores")
        # Quirk kept: tracking's paper file was saved before .strip() was added ("has the \nWhich choice...").
        question = (text.strip() if strip_input else text) + "\nWhich choice is true?"
        keys = list(scores)  # dict order of the json file
        choices = [k[:-1] if k.endswith(".") else k for k in keys]
        correct = [j for j, k in enumerate(keys) if scores[k] == 1]
        if len(correct) != 1:
            raise TaskDataError(f"task '{task}': record {i} of {path} has {len(correct)} correct choices; expected 1")
        position = list(range(len(keys)))
        if state is not None:
            # One RandomState for the whole file; the j-th key moves to position perm[j].
            position = [int(p) for p in state.permutation(list(range(len(keys))))]
        ordered = [""] * len(keys)
        for j, c in enumerate(choices):
            ordered[position[j]] = c
        rows.append((verbalize_multichoice(question, ordered), _LETTERS[position[correct[0]]], None))
    return rows


# --- one builder per task -------------------------------------------------------


def build_single_eq(raw: Path) -> list[Row]:
    path = raw / "SingleEq" / "questions.json"
    data = read_json(path, "single_eq", "a JSON list of SingleEq problems")
    _check_count("single_eq", path, data, 508)
    rows = []
    for i, s in enumerate(data):
        q = _field("single_eq", path, s, i, "sQuestion")
        # Not stripped (the reference asserted it already is); float answer -> "43.0".
        rows.append((q, str(_field("single_eq", path, s, i, "lSolutions")[0]), None))
    return rows


def build_addsub(raw: Path) -> list[Row]:
    path = raw / "AddSub" / "AddSub.json"
    data = read_json(path, "addsub", "a JSON list of AddSub problems")
    _check_count("addsub", path, data, 395)
    return [
        (_field("addsub", path, s, i, "sQuestion").strip(), str(_field("addsub", path, s, i, "lSolutions")[0]), None)
        for i, s in enumerate(data)
    ]


def build_multiarith(raw: Path) -> list[Row]:
    path = raw / "MultiArith" / "MultiArith.json"
    data = read_json(path, "multiarith", "a JSON list of MultiArith problems")
    _check_count("multiarith", path, data, 600)
    return [
        (
            _field("multiarith", path, s, i, "sQuestion").strip(),
            str(int(_field("multiarith", path, s, i, "lSolutions")[0])),
            None,
        )
        for i, s in enumerate(data)
    ]


def build_gsm8k(raw: Path) -> list[Row]:
    rows = []
    for name, n in (("train.jsonl", 7473), ("test.jsonl", 1319)):  # train rows first, then test
        path = raw / "grade-school-math" / name
        data = read_jsonl(path, "gsm8k", "JSON lines with 'question' and 'answer' ('... #### 72')")
        _check_count("gsm8k", path, data, n)
        for i, s in enumerate(data):
            full = _field("gsm8k", path, s, i, "answer")
            k = full.find("####")
            if k < 0:
                raise TaskDataError(f"task 'gsm8k': record {i} of {path} has no '####' in its answer")
            # Gold chain = text before '####' (unstripped, keeps its trailing newline); answer may hold commas.
            rows.append((_field("gsm8k", path, s, i, "question"), full[k + 5 :], full[:k]))
    return rows


def aqua_rows(path: Path, n: int) -> list[Row]:
    """AQuA JSON-lines (train.json or test.json): options "A)21" lose their 2-char "A)" prefix."""
    data = read_jsonl(path, "aqua", "JSON lines with 'question', 'options', 'rationale', 'correct'")
    _check_count("aqua", path, data, n)
    rows = []
    for i, s in enumerate(data):
        options = [o[2:] for o in _field("aqua", path, s, i, "options")]
        question = verbalize_multichoice(_field("aqua", path, s, i, "question").strip(), options)
        rows.append((question, _field("aqua", path, s, i, "correct"), _field("aqua", path, s, i, "rationale").strip()))
    return rows


def build_aqua_test(raw: Path) -> list[Row]:
    return aqua_rows(raw / "AQuA" / "test.json", 254)


def build_svamp(raw: Path) -> list[Row]:
    path = raw / "SVAMP" / "SVAMP.json"
    data = read_json(path, "svamp", "a JSON list of SVAMP problems")
    _check_count("svamp", path, data, 1000)
    return [
        (
            _field("svamp", path, s, i, "Body").strip() + " " + _field("svamp", path, s, i, "Question").strip(),
            str(_field("svamp", path, s, i, "Answer")),
            None,
        )
        for i, s in enumerate(data)
    ]


def build_date_understanding(raw: Path) -> list[Row]:
    path = raw / "Bigbench_Date" / "task.json"
    return _bigbench_choice("date_understanding", path, 369, strip_input=True, shuffle_seed=0)


def build_tracking_shuffled_objects(raw: Path) -> list[Row]:
    path = raw / "Bigbench_object_tracking" / "task.json"
    return _bigbench_choice("tracking_shuffled_objects", path, 750, strip_input=False, shuffle_seed=None)


def _kojima_symbolic(task: str, path: Path) -> list[Row]:
    examples = _field(task, path, read_json(path, task, "{'examples': [{question, answer}]}"), None, "examples")
    _check_count(task, path, examples, 500)
    return [
        (_field(task, path, e, i, "question"), _field(task, path, e, i, "answer"), None) for i, e in enumerate(examples)
    ]


def build_last_letter_concatenation(raw: Path) -> list[Row]:
    return _kojima_symbolic("last_letter_concatenation", raw / "last_letters" / "last_letters.json")


def build_coin_flip(raw: Path) -> list[Row]:
    return _kojima_symbolic("coin_flip", raw / "coin_flip" / "coin_flip.json")


def build_commonsense_qa(raw: Path) -> list[Row]:
    rows = []
    # Official train, then the official dev set (the reference's test split).
    for name, n in (("train_rand_split.jsonl", 9741), ("dev_rand_split.jsonl", 1221)):
        path = raw / "CommonsenseQA" / name
        data = read_jsonl(path, "commonsense_qa", "JSON lines with 'answerKey' and 'question' {stem, choices}")
        _check_count("commonsense_qa", path, data, n)
        for i, s in enumerate(data):
            stem = _field("commonsense_qa", path, s, i, "question", "stem").strip()
            choices = [c["text"] for c in _field("commonsense_qa", path, s, i, "question", "choices")]
            rows.append((verbalize_multichoice(stem, choices), _field("commonsense_qa", path, s, i, "answerKey"), None))
    return rows


def build_strategy_qa(raw: Path) -> list[Row]:
    path = raw / "StrategyQA" / "task.json"
    examples = _field("strategy_qa", path, read_json(path, "strategy_qa", "a BIG-bench task.json"), None, "examples")
    _check_count("strategy_qa", path, examples, 2290)
    rows = []
    for i, e in enumerate(examples):
        answer = "Yes" if _field("strategy_qa", path, e, i, "target_scores", "Yes") == 1 else "No"
        target = _field("strategy_qa", path, e, i, "target")
        for lead in ("Yes. ", "No. "):
            if target.startswith(lead):
                target = target[len(lead) :]
                break
        # Stripped like AQuA's rationale (176 targets carry a double space after "Yes." or a trailing space).
        rows.append((_field("strategy_qa", path, e, i, "input").strip(), answer, target.strip()))
    return rows


BUILDERS: dict[str, Callable[[Path], list[Row]]] = {
    "single_eq": build_single_eq,
    "addsub": build_addsub,
    "multiarith": build_multiarith,
    "gsm8k": build_gsm8k,
    "aqua": build_aqua_test,  # test part only; the train part is fetched on demand (tasks/aqua.py)
    "svamp": build_svamp,
    "date_understanding": build_date_understanding,
    "tracking_shuffled_objects": build_tracking_shuffled_objects,
    "last_letter_concatenation": build_last_letter_concatenation,
    "coin_flip": build_coin_flip,
    "commonsense_qa": build_commonsense_qa,
    "strategy_qa": build_strategy_qa,
}
