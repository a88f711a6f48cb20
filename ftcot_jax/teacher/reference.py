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
task gets a record. Records carry protocol="reference", teacher_model="reference", zero token counts.

Samples (diverse reasoning): the stand-in for an LLM teacher's temperature samples. At temperature 0 every
completion index of a question gets the same rationale, completion 0's, as greedy decoding would. At a
temperature > 0 completion index k > 0 gets variant k of the rationale: the same correct reasoning in another
style (other wording, another order of the steps, more or less detail), chosen deterministically from
(task, question, k). Completion 0 is the greedy rationale at every temperature. The first few variants of a
question (as many as its task has styles, at least 3) are pairwise different; later ones reuse the styles with
other phrasings and may repeat one, as samples can.
"""

from __future__ import annotations

import ast
import functools
import itertools
import json
import random
import re
from pathlib import Path

from ftcot_jax.tasks import TASK_NAMES, load_task
from ftcot_jax.teacher.backend import TeacherError, TeachItem, zs_cot_record
from ftcot_jax.teacher.cache import TeacherRecord

MODEL = "reference"
# The version of the rationales this program writes: part of the teach stage hash, so a run re-teaches (and drops
# its cached reference answers) when the text changes. 2: last letters built up one letter at a time ("so far").
VERSION = 2
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


def _style(seed: str, variant: int, styles: int) -> tuple[int, random.Random]:
    """Style (1..styles) and a random source for the phrasing of variant >= 1, both fixed by (seed, variant).
    Variants 1..styles of one seed get all the styles, in an order fixed per seed; later ones cycle."""
    order = list(range(1, styles + 1))
    random.Random(seed).shuffle(order)
    return order[(variant - 1) % styles], random.Random(f"{seed}\x00{variant}")


def _and(items: list[str]) -> str:
    """["a"] -> "a", ["a", "b"] -> "a and b", ["a", "b", "c"] -> "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


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


def _evaluate(node: ast.expr, steps: list[str], *, right_first: bool = False, x: float | None = None) -> float:
    """Value of a constant expression; appends one "a op b = c" string per operation (innermost first; with
    `right_first`, a right operand that needs computing is computed before the left one). `x`: the unknown's value,
    for checking a solution."""
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name) and x is not None:
        return x
    if not isinstance(node, ast.BinOp):
        raise RationaleError("the unknown appears where a number is needed")
    if right_first:
        b = _evaluate(node.right, steps, right_first=True, x=x)
        a = _evaluate(node.left, steps, right_first=True, x=x)
    else:
        a, b = _evaluate(node.left, steps, x=x), _evaluate(node.right, steps, x=x)
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


_VERBAL = {
    "+": lambda a, b, c: f"we add {a} and {b} to get {c}",
    "-": lambda a, b, c: f"we subtract {b} from {a} to get {c}",
    "*": lambda a, b, c: f"we multiply {a} by {b} to get {c}",
    "/": lambda a, b, c: f"we divide {a} by {b} to get {c}",
}


def _verbal(step: str) -> str:
    """ "32 + 42 = 74" -> "we add 32 and 42 to get 74"."""
    a, sym, b, _, c = step.split(" ")
    return _VERBAL[sym](a, b, c)


def _undo(left: ast.expr, value: float, equation: str) -> list[dict]:
    """Undoes the outermost operation around x until x stands alone: one dict per operation undone."""
    out = []
    while isinstance(left, ast.BinOp):
        sym = _OPS[type(left.op)][0]
        x_left = _has_x(left.left)
        inner, other = (left.left, left.right) if x_left else (left.right, left.left)
        if _has_x(other):
            raise RationaleError(f"equation {equation!r} has the unknown on both sides of an operation")
        known_steps: list[str] = []
        known = _evaluate(other, known_steps)
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
        out.append(
            {
                "sym": sym,
                "x_left": x_left,
                "inner": _show(inner),  # what is left around x: "x" at the last operation
                "other": _show(other),
                "known": fmt(known),
                "known_steps": known_steps,
                "value": fmt(value),
                "how": how,
                "new": fmt(new),
                "solution": new,  # the value of `inner`, unrounded
            }
        )
        left, value = inner, new
    return out


