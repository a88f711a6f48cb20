"""What the reference teacher's rationale writers share: the error for an item whose data cannot become a
rationale, and how a number is written in one."""

from __future__ import annotations


class RationaleError(ValueError):
    """The data of one item cannot be turned into a rationale that reaches its gold answer."""


def fmt(x: float) -> str:
    """3.0 -> "3", 0.30000000000000004 -> "0.3", 9.43 -> "9.43" (no exponent notation)."""
    if abs(x - round(x)) < 1e-9:
        return str(int(round(x)))
    s = f"{x:.10f}".rstrip("0").rstrip(".")
    return s
