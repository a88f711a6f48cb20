"""The reference teacher's task simulators: a program reads a Coin Flip, Last Letter Concatenation or Tracking
Shuffled Objects question and writes out every step of the simulation (the greedy rationale) with the answer it
reaches; variants (other styles of the same simulation) are phrased by teacher/variants.py.
"""

from __future__ import annotations

import itertools
import re

from ftcot_jax.teacher import variants
from ftcot_jax.teacher.rationale import RationaleError

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
        return variants.coin_flip_variant(question, steps, flips, side, variant), answer
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
        return variants.last_letter_variant(question, names, answer, variant), answer
    # The concatenation is built one letter at a time (a small student copies a growing string more reliably than
    # it joins four letters at once; docs/pipeline.md, "The quickstart, measured").
    text = [
        f'The last letter of "{" ".join(g)}" is "{g[-1][-1]}", so far "{answer[: i + 1]}".' for i, g in enumerate(names)
    ]
    return " ".join(text), answer


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
        return variants.tracking_variant(question, names, dict(holding), swaps, who, choices, variant)
    text = ["At the start: " + ", ".join(f"{n} has {holding[n]}" for n in names) + "."]
    for when, a, b, _ in swaps:
        holding[a], holding[b] = holding[b], holding[a]
        text.append(f"{when}, {a} and {b} swap, so {a} has {holding[a]} and {b} has {holding[b]}.")
    letter = next(letter for letter, c in choices.items() if c == holding[who])
    text.append(f"At the end, {who} has {holding[who]}, which is choice ({letter}).")
    return " ".join(text), letter
