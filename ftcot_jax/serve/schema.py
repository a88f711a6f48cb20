"""Request validation for `ftcot serve`: OpenAI request bodies as pydantic models -> one normalized `Request`.

Each OpenAI field falls in exactly one class (docs/serve.md lists them):
  implemented   -- validated and honoured;
  ignored       -- accepted with any value, has no effect (metadata about the caller);
  default-only  -- accepted only at its "off" value (null / false / 0 / {} ...); anything else is a 400
                   naming the field, because silently ignoring e.g. `logprobs` or `tools` would return a
                   wrong answer to a client that relies on it;
and any other field is unknown: 400 "Unrecognized request argument supplied: <field>" like OpenAI.
Limits that depend on the server (max_tokens, n, prompt sizes, the model id) come in the validation context.

The models' JSON schemas say what the validators enforce (an empty prompt, a default-only field's off
values, ...); `serve.openapi` adds the server's limits and publishes them. Errors: `serve.errors`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from ftcot_jax.serve.errors import TYPE_NAMES, APIError, api_error, fail


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
        json.dumps(body, ensure_ascii=False).encode("utf-8")  # a lone surrogate ("\ud800") is not text
    except (UnicodeError, ValueError, RecursionError) as e:
        raise APIError(
            400, f"We could not parse the JSON body of your request ({e}). Expected a JSON object."
        ) from None
    if not isinstance(body, dict):
        raise APIError(400, f"The JSON body must be an object, got {TYPE_NAMES.get(type(body), 'a value')}.")
    return body


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


# ------------------------------------------------------------------------------------------------ bodies


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: 0 and 0.0 are one number; false is not 0."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b
    return type(a) is type(b) and a == b


def _off(value: Any, *offs: Any) -> bool:
    return value is None or any(_same_json(value, o) for o in offs)


def _integral(v: Any) -> Any:
    """JSON has one number type: 2.0 is the integer 2 (as JSON Schema reads it); 2.5 stays a type error."""
    return int(v) if type(v) is float and v.is_integer() else v


OptionalInt = Annotated[int | None, BeforeValidator(_integral)]


def _off_schema(offs: tuple) -> dict:
    values: list = [None]
    for o in offs:
        if o not in values:  # 0 and 0.0 are one JSON value
            values.append(o)
    return {"enum": values, "description": "Accepted only at its default (off) value: not supported by this server."}


def _refine_schema(schema: dict, cls) -> None:
    """pydantic's schema of a body, made as strict as its validators: default-only fields list their off values,
    and `SCHEMA` (the class's cross-field rules) is merged in."""
    for name, offs in getattr(cls, "DEFAULT_ONLY", {}).items():
        schema["properties"][name] = _off_schema(offs)
    schema.update(getattr(cls, "SCHEMA", {}))


NON_EMPTY_STRING = {"type": "string", "minLength": 1}


def _stop_list(v: Any) -> Any:
    items = [v] if isinstance(v, str) else v
    if v is not None and (not isinstance(items, list) or not all(isinstance(s, str) for s in items)):
        raise fail("invalid_type", expected="a string or an array of strings")
    if items is not None and len(items) > MAX_STOP:
        raise fail("too_many_stops", limit=MAX_STOP, count=len(items))
    if items is not None and any(s == "" for s in items):
        raise fail("empty_stop")
    return items


STOP_SCHEMA = {
    "anyOf": [
        NON_EMPTY_STRING,
        {"type": "array", "items": NON_EMPTY_STRING, "maxItems": MAX_STOP},
        {"type": "null"},
    ]
}


def _content_parts(v: Any) -> Any:
    if v is None:
        raise fail("missing")
    if isinstance(v, str):
        return [{"type": "text", "text": v}]
    if not isinstance(v, list):
        raise fail("invalid_type", expected="a string or an array of content parts")
    return v


def _or_string(schema: dict) -> None:
    """The schema of `content`: a string (one text part) or an array of text parts."""
    array = {k: schema.pop(k) for k in ("type", "items")}
    schema["anyOf"] = [{"type": "string"}, array]


def _role(v: Any) -> Any:
    if v in ("tool", "function"):  # OpenAI roles that only make sense with tool calling
        raise fail("needs_tools")
    return v


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_refine_schema)


class StreamOptions(_Body):
    include_usage: bool = False


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    """A chat message."""

    # field -> its off values besides null (here: empty)
    DEFAULT_ONLY: ClassVar[dict[str, tuple]] = {k: ([], "") for k in ("tool_calls", "function_call", "audio")}
    DEFAULT_ONLY["refusal"] = ([], "")

    role: Annotated[Literal["system", "developer", "user", "assistant"], BeforeValidator(_role)]
    content: Annotated[list[TextPart], BeforeValidator(_content_parts)] = Field(json_schema_extra=_or_string)
    name: str | None = None
    tool_calls: Any = None
    function_call: Any = None
    audio: Any = None
    refusal: Any = None

    @field_validator("tool_calls", "function_call", "audio", "refusal")
    @classmethod
    def _empty(cls, v, info):
        if not _off(v, *cls.DEFAULT_ONLY[info.field_name]):
            raise fail("unsupported")
        return v

    def normalized(self) -> dict:
        msg = {"role": self.role, "content": "".join(p.text for p in self.content)}
        return {**msg, "name": self.name} if self.name else msg