def _undo_verbal(u: dict) -> str:
    """One undone operation in words: "Subtracting 22 from both sides gives x = 55 - 22 = 33."."""
    k, result = u["known"], f"{u['inner']} = {u['how']} = {u['new']}"
    if u["sym"] == "-" and not u["x_left"]:
        return f"Since {k} minus {u['inner']} is {u['value']}, {result}."
    if u["sym"] == "/" and not u["x_left"]:
        return f"Since {k} divided by {u['inner']} is {u['value']}, {result}."
    verb = {"+": f"Subtracting {k} from", "-": f"Adding {k} to", "*": "Dividing", "/": "Multiplying"}[u["sym"]]
    by = {"*": f" by {k}", "/": f" by {k}"}.get(u["sym"], "")
    return f"{verb} both sides{by} gives {result}."


def _compute_variant(right: ast.expr, value: float, steps: list[str], style: int, rng: random.Random) -> str:
    """A variant of "x = expression": compute it."""
    v = fmt(value)
    if not steps:
        return [
            f"No arithmetic is needed: the number asked for, {v}, is given in the question.",
            f"The question gives the number directly: {v}.",
            f"There is nothing to compute; the answer is {v}.",
        ][style - 1]
    if style == 1:  # in words
        first = rng.choice(["First", "To start", "We begin:"])
        said = [_verbal(s) for s in steps]
        text = f"{first} {said[0]}." if first.endswith(":") else f"{first}, {said[0]}."
        text += "".join(f" {rng.choice(['Then', 'Next', 'After that'])} {s}." for s in said[1:])
        return text + f" So the answer is {v}."
    if style == 2:  # the whole expression first, then why, in another order where the expression allows it
        if len(steps) == 1:
            return f"The answer is {_show(right)}, which is {v}."
        other: list[str] = []
        _evaluate(right, other, right_first=True)
        return f"{_show(right)} = {v}, because {_and(other)}."
    head = rng.choice(["The question asks for", "We want"])
    if len(steps) == 1:
        return f"{head} {_show(right)}. That is {steps[0]}. The answer is {v}."
    parts = "; ".join(f"step {i}: {s}" for i, s in enumerate(steps, 1))
    return f"{head} {_show(right)}. One operation at a time: {parts}. The answer is {v}."


def _solve_variant(
    left: ast.expr, right: ast.expr, value: float, steps: list[str], undo: list[dict], style: int, rng
) -> str:
    """A variant of solving "expression with x = expression"."""
    eq = f"{_show(left)} = {_show(right)}"
    x = undo[-1]["new"]
    if style == 2:  # terse: one chain of equations
        parts = [f"{_show(right)} = {fmt(value)}"] if steps else []
        for u in undo:
            if u["known_steps"]:
                parts.append(f"{u['other']} = {u['known']}")
            parts.append(f"{u['inner']} = {u['how']} = {u['new']}")
        return f"From {eq}: " + ", so ".join(parts) + "."
    text = [rng.choice(["Call the unknown number x.", "Let the unknown be x."]) + f" The question gives {eq}."]
    if steps:
        text.append(f"The right side is {', '.join(steps)}.")
    for u in undo:
        if u["known_steps"]:
            text.append(f"Here {u['other']} is {', '.join(u['known_steps'])}.")
        text.append(_undo_verbal(u))
    if style == 3:  # put the solution back in
        check: list[str] = []
        _evaluate(left, check, x=undo[-1]["solution"])
        text.append(f"Check: with x = {x}, {_show(left)} is {', '.join(check)}, which matches.")
        text.append(f"So the answer is {x}.")
    return " ".join(text)


