"""The `reference` teacher: a program, NOT a language model, for offline runs and tests.

It answers through the same Backend interface and cache code path as an LLM teacher, with rationales
taken from the data instead of generated:

- gsm8k, aqua, strategy_qa: the dataset's gold rationale. GSM8K's calculator annotations `<<48/2=24>>`
  are removed (they are tool markup, not reasoning text an LLM teacher would write).
- single_eq, addsub, multiarith, svamp: written from the annotated equation (`lEquations` / `Equation` in
  the bundled raw files), one arithmetic step per sentence; equations with the unknown inside are solved
  by undoing one operation at a time.
- coin_flip, last_letter_concatenation, tracking_shuffled_objects: a program reads the question and
  writes out every step of the simulation.
- date_understanding, commonsense_qa: nothing to write a rationale from. teach() raises a fatal
  TeacherError naming the task (`ftcot teach` stops at once) and `check_supported` raises ValueError.

The step-2 answer text states the answer the rationale reaches (" 43.", " (C).", " yes.", " yajo."): the
gold answer whenever the data is consistent. A few dataset rows are not (SingleEq/SVAMP equations that
give another number than the gold answer, two malformed SingleEq/AddSub equations): there the record
answers what the equation gives (or "unknown"), so the zs_cot filter rejects it in curation exactly as it
rejects a wrong LLM answer, and no rationale ever contradicts its own answer. Every item of a supported
task gets a record. The teacher is deterministic: every completion index of a question gets the same
rationale. Records carry protocol="reference", teacher_model="reference", zero token counts.
"""

from __future__ import annotations

import ast
import functools
import itertools
import json
import re
import time
from pathlib import Path

from ftcot_jax import prompts
from ftcot_jax.tasks import TASK_NAMES, load_task
from ftcot_jax.teacher.backend import TeacherError, TeachItem
from ftcot_jax.teacher.cache import TeacherRecord

MODEL = "reference"
ENDPOINT = "local:reference"  # no server: the rationales come from the bundled data files

GOLD_RATIONALE = ("gsm8k", "aqua", "strategy_qa")
EQUATION = ("single_eq", "addsub", "multiarith", "svamp")
PROGRAM = ("coin_flip", "last_letter_concatenation", "tracking_shuffled_objects")
SUPPORTED_TASKS = GOLD_RATIONALE + EQUATION + PROGRAM
UNSUPPORTED_REASON = "it has no gold rationales, equations or a parseable structure to write a rationale from"


def check_supported(task: str) -> None:
    if task not in SUPPORTED_TASKS:
        if task not in TASK_NAMES:
            raise ValueError(f"unknown task '{task}'; expected one of: {', '.join(TASK_NAMES)}")
        raise ValueError(
            f"the reference teacher cannot teach '{task}': {UNSUPPORTED_REASON}; "
            f"it supports: {', '.join(SUPPORTED_TASKS)}"
        )


class RationaleError(ValueError):
    """The data of one item cannot be turned into a rationale that reaches its gold answer."""


# --- numbers and equations ---------------------------------------------------------------------

_OPS = {
    ast.Add: ("+", lambda a, b: a + b),
    ast.Sub: ("-", lambda a, b: a - b),
    ast.Mult: ("*", lambda a, b: a * b),
    ast.Div: ("/", lambda a, b: a / b),
}


def fmt(x: float) -> str:
    """3.0 -> "3", 0.30000000000000004 -> "0.3", 9.43 -> "9.43" (no exponent notation)."""
    if abs(x - round(x)) < 1e-9:
        return str(int(round(x)))
    s = f"{x:.10f}".rstrip("0").rstrip(".")
    return s


def _parse(expr: str) -> ast.expr:
    try:
        node = ast.parse(expr.strip().replace("X", "x"), mode="eval").body
    except SyntaxError:
        raise RationaleError(f"cannot parse equation side {expr!r}") from None
    for n in ast.walk(node):
        ok = isinstance(n, (ast.BinOp, ast.operator, ast.Name, ast.Load)) or (
            isinstance(n, ast.Constant) and isinstance(n.value, (int, float))
        )
        if not ok or (isinstance(n, ast.BinOp) and type(n.op) not in _OPS) or (isinstance(n, ast.Name) and n.id != "x"):
            raise RationaleError(f"unsupported element in equation side {expr!r}")
    return node