class _Sampling(_Body):
    """The fields both endpoints share. `DEFAULT_ONLY`: field -> its off values besides null."""

    DEFAULT_ONLY: ClassVar[dict[str, tuple]] = {
        "frequency_penalty": (0, 0.0),
        "presence_penalty": (0, 0.0),
        "logit_bias": ({},),
    }
    SCHEMA: ClassVar[dict] = {  # stream_options only with stream: true
        "if": {"properties": {"stream_options": {"type": "object"}}, "required": ["stream_options"]},
        "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
    }

    model: str
    n: OptionalInt = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Annotated[list[str] | None, BeforeValidator(_stop_list)] = Field(None, json_schema_extra=STOP_SCHEMA)
    seed: OptionalInt = Field(None, ge=-(2**63), lt=2**64)
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
            raise fail("model_not_found")
        return v

    @field_validator("n")
    @classmethod
    def _n_limit(cls, v, info):
        limit = info.context["limits"].max_n
        if v is not None and v > limit:
            raise fail("above_limit", limit=limit, setting="max_n")
        return v

    @model_validator(mode="after")
    def _checks(self):
        for name, offs in self.DEFAULT_ONLY.items():
            if not _off(getattr(self, name), *offs):
                raise fail("unsupported", param=name)
        if self.stream_options is not None and not self.stream:
            raise fail("stream_only", param="stream_options")
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
        raise fail("above_limit", limit=limit, setting="max_new_tokens_limit")
    return v


def _prompt_shape(v: Any) -> Any:
    if v is None:
        raise fail("missing")
    if isinstance(v, list) and not v:
        raise fail("empty_prompts")
    if isinstance(v, list) and all(isinstance(t, (int, list)) and not isinstance(t, bool) for t in v):
        raise fail("token_prompt")
    if not isinstance(v, str) and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
        raise fail("invalid_type", expected="a string or an array of strings")
    return v


PROMPT_SCHEMA = {"anyOf": [NON_EMPTY_STRING, {"type": "array", "items": NON_EMPTY_STRING, "minItems": 1}]}


class CompletionRequest(_Sampling):
    """The body of POST /v1/completions."""

    DEFAULT_ONLY: ClassVar[dict[str, tuple]] = {
        **_Sampling.DEFAULT_ONLY,
        "logprobs": (),  # 0 is not "off": legacy logprobs=0 returns the sampled tokens' logprobs
        "echo": (False,),
        "suffix": ("",),
    }

    prompt: Annotated[str | list[str], BeforeValidator(_prompt_shape)] = Field(json_schema_extra=PROMPT_SCHEMA)
    max_tokens: OptionalInt = Field(None, ge=1)
    logprobs: Any = None
    echo: Any = None
    suffix: Any = None
    best_of: Any = Field(  # null or equal to n; the schema, which cannot compare two fields, says null
        None, json_schema_extra={"type": "null", "description": "Also accepted equal to n."}
    )

    _max_tokens_limit = field_validator("max_tokens")(_token_limit)

    @field_validator("prompt")
    @classmethod
    def _prompt_sizes(cls, v, info):
        limits: Limits = info.context["limits"]
        items = [v] if isinstance(v, str) else v
        if len(items) > limits.max_prompts:
            raise fail("too_many_prompts", count=len(items), limit=limits.max_prompts)
        for i, s in enumerate(items):
            where = {} if isinstance(v, str) else {"index": i}
            if not s:
                raise fail("empty_prompt", **where)
            if len(s) > limits.max_prompt_chars:
                raise fail("too_long", count=len(s), limit=limits.max_prompt_chars, **where)
        return v

    @model_validator(mode="after")
    def _best_of(self):
        if self.best_of is not None and not _same_json(_integral(self.best_of), self.n or 1):
            raise fail("unsupported", param="best_of")
        return self


class ChatRequest(_Sampling):
    """The body of POST /v1/chat/completions."""

    DEFAULT_ONLY: ClassVar[dict[str, tuple]] = {
        **_Sampling.DEFAULT_ONLY,
        "logprobs": (False,),
        "top_logprobs": (0,),
        "tools": ([],),
        "tool_choice": ("none",),
        "functions": ([],),
        "function_call": ("none",),
        "response_format": ({"type": "text"},),
        "modalities": (["text"],),
        **{k: () for k in ("audio", "prediction", "reasoning_effort", "web_search_options", "verbosity", "moderation")},
    }
    SCHEMA: ClassVar[dict] = {
        "allOf": [
            _Sampling.SCHEMA,
            {  # not both max_tokens and max_completion_tokens
                "not": {
                    "properties": {"max_tokens": {"type": "integer"}, "max_completion_tokens": {"type": "integer"}},
                    "required": ["max_tokens", "max_completion_tokens"],
                }
            },
        ]
    }

    messages: list[Message] = Field(min_length=1)
    max_tokens: OptionalInt = Field(None, ge=1)
    max_completion_tokens: OptionalInt = Field(None, ge=1)
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
            raise fail("too_long", count=total, limit=limit)
        return v

    @model_validator(mode="after")
    def _one_max_tokens(self):
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise fail("one_of", param="max_completion_tokens")
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