def equation_rationale(equation: str, variant: int = 0, seed: str = "") -> tuple[str, float]:
    """(rationale, value of the unknown) for one linear equation in x, or a bare expression (SVAMP). Variant 0
    is the greedy rationale; variant k > 0 the same solution in style k (see the module doc), fixed by seed."""
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
    value = _evaluate(right, steps)
    style, rng = _style(seed or equation, variant, 3) if variant else (0, None)
    if isinstance(left, ast.Name):  # x = expression: compute it
        if style:
            return _compute_variant(right, value, steps, style, rng), value
        if not steps:
            return f"The answer is the given number {fmt(value)}.", value
        if len(steps) == 1:
            return f"We need to compute {steps[0]}.", value
        return f"We need to compute {_show(right)}. {_join_steps(steps)}", value
    undo = _undo(left, value, equation)
    solution = undo[-1]["solution"]
    if style:
        return _solve_variant(left, right, value, steps, undo, style, rng), solution
    text = [f"Let x be the number we are looking for. The question says that {_show(left)} = {_show(right)}."]
    if steps:
        text.append(f"First we compute {_show(right)}: {', '.join(steps)}.")
    for u in undo:
        if u["known_steps"]:
            text.append(f"We compute {u['other']}: {', '.join(u['known_steps'])}.")
        text.append(f"So {u['inner']} = {u['how']} = {u['new']}.")
    return " ".join(text), solution


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


# --- the synthetic tasks ----------------------------------------------------------------------

_COIN_STEP = re.compile(r"(?:^|\.\s)([^.?]+?) (flips|does not flip) the coin(?=\.)")


def coin_flip_rationale(question: str, variant: int = 0) -> tuple[str, str]:
    if not question.startswith("A coin is heads up."):
        raise RationaleError("coin_flip question does not start with 'A coin is heads up.'")
    steps = _COIN_STEP.findall(question)
    if not steps:
        raise RationaleError("coin_flip question names no flips")
    flips = sum(v == "flips" for _, v in steps)
    heads = flips % 2 == 0
    side = "heads" if heads else "tails"
    answer = "yes" if heads else "no"
    if variant:
        return _coin_variant(question, steps, flips, side, variant), answer
    state = True
    text = ["The coin starts heads up."]
    for name, verb in steps:
        if verb == "flips":
            state = not state
            text.append(f"{name} flips the coin, so it is now {'heads' if state else 'tails'} up.")
        else:
            text.append(f"{name} does not flip the coin, so it stays {'heads' if state else 'tails'} up.")
    text.append(f"The coin was flipped {flips} time{'s' if flips != 1 else ''}, so it ends {side} up.")
    return " ".join(text), answer


def _coin_variant(question: str, steps: list[tuple[str, str]], flips: int, side: str, variant: int) -> str:
    style, rng = _style(f"coin_flip\x00{question}", variant, 3)
    flippers = [n for n, v in steps if v == "flips"]
    others = [n for n, v in steps if v != "flips"]
    times = f"{flips} time{'s' if flips != 1 else ''}"
    if style == 1:  # the state after every person, tersely
        text, heads = [rng.choice(["Start: heads up.", "At first the coin is heads up."])], True
        for name, verb in steps:
            if verb == "flips":
                heads = not heads
                text.append(f"{name} flips it: {'heads' if heads else 'tails'} up.")
            else:
                text.append(f"{name} does not flip it: still {'heads' if heads else 'tails'} up.")
        text.append(rng.choice([f"So the coin ends {side} up.", f"At the end the coin is {side} up."]))
        return " ".join(text)
    if style == 2:  # count first, then parity
        who = [f"{_and(flippers)} {'flips' if len(flippers) == 1 else 'flip'} the coin"] if flippers else []
        if others:
            who.append(f"{_and(others)} {'does' if len(others) == 1 else 'do'} not")
        if not flippers:
            who[0] = f"Nobody flips the coin: {who[0]}"
        parity = "even" if flips % 2 == 0 else "odd"
        return (
            f"{'; '.join(who)}. So the coin is flipped {times}. Each flip reverses it, so after an {parity} "
            f"number of flips a coin that started heads up is {side} up."
        )
    # style 3: the sides the coin shows, flip by flip
    seq, heads = ["heads"], True
    for _ in flippers:
        heads = not heads
        seq.append("heads" if heads else "tails")
    if not flippers:
        return f"Nobody flips the coin ({_and(others)} do not), so it stays as it started: {side} up."
    skip = f" ({_and(others)} {'does' if len(others) == 1 else 'do'} not flip it)" if others else ""
    return (
        f"Only the flips matter{skip}. The coin is flipped {times}, by {_and(flippers)}. "
        f"Starting from heads, it goes {' -> '.join(seq)}. It ends {side} up."
    )


def _last_letter_groups(question: str, gold: str | None) -> list[list[str]]:
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
    return names


