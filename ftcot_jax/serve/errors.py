"""The errors `ftcot serve` sends: `APIError` (OpenAI's {"error": {"message", "type", "param", "code"}}), and
the table that turns pydantic's validation errors (and the request validators' own, `fail`) into OpenAI's
messages, codes and statuses.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from ftcot_jax.serve.responses import ErrorDetail, ErrorResponse


class APIError(Exception):
    """An error returned to the client as {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return ErrorResponse(
            error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        ).model_dump()


_EXPECTED = {  # pydantic's type errors -> what the field expects
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "an array",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
}
# error type (pydantic's, or ours raised by the validators below) -> (message, code); {param}, {value} and
# the error's context fill it
_MESSAGES = {
    "missing": ("Missing required parameter: '{param}'.", None),
    "extra_forbidden": ("Unrecognized request argument supplied: {param}", None),
    "invalid_type": ("Invalid type for '{param}': expected {expected}, but got {got}.", None),
    "literal_error": ("Invalid value: {value}. Supported values are: {expected}.", "invalid_value"),
    "too_short": ("Invalid '{param}': empty array. Expected an array with minimum length 1.", "empty_array"),
    "greater_than_equal": ("Invalid '{param}': {value} is less than the minimum of {ge}.", "below_min_value"),
    "greater_than": ("Invalid '{param}': {value} must be greater than {gt}.", "below_min_value"),
    "less_than_equal": ("Invalid '{param}': {value} is greater than the maximum of {le}.", "above_max_value"),
    "less_than": ("Invalid '{param}': {value} must be less than {lt}.", "above_max_value"),
    "above_limit": (
        "Invalid '{param}': {value} is greater than the maximum of {limit} (this server's {setting}).",
        "above_max_value",
    ),
    "unsupported": (
        "'{param}' is not supported by this server (accepted only at its default value; see docs/serve.md).",
        None,
    ),
    "needs_tools": (
        "Invalid '{param}': {value} messages need tool calling, which this server does not implement.",
        None,
    ),
    "token_prompt": ("Invalid '{param}': token-id prompts are not supported by this server; send text.", None),
    "empty_prompts": ("Invalid '{param}': empty array. Expected at least one prompt.", None),
    "empty_prompt": ("Invalid '{param}': empty string. Expected a non-empty prompt.", None),
    "too_many_prompts": (
        "Invalid '{param}': {count} prompts is more than this server's limit of {limit} per request.",
        None,
    ),
    "too_many_stops": ("Invalid '{param}': at most {limit} stop sequences are allowed, got {count}.", None),
    "empty_stop": ("Invalid '{param}': stop sequences must be non-empty strings.", None),
    "too_long": (
        "Invalid '{param}': {count} characters is more than this server's limit of {limit} characters.",
        "string_above_max_length",
    ),
    "stream_only": ("Invalid '{param}': only allowed when 'stream' is true.", None),
    "one_of": ("Give only one of 'max_tokens' and 'max_completion_tokens'.", None),
    "model_not_found": ("The model `{value_raw}` does not exist or you do not have access to it.", "model_not_found"),
}
_STATUS = {"model_not_found": 404}
TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
TYPE_NAMES |= {int: "an integer", float: "a number"}


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else json.dumps(value, default=str)


def _param(loc: tuple, ctx: dict) -> str | None:
    if "param" in ctx:
        return ctx["param"]
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    if "index" in ctx:
        out += f"[{ctx['index']}]"
    return out or None


def _priority(err: dict) -> int:
    """Which of several errors a client hears about: the model's first, then unknown top-level fields, then
    the rest in pydantic's order (a model's fields, then its unknown keys)."""
    loc = err["loc"]
    return 0 if loc[:1] == ("model",) else 1 if err["type"] == "extra_forbidden" and len(loc) == 1 else 2


def api_error(e: ValidationError) -> APIError:
    """The first (see `_priority`) of pydantic's errors as an OpenAI 4xx."""
    err = min(e.errors(include_url=False), key=_priority)
    kind, ctx, value = err["type"], dict(err.get("ctx") or {}), err.get("input")
    param = _param(tuple(err["loc"]), ctx)
    if kind in _EXPECTED:
        kind, ctx["expected"] = ("missing", "") if value is None else ("invalid_type", _EXPECTED[kind])
    if kind not in _MESSAGES:  # a rule without its own message: pydantic's
        return APIError(400, f"Invalid '{param}': {err['msg']}.", param=param)
    template, code = _MESSAGES[kind]
    if code and code.endswith(("min_value", "max_value")):  # integer_ or decimal_, as the field's bound is
        bound = next(ctx[k] for k in ("ge", "gt", "le", "lt", "limit") if k in ctx)
        code = ("integer_" if isinstance(bound, int) else "decimal_") + code
    fill = {k: v for k, v in ctx.items() if k not in ("param", "index")}
    fill |= {"param": param, "value": _show(value), "value_raw": value}
    fill["got"] = TYPE_NAMES.get(type(value), type(value).__name__)
    message = template.format(**fill)
    return APIError(_STATUS.get(kind, 400), message, param=None if kind in _STATUS else param, code=code)


def fail(kind: str, **ctx) -> PydanticCustomError:
    """A validator's error of kind `kind` (a key of `_MESSAGES`); `ctx` fills its message."""
    return PydanticCustomError(kind, kind, ctx)
