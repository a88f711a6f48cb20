"""Request validation for `ftcot serve`: OpenAI request bodies as pydantic models -> one normalized `Request`;
`APIError`, the error a client gets back, and the table that turns pydantic's errors into OpenAI's messages.

Each OpenAI field falls in exactly one class (docs/serve.md lists them):
  implemented   -- validated and honoured;
  ignored       -- accepted with any value, has no effect (metadata about the caller);
  default-only  -- accepted only at its "off" value (null / false / 0 / {} ...); anything else is a 400
                   naming the field, because silently ignoring e.g. `logprobs` or `tools` would return a
                   wrong answer to a client that relies on it;
and any other field is unknown: 400 "Unrecognized request argument supplied: <field>" like OpenAI.
Limits that depend on the server (max_tokens, n, prompt sizes, the model id) come in the validation context.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
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


@dataclass(frozen=True)
class Limits:
    max_new_tokens: int  # largest max_tokens a request may ask for
    max_prompt_tokens: int  # per prompt, after the chat template
    max_prompt_chars: int  # checked before tokenizing: a 200k-character prompt never reaches the tokenizer
    max_n: int
    context_length: int  # prompt tokens + max_tokens must fit
    max_prompts: int = 64  # list-of-prompts length on /v1/completions


@dataclass(frozen=True)
class Request:
    kind: str  # "completion" | "chat"
    prompts: tuple[str, ...]  # rendered text fed to the decoder (chat: after the template)
    max_tokens: int | None  # None: chat default, resolved against the context by the server
    n: int
    temperature: float | None  # None: not given; the server chooses (App.submit: 1.0, or 0 for a trained student)
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    messages: tuple[dict, ...] = field(default=())  # chat only, normalized {"role", "content"[, "name"]}


MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_BODY_BYTES = 8 * 1024 * 1024  # above this: 413 without reading the body

# ------------------------------------------------------------------------------------------------ errors

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
_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
_TYPE_NAMES |= {int: "an integer", float: "a number"}


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
    fill["got"] = _TYPE_NAMES.get(type(value), type(value).__name__)
    message = template.format(**fill)
    return APIError(_STATUS.get(kind, 400), message, param=None if kind in _STATUS else param, code=code)


def _fail(kind: str, **ctx) -> PydanticCustomError:
    return PydanticCustomError(kind, kind, ctx)


def parse_json(raw: bytes, content_type: str) -> dict:
    """A request body -> its JSON object; 400 for another content type, an empty body, non-JSON (NaN and
    Infinity included) or JSON that is not an object."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise APIError(
            400,
            f"Invalid Content-Type header ({content_type or 'none'}); expected application/json. "
            "Send the request body as JSON.",
        )
    if not raw.strip():
        raise APIError(
            400, "We could not parse the JSON body of your request: the body is empty. Expected a JSON object."
        )
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise APIError(
            400, f"We could not parse the JSON body of your request ({e}). Expected a JSON object."
        ) from None
    if not isinstance(body, dict):
        raise APIError(400, f"The JSON body must be an object, got {_TYPE_NAMES.get(type(body), 'a value')}.")
    return body


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


# ------------------------------------------------------------------------------------------------ bodies


def _off(value: Any, *offs: Any) -> bool:
    return value is None or any(value == o and type(value) is type(o) for o in offs)


def _stop_list(v: Any) -> Any:
    items = [v] if isinstance(v, str) else v
    if v is not None and (not isinstance(items, list) or not all(isinstance(s, str) for s in items)):
        raise _fail("invalid_type", expected="a string or an array of strings")
    if items is not None and len(items) > MAX_STOP:
        raise _fail("too_many_stops", limit=MAX_STOP, count=len(items))
    if items is not None and any(s == "" for s in items):
        raise _fail("empty_stop")
    return items


def _content_parts(v: Any) -> Any:
    if v is None:
        raise _fail("missing")
    if isinstance(v, str):
        return [{"type": "text", "text": v}]
    if not isinstance(v, list):
        raise _fail("invalid_type", expected="a string or an array of content parts")
    return v