def last_letter_rationale(question: str, gold: str | None = None, variant: int = 0) -> tuple[str, str]:
    """Some names in the data have two words ("Jose Antonio"), which the question cannot show: when
    `gold` is given, the words are grouped into len(gold) consecutive names whose last letters give it
    (first such grouping); otherwise, or when no grouping fits, every word is a name."""
    names = _last_letter_groups(question, gold)
    answer = "".join(g[-1][-1] for g in names)
    if variant:
        return _last_letter_variant(question, names, answer, variant), answer
    # The concatenation is built one letter at a time (a small student copies a growing string more reliably than
    # it joins four letters at once; docs/pipeline.md, "The quickstart, measured").
    text = [
        f'The last letter of "{" ".join(g)}" is "{g[-1][-1]}", so far "{answer[: i + 1]}".' for i, g in enumerate(names)
    ]
    return " ".join(text), answer


def _last_letter_variant(question: str, names: list[list[str]], answer: str, variant: int) -> str:
    style, rng = _style(f"last_letter_concatenation\x00{question}", variant, 5)
    words = [" ".join(g) for g in names]
    letters = [g[-1][-1] for g in names]
    quoted = [f'"{x}"' for x in letters]
    if style == 1:  # every letter first, then all of them joined at once
        text = [f'The last letter of "{w}" is "{x}".' for w, x in zip(words, letters, strict=True)]
        text.append(rng.choice([f'Concatenating them gives "{answer}".', f'Together they give "{answer}".']))
        return " ".join(text)
    if style == 2:  # compact
        ends = _and([f'"{w}" ends with "{x}"' for w, x in zip(words, letters, strict=True)])
        join = rng.choice(["Putting", "Joining"])
        return f'{ends}. {join} {_and(quoted)} together gives "{answer}".'
    if style == 3:  # the words first, then their letters
        listed = _and([f'"{w}"' for w in words])
        return f'The words are {listed}. Their last letters are {_and(quoted)}. Together they make "{answer}".'
    if style == 4:  # from the last word back to the first
        back = ", ".join(f'"{w}" ends in "{x}"' for w, x in zip(words[::-1], letters[::-1], strict=True))
        return f'Going from the last word to the first: {back}. In the original order the letters give "{answer}".'
    # style 5: spelled out
    text = []
    for g in names:
        head = f'"{" ".join(g)}" ends with the word "{g[-1]}", spelled' if len(g) > 1 else f'"{g[0]}" is spelled'
        text.append(f'{head} {"-".join(g[-1])}, so its last letter is "{g[-1][-1]}".')
    text.append(rng.choice([f'Concatenating {", ".join(quoted)} gives "{answer}".', f'Together: "{answer}".']))
    return " ".join(text)


_CHOICES = re.compile(r"\(([A-Z])\) (.*?)(?=, \([A-Z]\) |\.$)")
_PEOPLE = re.compile(r"^(.+?), (.+?), and (.+?) are ")
_SWAP = re.compile(r"(First|Then|Finally), (\w+) and (\w+) (swap|switch|trade)")


def tracking_rationale(question: str, variant: int = 0) -> tuple[str, str]:
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
    for _, a, b, _ in swaps:
        if a not in holding or b not in holding:
            raise RationaleError(f"swap names an unknown person ({a}, {b})")
    asked = re.search(r"At the end of the [a-z]+, (\w+) ", body)
    if not asked or asked.group(1) not in holding:
        raise RationaleError("tracking question does not ask about one of the people")
    who = asked.group(1)
    if variant:
        return _tracking_variant(question, names, dict(holding), swaps, who, choices, variant)
    text = ["At the start: " + ", ".join(f"{n} has {holding[n]}" for n in names) + "."]
    for when, a, b, _ in swaps:
        holding[a], holding[b] = holding[b], holding[a]
        text.append(f"{when}, {a} and {b} swap, so {a} has {holding[a]} and {b} has {holding[b]}.")
    letter = next(letter for letter, c in choices.items() if c == holding[who])
    text.append(f"At the end, {who} has {holding[who]}, which is choice ({letter}).")
    return " ".join(text), letter


