"""The reference teacher's equation solver: solves one annotated linear equation in x (SingleEq, AddSub,
MultiArith) or evaluates a bare expression (SVAMP), keeping every arithmetic step, and writes the greedy
rationale from those steps, one operation per sentence. Equations with the unknown inside are solved by undoing
one operation at a time. Variants of the rationale (other styles of the same solution) are phrased by
teacher/variants.py from the `Solution` this module computes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from ftcot_jax.teacher import variants
from ftcot_jax.teacher.rationale import RationaleError, fmt

_OPS = {
    ast.Add: ("+", lambda a, b: a + b),
    ast.Sub: ("-", lambda a, b: a - b),
    ast.Mult: ("*", lambda a, b: a * b),
    ast.Div: ("/", lambda a, b: a / b),
}


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


@dataclass(frozen=True)
class Solution:
    """One equation solved: `left` holds the unknown, `right` is a constant expression worth `value`."""

    left: ast.expr
    right: ast.expr
    value: float
    steps: list[str]  # computing `right`, innermost operation first: "a op b = c"
    undo: list[dict]  # one per operation undone around x, outermost first; empty when x stands alone

    @property
    def x_alone(self) -> bool:
        return isinstance(self.left, ast.Name)

    @property
    def solution(self) -> float:
        """The value of x, unrounded."""
        return self.undo[-1]["solution"] if self.undo else self.value

    def shown(self, side: str) -> str:
        """The side ("left" | "right") as the rationale writes it: "(x / 4) + 2"."""
        return _show(self.left if side == "left" else self.right)

    def steps_right_first(self) -> list[str]:
        """The steps of `right` with a right operand that needs computing computed before the left one."""
        steps: list[str] = []
        _evaluate(self.right, steps, right_first=True)
        return steps

    def check_steps(self) -> list[str]:
        """The steps of `left` with the solution put in for x."""
        steps: list[str] = []
        _evaluate(self.left, steps, x=self.solution)
        return steps


def solve(equation: str) -> Solution:
    """Parses and solves one linear equation in x, or a bare expression (SVAMP); RationaleError when it is not
    one unknown on one side of a single '='."""
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
    return Solution(left, right, value, steps, _undo(left, value, equation))


def _greedy(sol: Solution) -> str:
    steps = sol.steps
    if sol.x_alone:  # x = expression: compute it
        if not steps:
            return f"The answer is the given number {fmt(sol.value)}."
        if len(steps) == 1:
            return f"We need to compute {steps[0]}."
        return f"We need to compute {sol.shown('right')}. {_join_steps(steps)}"
    text = [
        f"Let x be the number we are looking for. The question says that {sol.shown('left')} = {sol.shown('right')}."
    ]
    if steps:
        text.append(f"First we compute {sol.shown('right')}: {', '.join(steps)}.")
    for u in sol.undo:
        if u["known_steps"]:
            text.append(f"We compute {u['other']}: {', '.join(u['known_steps'])}.")
        text.append(f"So {u['inner']} = {u['how']} = {u['new']}.")
    return " ".join(text)


def equation_rationale(equation: str, variant: int = 0, seed: str = "") -> tuple[str, float]:
    """(rationale, value of the unknown) for one equation. Variant 0 is the greedy rationale; variant k > 0 the
    same solution in another style (teacher/variants.py), fixed by `seed` (default: the equation)."""
    sol = solve(equation)
    if variant:
        return variants.equation_variant(sol, variant, seed or equation), sol.solution
    return _greedy(sol), sol.solution


def close(a: float, b: float) -> bool:
    """Whether a solution and a gold number agree (relative tolerance 1e-6)."""
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))