def _role(v: Any) -> Any:
    if v in ("tool", "function"):  # OpenAI roles that only make sense with tool calling
        raise _fail("needs_tools")
    return v


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Annotated[Literal["system", "developer", "user", "assistant"], BeforeValidator(_role)]
    content: Annotated[list[TextPart], BeforeValidator(_content_parts)]  # a string is one text part
    name: str | None = None
    tool_calls: Any = None  # these four: accepted only empty
    function_call: Any = None
    audio: Any = None
    refusal: Any = None

    @field_validator("tool_calls", "function_call", "audio", "refusal")
    @classmethod
    def _empty(cls, v):
        if v not in (None, [], ""):
            raise _fail("unsupported")
        return v

    def normalized(self) -> dict:
        msg = {"role": self.role, "content": "".join(p.text for p in self.content)}
        return {**msg, "name": self.name} if self.name else msg


class _Sampling(_Body):
    """The fields both endpoints share. `DEFAULT_ONLY`: field -> "this value is off"."""

    DEFAULT_ONLY: ClassVar[dict[str, Callable[[Any], bool]]] = {
        "frequency_penalty": lambda v: _off(v, 0, 0.0),
        "presence_penalty": lambda v: _off(v, 0, 0.0),
        "logit_bias": lambda v: v is None or v == {},
    }

    model: str
    n: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Annotated[list[str] | None, BeforeValidator(_stop_list)] = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: Any = None  # ignored
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logit_bias: Any = None

    @field_validator("model")
    @classmethod
    def _served_model(cls, v, info):
        if v != info.context["model_id"]:
            raise _fail("model_not_found")
        return v

    @field_validator("n")
    @classmethod
    def _n_limit(cls, v, info):
        limit = info.context["limits"].max_n
        if v is not None and v > limit:
            raise _fail("above_limit", limit=limit, setting="max_n")
        return v

    @model_validator(mode="after")
    def _checks(self):
        for name, is_off in self.DEFAULT_ONLY.items():
            if not is_off(getattr(self, name)):
                raise _fail("unsupported", param=name)
        if self.stream_options is not None and not self.stream:
            raise _fail("stream_only", param="stream_options")
        return self

    def common(self) -> dict:
        return dict(
            n=self.n or 1,
            temperature=self.temperature,  # None: the server's default (App.submit)
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=tuple(dict.fromkeys(self.stop or ())),
            stream=bool(self.stream),
            include_usage=self.stream_options is not None and self.stream_options.include_usage,
        )


def _token_limit(cls, v, info):
    limit = info.context["limits"].max_new_tokens
    if v is not None and v > limit:
        raise _fail("above_limit", limit=limit, setting="max_new_tokens_limit")
    return v


def _prompt_shape(v: Any) -> Any:
    if v is None:
        raise _fail("missing")
    if isinstance(v, list) and not v:
        raise _fail("empty_prompts")
    if isinstance(v, list) and all(isinstance(t, (int, list)) and not isinstance(t, bool) for t in v):
        raise _fail("token_prompt")
    if not isinstance(v, str) and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
        raise _fail("invalid_type", expected="a string or an array of strings")
    return v


class CompletionRequest(_Sampling):
    DEFAULT_ONLY: ClassVar[dict[str, Callable[[Any], bool]]] = {
        **_Sampling.DEFAULT_ONLY,
        "logprobs": lambda v: v is None,  # 0 is not "off": legacy logprobs=0 returns the sampled tokens' logprobs
        "echo": lambda v: _off(v, False),
        "suffix": lambda v: v is None or v == "",
    }

    prompt: Annotated[str | list[str], BeforeValidator(_prompt_shape)]
    max_tokens: int | None = Field(None, ge=1)
    logprobs: Any = None
    echo: Any = None
    suffix: Any = None
    best_of: Any = None  # null or equal to n

    _max_tokens_limit = field_validator("max_tokens")(_token_limit)

    @field_validator("prompt")
    @classmethod
    def _prompt_sizes(cls, v, info):
        limits: Limits = info.context["limits"]
        items = [v] if isinstance(v, str) else v
        if len(items) > limits.max_prompts:
            raise _fail("too_many_prompts", count=len(items), limit=limits.max_prompts)
        for i, s in enumerate(items):
            where = {} if isinstance(v, str) else {"index": i}
            if not s:
                raise _fail("empty_prompt", **where)
            if len(s) > limits.max_prompt_chars:
                raise _fail("too_long", count=len(s), limit=limits.max_prompt_chars, **where)
        return v

    @model_validator(mode="after")
    def _best_of(self):
        if self.best_of is not None and not (type(self.best_of) is int and self.best_of == (self.n or 1)):
            raise _fail("unsupported", param="best_of")
        return self