def _tracking_variant(question, names, holding, swaps, who, choices, variant) -> tuple[str, str]:
    style, rng = _style(f"tracking_shuffled_objects\x00{question}", variant, 3)
    verb = rng.choice(["swap", "trade", "exchange"])
    if style == 1:  # everyone's object after every swap
        text = ["Start: " + ", ".join(f"{n} has {holding[n]}" for n in names) + "."]
        for _, a, b, _ in swaps:
            holding[a], holding[b] = holding[b], holding[a]
            text.append(f"After {a} and {b} {verb}: " + ", ".join(f"{n} has {holding[n]}" for n in names) + ".")
    elif style == 2:  # only the person asked about
        text = [f"Only {who}'s object matters. {who} starts with {holding[who]}."]
        for when, a, b, _ in swaps:
            holding[a], holding[b] = holding[b], holding[a]
            if who in (a, b):
                text.append(f"{when}, {a} and {b} {verb}, so {who} now has {holding[who]}.")
            else:
                text.append(f"{when}, {a} and {b} {verb}; {who} is not part of it and keeps {holding[who]}.")
    else:  # the choices first, then the swaps in one sentence
        listed = _and([f"({k}) {v}" for k, v in choices.items()])
        moves = []
        for _, a, b, _ in swaps:
            holding[a], holding[b] = holding[b], holding[a]
            moves.append(f"{a} and {b} {verb} ({a} gets {holding[a]}, {b} gets {holding[b]})")
        text = [f"The choices are {listed}. " + ", then ".join(moves) + "."]
    letter = next(letter for letter, c in choices.items() if c == holding[who])
    text.append(
        rng.choice(
            [
                f"So {who} ends with {holding[who]}: choice ({letter}).",
                f"{who} ends up with {holding[who]}, choice ({letter}).",
            ]
        )
    )
    return " ".join(text), letter


# --- gold rationales ---------------------------------------------------------------------------


def _sentence(s: str) -> str:
    return s if s.endswith((".", "!", "?", ":")) else s + "."


def gold_rationale_variant(task: str, text: str, gold: str, variant: int, seed: str) -> str:
    """Variant > 0 of a gold rationale (GSM8K, AQuA: its lines; StrategyQA: its facts, in another order in style
    1): joined as one paragraph, numbered, or with an opening and a closing sentence that states the answer.
    Every line (fact) of the gold rationale is kept."""
    style, rng = _style(f"{task}\x00{seed}", variant, 3)
    if task == "strategy_qa":
        units = [u for u in re.split(r"(?<=[.!?])\s+", text.strip()) if u]
    else:
        units = [u.strip() for u in text.split("\n") if u.strip()]
    answer = {"aqua": f"({gold})", "strategy_qa": gold.lower()}.get(task, gold)
    closing = rng.choice([f"So the answer is {answer}.", f"The answer is {answer}.", f"That gives {answer}."])
    if style == 1:
        if task == "strategy_qa" and len(set(units)) > 1:  # the facts in another order
            order = units[:]
            while order == units:
                rng.shuffle(order)
            units = order
        return " ".join(_sentence(u) for u in units) + " " + closing
    if style == 2:
        label = rng.choice(["Fact {}: " if task == "strategy_qa" else "Step {}: ", "{}. "])
        return "\n".join(label.format(i) + u for i, u in enumerate(units, 1))
    opener = rng.choice(["Let's work it out.", "Here is the reasoning.", "We reason as follows."])
    return opener + "\n" + "\n".join(units) + "\n" + closing


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
                text = gold_rationale_variant(task, text, gold, variant, question)
            return text, gold
        if task in EQUATION:
            rows = _equations(task, str(self._task(task).data_dir))
            if not 0 <= sample_index < len(rows) or rows[sample_index][0] != question:
                raise RationaleError(f"{task}#{sample_index}: question differs from the raw file's")
            equation = rows[sample_index][1]
            try:
                text, value = equation_rationale(equation, variant, f"{task}\x00{question}")
            except RationaleError as e:
                return f"The annotated equation {equation.strip()!r} cannot be used ({e}).", "unknown"
            return text, gold if _close(value, float(gold.replace(",", ""))) else fmt(value)
        if task == "last_letter_concatenation":
            return last_letter_rationale(question, gold, variant)
        fn = {"coin_flip": coin_flip_rationale, "tracking_shuffled_objects": tracking_rationale}[task]
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
