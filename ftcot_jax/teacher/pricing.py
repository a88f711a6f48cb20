"""Teacher price table and cost estimate.

Prices are USD per 1M tokens (input, output) at the providers' public list prices
when this table was written; check your provider and override with a JSON file
(`ftcot teach --prices FILE`, {"model": {"input": 0.15, "output": 0.6}}).
A model not in the table has an UNKNOWN cost (None), never 0: local servers and
unlisted models must not look free in a report. The Batch API bills half.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class Price:
    input_per_m: float  # USD per 1M prompt tokens
    output_per_m: float  # USD per 1M completion tokens


PRICES: dict[str, Price] = {
    # Text-completions models (the protocol of the paper's text-davinci-002 teacher).
    "gpt-3.5-turbo-instruct": Price(1.50, 2.00),
    "davinci-002": Price(2.00, 2.00),
    "babbage-002": Price(0.40, 0.40),
    # Chat models.
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-5": Price(1.25, 10.00),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
}

# Dated snapshots ("gpt-4o-mini-2024-07-18") bill like their base model.
_SNAPSHOT = re.compile(r"^(?P<base>.+?)-(\d{4}-\d{2}-\d{2}|\d{4})$")


def load_prices(path: str | Path) -> dict[str, Price]:
    """The built-in table updated with a JSON file {"model": {"input": x, "output": y}}."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"price file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"price file {path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"price file {path}: expected an object {{model: {{input, output}}}}")
    table = dict(PRICES)
    for model, p in raw.items():
        if not (isinstance(p, dict) and {"input", "output"} <= p.keys()):
            raise ValueError(f"price file {path}: entry {model!r} needs 'input' and 'output' (USD per 1M tokens)")
        try:
            table[model] = Price(float(p["input"]), float(p["output"]))
        except (TypeError, ValueError):
            raise ValueError(f"price file {path}: entry {model!r} has non-numeric prices") from None
    return table


def price_for(model: str, table: dict[str, Price] | None = None) -> Price | None:
    table = PRICES if table is None else table
    if model in table:
        return table[model]
    m = _SNAPSHOT.match(model)
    if m and m.group("base") in table:
        return table[m.group("base")]
    return None


def estimate_cost(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    *,
    batch: bool = False,
    table: dict[str, Price] | None = None,
) -> float | None:
    """USD for the given usage, or None when the model's price is unknown."""
    p = price_for(model, table)
    if p is None:
        return None
    usd = (prompt_tokens * p.input_per_m + completion_tokens * p.output_per_m) / 1e6
    return usd * BATCH_DISCOUNT if batch else usd


def format_cost(usd: float | None) -> str:
    return "unknown" if usd is None else f"${usd:.4f}"