def _has_x(node: ast.expr) -> bool:
    return any(isinstance(n, ast.Name) for n in ast.walk(node))


def _show(node: ast.expr, top: bool = True) -> str:
    if isinstance(node, ast.Constant):
        return fmt(float(node.value))
    if isinstance(node, ast.Name):
        return "x"
    s = f"{_show(node.left, False)} {_OPS[type(node.op)][0]} {_show(node.right, False)}"
    return s if top else f"({s})"


def _evaluate(node: ast.expr, steps: list[str]) -> float:
    """Value of a constant expression; appends one "a op b = c" string per operation (innermost first)."""
    if isinstance(node, ast.Constant):
        return float(node.value)
    if not isinstance(node, ast.BinOp):
        raise RationaleError("the unknown appears where a number is needed")
    a, b = _evaluate(node.left, steps), _evaluate(node.right, steps)
    sym, fn = _OPS[type(node.op)]
    if sym == "/" and b == 0:
        raise RationaleError("division by zero in the equation")
    c = fn(a, b)
    steps.append(f"{fmt(a)} {sym} {fmt(b)} = {fmt(c)}")
    return c


def _join_steps(steps: list[str]) -> str:
    if len(steps) == 1:
        return f"{steps[0]}."
    words = ["First"] + ["Then"] * (len(steps) - 2) + ["Finally"]
    return " ".join(f"{w}, {s}." for w, s in zip(words, steps, strict=True))


def equation_rationale(equation: str) -> tuple[str, float]:
    """(rationale, value of the unknown) for one linear equation in x, or a bare expression (SVAMP)."""
    sides = [s for s in equation.split("=")]
    if len(sides) == 1:
        sides = ["x", sides[0]]
    if len(sides) != 2:
        raise RationaleError(f"equation {equation!r} does not have exactly one '='")
    left, right = _parse(sides[0]), _parse(sides[1])
    if _has_x(right) and not _has_x(left):
        left, right = right, left
    if not _has_x(left) or _has_x(right):
        raise RationaleError(f"equation {equation!r} is not linear in one unknown on one side")
    steps: list[str] = []
    if isinstance(left, ast.Name):  # x = expression: compute it
        value = _evaluate(right, steps)
        if not steps:
            return f"The answer is the given number {fmt(value)}.", value
        if len(steps) == 1:
            return f"We need to compute {steps[0]}.", value
        return f"We need to compute {_show(right)}. {_join_steps(steps)}", value
    text = [f"Let x be the number we are looking for. The question says that {_show(left)} = {_show(right)}."]
    value = _evaluate(right, steps)
    if steps:
        text.append(f"First we compute {_show(right)}: {', '.join(steps)}.")
    # Undo the outermost operation around x until x stands alone.
    while isinstance(left, ast.BinOp):
        sym = _OPS[type(left.op)][0]
        x_left = _has_x(left.left)
        inner, other = (left.left, left.right) if x_left else (left.right, left.left)
        if _has_x(other):
            raise RationaleError(f"equation {equation!r} has the unknown on both sides of an operation")
        known_steps: list[str] = []
        known = _evaluate(other, known_steps)
        if known_steps:
            text.append(f"We compute {_show(other)}: {', '.join(known_steps)}.")
        if sym == "+":
            new, how = value - known, f"{fmt(value)} - {fmt(known)}"
        elif sym == "*":
            if known == 0:
                raise RationaleError("multiplication by zero hides the unknown")
            new, how = value / known, f"{fmt(value)} / {fmt(known)}"
        elif sym == "-":
            new, how = (
                (value + known, f"{fmt(value)} + {fmt(known)}")
                if x_left
                else (known - value, f"{fmt(known)} - {fmt(value)}")
            )
        else:  # "/"
            if x_left:
                new, how = value * known, f"{fmt(value)} * {fmt(known)}"
            else:
                if value == 0:
                    raise RationaleError("division leaves no solution")
                new, how = known / value, f"{fmt(known)} / {fmt(value)}"
        text.append(f"So {_show(inner)} = {how} = {fmt(new)}.")
        left, value = inner, new
    return " ".join(text), value


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


