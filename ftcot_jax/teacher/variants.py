"""The rationale variants of the reference teacher: the stand-in for an LLM teacher's temperature samples.

At a temperature > 0 completion index k > 0 gets variant k of a rationale: the same correct reasoning in another
style (other wording, another order of the steps, more or less detail), chosen deterministically from
(task, question, k) by `_style`. The first few variants of a question (as many as its task has styles, at least
3) are pairwise different; later ones reuse the styles with other phrasings and may repeat one, as samples can.
One writer per kind of rationale: a solved equation (an `equations.Solution`), each simulated task (called by
teacher/simulators.py with what the simulation read from the question), and a dataset's gold rationale.
"""

from __future__ import annotations

import random
import re

from ftcot_jax.teacher.rationale import fmt


def _style(seed: str, variant: int, styles: int) -> tuple[int, random.Random]:
    """Style (1..styles) and a random source for the phrasing of variant >= 1, both fixed by (seed, variant).
    Variants 1..styles of one seed get all the styles, in an order fixed per seed; later ones cycle."""
    order = list(range(1, styles + 1))
    random.Random(seed).shuffle(order)
    return order[(variant - 1) % styles], random.Random(f"{seed}\x00{variant}")


def _and(items: list[str]) -> str:
    """["a"] -> "a", ["a", "b"] -> "a and b", ["a", "b", "c"] -> "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --- equations ---------------------------------------------------------------------------------


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


def _compute_variant(sol, style: int, rng: random.Random) -> str:
    """A variant of "x = expression": compute it."""
    v, steps, right = fmt(sol.value), sol.steps, sol.shown("right")
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
            return f"The answer is {right}, which is {v}."
        return f"{right} = {v}, because {_and(sol.steps_right_first())}."
    head = rng.choice(["The question asks for", "We want"])
    if len(steps) == 1:
        return f"{head} {right}. That is {steps[0]}. The answer is {v}."
    parts = "; ".join(f"step {i}: {s}" for i, s in enumerate(steps, 1))
    return f"{head} {right}. One operation at a time: {parts}. The answer is {v}."


def _solve_variant(sol, style: int, rng: random.Random) -> str:
    """A variant of solving "expression with x = expression"."""
    left, right, steps, undo = sol.shown("left"), sol.shown("right"), sol.steps, sol.undo
    eq = f"{left} = {right}"
    x = undo[-1]["new"]
    if style == 2:  # terse: one chain of equations
        parts = [f"{right} = {fmt(sol.value)}"] if steps else []
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
        text.append(f"Check: with x = {x}, {left} is {', '.join(sol.check_steps())}, which matches.")
        text.append(f"So the answer is {x}.")
    return " ".join(text)


def equation_variant(sol, variant: int, seed: str) -> str:
    """Variant `variant` >= 1 of the rationale of a solved equation (`equations.Solution`), fixed by `seed`."""
    style, rng = _style(seed, variant, 3)
    if sol.x_alone:
        return _compute_variant(sol, style, rng)
    return _solve_variant(sol, style, rng)


# --- the simulated tasks ---------------------------------------------------------------------------


def coin_flip_variant(question: str, steps: list[tuple[str, str]], flips: int, side: str, variant: int) -> str:
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


def last_letter_variant(question: str, names: list[list[str]], answer: str, variant: int) -> str:
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


def tracking_variant(question, names, holding, swaps, who, choices, variant) -> tuple[str, str]:
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