class ChatRequest(_Sampling):
    DEFAULT_ONLY: ClassVar[dict[str, Callable[[Any], bool]]] = {
        **_Sampling.DEFAULT_ONLY,
        "logprobs": lambda v: _off(v, False),
        "top_logprobs": lambda v: _off(v, 0),
        "tools": lambda v: v is None or v == [],
        "tool_choice": lambda v: v is None or v == "none",
        "functions": lambda v: v is None or v == [],
        "function_call": lambda v: v is None or v == "none",
        "response_format": lambda v: v is None or v == {"type": "text"},
        "modalities": lambda v: v is None or v == ["text"],
        "audio": lambda v: v is None,
        "prediction": lambda v: v is None,
        "reasoning_effort": lambda v: v is None,
        "web_search_options": lambda v: v is None,
        "verbosity": lambda v: v is None,
        "moderation": lambda v: v is None,
    }

    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # ignored: caller / platform metadata
    metadata: Any = None
    store: Any = None
    service_tier: Any = None
    parallel_tool_calls: Any = None
    prompt_cache_key: Any = None
    prompt_cache_options: Any = None
    prompt_cache_retention: Any = None
    safety_identifier: Any = None
    # default-only
    logprobs: Any = None
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    verbosity: Any = None
    moderation: Any = None

    _max_tokens_limit = field_validator("max_tokens", "max_completion_tokens")(_token_limit)

    @field_validator("messages")
    @classmethod
    def _total_chars(cls, v, info):
        limit = info.context["limits"].max_prompt_chars
        total = sum(len(p.text) for m in v for p in m.content)
        if total > limit:
            raise _fail("too_long", count=total, limit=limit)
        return v

    @model_validator(mode="after")
    def _one_max_tokens(self):
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise _fail("one_of", param="max_completion_tokens")
        return self


def _validate(cls: type[_Body], body: dict, limits: Limits, model_id: str):
    try:
        return cls.model_validate(body, context={"limits": limits, "model_id": model_id})
    except ValidationError as e:
        raise api_error(e) from None


def parse_completion(body: dict, limits: Limits, model_id: str) -> Request:
    r = _validate(CompletionRequest, body, limits, model_id)
    max_tokens = min(16, limits.max_new_tokens) if r.max_tokens is None else r.max_tokens  # OpenAI's default
    prompts = (r.prompt,) if isinstance(r.prompt, str) else tuple(r.prompt)
    return Request(kind="completion", prompts=prompts, max_tokens=max_tokens, **r.common())


def parse_chat(body: dict, limits: Limits, model_id: str, render: Callable[[list[dict]], str]) -> Request:
    """`render(messages) -> str` makes the decoder's prompt (the chat template, or a trained student's)."""
    r = _validate(ChatRequest, body, limits, model_id)
    messages = tuple(m.normalized() for m in r.messages)
    prompt = render(list(messages))
    if len(prompt) > limits.max_prompt_chars:
        raise APIError(
            400,
            f"Invalid 'messages': the prompt has {len(prompt)} characters, more than this server's limit of "
            f"{limits.max_prompt_chars}.",
            param="messages",
            code="string_above_max_length",
        )
    max_tokens = r.max_completion_tokens if r.max_completion_tokens is not None else r.max_tokens
    return Request(kind="chat", prompts=(prompt,), max_tokens=max_tokens, messages=messages, **r.common())