# --- the synthetic tasks ----------------------------------------------------------------------

_COIN_STEP = re.compile(r"(?:^|\.\s)([^.?]+?) (flips|does not flip) the coin(?=\.)")


def coin_flip_rationale(question: str) -> tuple[str, str]:
    if not question.startswith("A coin is heads up."):
        raise RationaleError("coin_flip question does not start with 'A coin is heads up.'")
    steps = _COIN_STEP.findall(question)
    if not steps:
        raise RationaleError("coin_flip question names no flips")
    heads = True
    text = ["The coin starts heads up."]
    for name, verb in steps:
        if verb == "flips":
            heads = not heads
            text.append(f"{name} flips the coin, so it is now {'heads' if heads else 'tails'} up.")
        else:
            text.append(f"{name} does not flip the coin, so it stays {'heads' if heads else 'tails'} up.")
    flips = sum(v == "flips" for _, v in steps)
    text.append(
        f"The coin was flipped {flips} time{'s' if flips != 1 else ''}, so it ends {'heads' if heads else 'tails'} up."
    )
    return " ".join(text), "yes" if heads else "no"


def last_letter_rationale(question: str, gold: str | None = None) -> tuple[str, str]:
    """Some names in the data have two words ("Jose Antonio"), which the question cannot show: when
    `gold` is given, the words are grouped into len(gold) consecutive names whose last letters give it
    (first such grouping); otherwise, or when no grouping fits, every word is a name."""
    m = re.search(r'"([^"]+)"', question)
    if not m:
        raise RationaleError("last_letter_concatenation question has no quoted words")
    words = m.group(1).split()
    names = [[w] for w in words]
    if gold is not None and 0 < len(gold) < len(words):
        for cuts in itertools.combinations(range(1, len(words)), len(gold) - 1):
            bounds = (0, *cuts, len(words))
            groups = [words[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
            if "".join(g[-1][-1] for g in groups) == gold:
                names = groups
                break
    text = [f'The last letter of "{" ".join(g)}" is "{g[-1][-1]}".' for g in names]
    answer = "".join(g[-1][-1] for g in names)
    text.append(f'Concatenating them gives "{answer}".')
    return " ".join(text), answer


_CHOICES = re.compile(r"\(([A-Z])\) (.*?)(?=, \([A-Z]\) |\.$)")
_PEOPLE = re.compile(r"^(.+?), (.+?), and (.+?) are ")
_SWAP = re.compile(r"(First|Then|Finally), (\w+) and (\w+) (swap|switch|trade)")


def tracking_rationale(question: str) -> tuple[str, str]:
    """Simulates the swaps. The initial holdings are read from the clause of each person that ends with
    one of the answer choices ("Alice has a orange ball" -> "orange ball")."""
    body, sep, choice_text = question.partition("\nWhich choice is true? Answer choices: ")
    if not sep:
        raise RationaleError("tracking question has no answer choices")
    choices = dict((letter, text) for letter, text in _CHOICES.findall(choice_text))
    people = _PEOPLE.match(body)
    if not people or len(choices) != 3:
        raise RationaleError("tracking question does not list three people and three choices")
    names = list(people.groups())
    start, _, rest = body.partition(": ")
    setup = rest.split("\n")[0].strip().rstrip(".")
    clauses = re.split(r", and |, ", setup)
    holding: dict[str, str] = {}
    for clause in clauses:
        name = next((n for n in names if clause.startswith(n + " ")), None)
        obj = max((c for c in choices.values() if clause.endswith(" " + c)), key=len, default=None)
        if name is None or obj is None:
            raise RationaleError(f"cannot read the starting clause {clause!r}")
        holding[name] = obj
    if len(holding) != 3:
        raise RationaleError("tracking question does not give every person an object")
    swaps = _SWAP.findall(body)
    if not swaps:
        raise RationaleError("tracking question names no swaps")
    text = ["At the start: " + ", ".join(f"{n} has {holding[n]}" for n in names) + "."]
    for when, a, b, _ in swaps:
        if a not in holding or b not in holding:
            raise RationaleError(f"swap names an unknown person ({a}, {b})")
        holding[a], holding[b] = holding[b], holding[a]
        text.append(f"{when}, {a} and {b} swap, so {a} has {holding[a]} and {b} has {holding[b]}.")
    asked = re.search(r"At the end of the [a-z]+, (\w+) ", body)
    if not asked or asked.group(1) not in holding:
        raise RationaleError("tracking question does not ask about one of the people")
    who = asked.group(1)
    letter = next(letter for letter, c in choices.items() if c == holding[who])
    text.append(f"At the end, {who} has {holding[who]}, which is choice ({letter}).")
    return " ".join(text), letter


# --- raw equation files -----------------------------------------------------------------------


@functools.cache
def _equations(task: str, data_dir: str) -> tuple[tuple[str, str], ...]:
    """(question as the task stores it, equation) per sample_index, from the bundled raw file."""
    raw = Path(data_dir) / "raw"
    files = {
        "single_eq": "SingleEq/questions.json",
        "addsub": "AddSub/AddSub.json",
        "multiarith": "MultiArith/MultiArith.json",
        "svamp": "SVAMP/SVAMP.json",
    }
    path = raw / files[task]
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


# --- the backend ------------------------------------------------------------------------------


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

    def solve(self, task: str, sample_index: int, question: str, gold: str) -> tuple[str, str]:
        """(rationale, answer) for one item. The answer is the gold answer when the rationale reaches it,
        else what the rationale reaches ("unknown" when the annotation is unusable): such records are
        wrong on purpose and curation drops them. RationaleError when the item is not the dataset's."""
        check_supported(task)
        if task in GOLD_RATIONALE:
            ex = self._task(task).example(sample_index)
            if ex.question != question:
                raise RationaleError(f"{task}#{sample_index}: question differs from the dataset's")
            if not ex.rationale or not ex.rationale.strip():
                raise RationaleError(f"{task}#{sample_index}: the dataset has no gold rationale")
            text = ex.rationale.strip()
            if task == "gsm8k":
                text = re.sub(r"<<[^<>]*>>", "", text)
            return text, gold
        if task in EQUATION:
            rows = _equations(task, str(self._task(task).data_dir))
            if not 0 <= sample_index < len(rows) or rows[sample_index][0] != question:
                raise RationaleError(f"{task}#{sample_index}: question differs from the raw file's")
            equation = rows[sample_index][1]
            try:
                text, value = equation_rationale(equation)
            except RationaleError as e:
                return f"The annotated equation {equation.strip()!r} cannot be used ({e}).", "unknown"
            return text, gold if _close(value, float(gold.replace(",", ""))) else fmt(value)
        if task == "last_letter_concatenation":
            return last_letter_rationale(question, gold)
        fn = {"coin_flip": coin_flip_rationale, "tracking_shuffled_objects": tracking_rationale}[task]
        return fn(question)

    def record(
        self, item: TeachItem, completion_index: int, temperature: float, rationale: str, answer: str
    ) -> TeacherRecord:
        step1 = prompts.zs_cot_step1_prompt(item.question)
        return TeacherRecord(
            task=item.task,
            split=item.split,
            sample_index=item.sample_index,
            completion_index=completion_index,
            teacher_model=self.model,
            endpoint=self.endpoint,
            protocol=self.protocol,
            question=item.question,
            gold_answer=item.gold_answer,
            reasoning_prompt=step1,
            rationale=rationale,
            reasoning_finish_reason="stop",
            answer_prompt=prompts.zs_cot_step2_prompt(step1, rationale),
            answer_text=_answer_text(item.task, answer),
            finish_reason="stop",
            temperature=float(temperature),
            seed=-1,
            prompt_tokens=0,
            completion_tokens=0,
            timestamp=time.time(),
        )

    async def teach(self, item: TeachItem, completion_indices: list[int], temperature: float) -> list[TeacherRecord]:
        try:
            check_supported(item.task)
        except ValueError as e:
            err = TeacherError(str(e))
            err.fatal = True  # every item of the task would fail the same way: stop the run
            raise err from None
        try:
            text, answer = self.solve(item.task, item.sample_index, item.question, item.gold_answer.strip())
        except RationaleError as e:
            raise TeacherError(f"reference teacher: {e}") from None
        return [self.record(item, c, temperature, text, answer) for c in completion_indices]
