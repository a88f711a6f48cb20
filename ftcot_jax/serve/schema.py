"""Request validation for `ftcot serve`: OpenAI request bodies -> one normalized `Request`, and `APIError`,
the error a client gets back.

Kept apart from the HTTP and decoding code so every rule is one readable table here.
Each OpenAI field falls in exactly one class (docs/serve.md lists them):
  implemented   -- validated and honoured;
  ignored       -- accepted with any well-typed value, has no effect (pure metadata);
  default-only  -- accepted only at its "off" value (null / false / 0 / {} ...); anything else is a 400
                   naming the field, because silently ignoring e.g. `logprobs` or `tools` would return a
                   wrong answer to a client that relies on it;
and any other field is unknown: 400 "Unrecognized request argument supplied: <field>" like OpenAI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


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
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


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
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    messages: tuple[dict, ...] = field(default=())  # chat only, normalized {"role", "content"}


def _off(value: Any, *offs: Any) -> bool:
    return value is None or any(value == o and type(value) is type(o) for o in offs)


# field -> predicate "value is the off value" (default-only fields).
_COMMON_DEFAULT_ONLY = {
    "frequency_penalty": lambda v: _off(v, 0, 0.0),
    "presence_penalty": lambda v: _off(v, 0, 0.0),
    "logit_bias": lambda v: v is None or v == {},
}
COMPLETION_DEFAULT_ONLY = {
    **_COMMON_DEFAULT_ONLY,
    "logprobs": lambda v: v is None,  # 0 is not "off": legacy logprobs=0 returns the sampled tokens' logprobs
    "echo": lambda v: _off(v, False),
    "suffix": lambda v: v is None or v == "",
    "best_of": None,  # special-cased: null or equal to n
}
CHAT_DEFAULT_ONLY = {
    **_COMMON_DEFAULT_ONLY,
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
# Accepted and ignored: metadata about the caller or the platform, no effect on the output.
COMPLETION_IGNORED = {"user"}
CHAT_IGNORED = {
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "safety_identifier",
}
COMPLETION_IMPLEMENTED = {
    "model",
    "prompt",
    "max_tokens",
    "n",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "stream",
    "stream_options",
}
CHAT_IMPLEMENTED = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "stream",
    "stream_options",
}

CHAT_ROLES = ("system", "developer", "user", "assistant")
UNSUPPORTED_ROLES = ("tool", "function")  # OpenAI roles that only make sense with tool calling
MAX_STOP = 4  # OpenAI's limit on stop sequences


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _type_name(v: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "an integer",
        float: "a number",
    }.get(type(v), type(v).__name__)


def _bad_type(param: str, expected: str, v: Any) -> APIError:
    return APIError(400, f"Invalid type for '{param}': expected {expected}, but got {_type_name(v)}.", param=param)


def check_fields(body: dict, implemented: set, ignored: set, default_only: dict) -> None:
    for key in body:
        if key not in implemented and key not in ignored and key not in default_only:
            raise APIError(400, f"Unrecognized request argument supplied: {key}", param=key)
    for key, is_off in default_only.items():
        if key not in body:
            continue
        v = body[key]
        if key == "best_of":
            if v is None or (_is_int(v) and v == body.get("n", 1)):
                continue
        elif is_off(v):
            continue
        raise APIError(
            400,
            f"'{key}' is not supported by this server (accepted only at its default value; see docs/serve.md).",
            param=key,
        )


def _opt_int(body: dict, key: str, lo: int, hi: int | None, *, hi_msg: str = "") -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if not _is_int(v):
        raise _bad_type(key, "an integer", v)
    if v < lo:
        raise APIError(
            400, f"Invalid '{key}': {v} is less than the minimum of {lo}.", param=key, code="integer_below_min_value"
        )
    if hi is not None and v > hi:
        raise APIError(
            400,
            f"Invalid '{key}': {v} is greater than the maximum of {hi}{hi_msg}.",
            param=key,
            code="integer_above_max_value",
        )
    return v


def _opt_num(body: dict, key: str, lo: float, hi: float, default: float, *, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if not _is_num(v):
        raise _bad_type(key, "a number", v)
    if v > hi or v < lo or (lo_open and v == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise APIError(400, f"Invalid '{key}': {v} is outside the allowed range {bound}.", param=key)
    return float(v)


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _bad_type("stop", "a string or an array of strings", v)
    if len(items) > MAX_STOP:
        raise APIError(
            400, f"Invalid 'stop': at most {MAX_STOP} stop sequences are allowed, got {len(items)}.", param="stop"
        )
    if any(s == "" for s in items):
        raise APIError(400, "Invalid 'stop': stop sequences must be non-empty strings.", param="stop")
    return tuple(dict.fromkeys(items))


def _stream(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad_type("stream", "a boolean", stream)
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise _bad_type("stream_options", "an object", opts)
        if not stream:
            raise APIError(400, "Invalid 'stream_options': only allowed when 'stream' is true.", param="stream_options")
        for k, val in opts.items():
            if k != "include_usage":
                raise APIError(
                    400, f"Unrecognized request argument supplied: stream_options.{k}", param=f"stream_options.{k}"
                )
            if not isinstance(val, bool):
                raise _bad_type("stream_options.include_usage", "a boolean", val)
            include_usage = val
    return bool(stream), include_usage


def _check_prompt_chars(text: str, param: str, limits: Limits) -> None:
    if len(text) > limits.max_prompt_chars:
        raise APIError(
            400,
            f"Invalid '{param}': {len(text)} characters is more than this server's limit of "
            f"{limits.max_prompt_chars} characters.",
            param=param,
            code="string_above_max_length",
        )


def _common(body: dict, limits: Limits, max_tokens_key: str) -> dict:
    n = _opt_int(body, "n", 1, limits.max_n, hi_msg=" (this server's max_n)")
    max_tokens = _opt_int(
        body, max_tokens_key, 1, limits.max_new_tokens, hi_msg=" (this server's max_new_tokens_limit)"
    )
    temperature = _opt_num(body, "temperature", 0.0, 2.0, 1.0)
    top_p = _opt_num(body, "top_p", 0.0, 1.0, 1.0, lo_open=True)
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise _bad_type("seed", "an integer", seed)
    if seed is not None and not (-(2**63) <= seed < 2**64):
        raise APIError(400, "Invalid 'seed': must fit in 64 bits.", param="seed")
    stream, include_usage = _stream(body)
    return dict(
        n=n or 1,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=_stop(body),
        stream=stream,
        include_usage=include_usage,
    )


def parse_completion(body: dict, limits: Limits) -> Request:
    check_fields(body, COMPLETION_IMPLEMENTED, COMPLETION_IGNORED, COMPLETION_DEFAULT_ONLY)
    if "prompt" not in body or body["prompt"] is None:
        raise APIError(400, "Missing required parameter: 'prompt'.", param="prompt")
    p = body["prompt"]
    if isinstance(p, str):
        prompts = [p]
    elif isinstance(p, list) and p and all(isinstance(s, str) for s in p):
        prompts = p
    elif isinstance(p, list) and p and all(_is_int(t) or isinstance(t, list) for t in p):
        raise APIError(
            400, "Invalid 'prompt': token-id prompts are not supported by this server; send text.", param="prompt"
        )
    elif isinstance(p, list) and not p:
        raise APIError(400, "Invalid 'prompt': empty array. Expected at least one prompt.", param="prompt")
    else:
        raise _bad_type("prompt", "a string or an array of strings", p)
    if len(prompts) > limits.max_prompts:
        raise APIError(
            400,
            f"Invalid 'prompt': {len(prompts)} prompts is more than this server's limit of "
            f"{limits.max_prompts} per request.",
            param="prompt",
        )
    for i, s in enumerate(prompts):
        param = "prompt" if isinstance(p, str) else f"prompt[{i}]"
        if not s:
            raise APIError(400, f"Invalid '{param}': empty string. Expected a non-empty prompt.", param=param)
        _check_prompt_chars(s, param, limits)
    c = _common(body, limits, "max_tokens")
    if c["max_tokens"] is None:
        c["max_tokens"] = min(16, limits.max_new_tokens)  # OpenAI's default for /v1/completions
    return Request(kind="completion", prompts=tuple(prompts), **c)


def parse_messages(raw: Any, limits: Limits) -> tuple[dict, ...]:
    if raw is None:
        raise APIError(400, "Missing required parameter: 'messages'.", param="messages")
    if not isinstance(raw, list):
        raise _bad_type("messages", "an array", raw)
    if not raw:
        raise APIError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages",
            code="empty_array",
        )
    out, total_chars = [], 0
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad_type(where, "an object", m)
        role = m.get("role")
        if role is None:
            raise APIError(400, f"Missing required parameter: '{where}.role'.", param=f"{where}.role")
        if not isinstance(role, str):
            raise _bad_type(f"{where}.role", "a string", role)
        if role in UNSUPPORTED_ROLES:
            raise APIError(
                400,
                f"Invalid '{where}.role': '{role}' messages need tool calling, which this server does not implement.",
                param=f"{where}.role",
            )
        if role not in CHAT_ROLES:
            raise APIError(
                400,
                f"Invalid value: '{role}'. Supported values are: " + ", ".join(f"'{r}'" for r in CHAT_ROLES) + ".",
                param=f"{where}.role",
                code="invalid_value",
            )
        for key in m:
            if key in ("role", "content", "name"):
                continue
            if key in ("tool_calls", "function_call", "audio", "refusal") and m[key] in (None, [], ""):
                continue
            if key in ("tool_calls", "function_call", "audio", "refusal"):
                raise APIError(400, f"'{where}.{key}' is not supported by this server.", param=f"{where}.{key}")
            raise APIError(400, f"Unrecognized request argument supplied: {where}.{key}", param=f"{where}.{key}")
        name = m.get("name")
        if name is not None and not isinstance(name, str):
            raise _bad_type(f"{where}.name", "a string", name)
        if "content" not in m or m["content"] is None:
            raise APIError(400, f"Missing required parameter: '{where}.content'.", param=f"{where}.content")
        content = _content_text(m["content"], f"{where}.content")
        total_chars += len(content)
        if total_chars > limits.max_prompt_chars:
            raise APIError(
                400,
                f"Invalid 'messages': more than this server's limit of {limits.max_prompt_chars} characters in total.",
                param="messages",
                code="string_above_max_length",
            )
        msg = {"role": role, "content": content}
        if name:
            msg["name"] = name
        out.append(msg)
    return tuple(out)


def _content_text(content: Any, param: str) -> str:
    """A string, or an array of {"type": "text", "text": ...} parts (joined); other part types are refused."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad_type(param, "a string or an array of content parts", content)
    texts = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _bad_type(where, "an object", part)
        ptype = part.get("type")
        if ptype != "text":
            raise APIError(
                400,
                f"Invalid '{where}.type': only 'text' content parts are supported, got {ptype!r}.",
                param=f"{where}.type",
            )
        for key in part:
            if key not in ("type", "text"):
                raise APIError(400, f"Unrecognized request argument supplied: {where}.{key}", param=f"{where}.{key}")
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad_type(f"{where}.text", "a string", text)
        texts.append(text)
    return "".join(texts)


def parse_chat(body: dict, limits: Limits, render) -> Request:
    """`render(messages) -> str` applies the chat template (the server's tokenizer decides it)."""
    check_fields(body, CHAT_IMPLEMENTED, CHAT_IGNORED, CHAT_DEFAULT_ONLY)
    messages = parse_messages(body.get("messages"), limits)
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise APIError(400, "Give only one of 'max_tokens' and 'max_completion_tokens'.", param="max_completion_tokens")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    c = _common(body, limits, key)
    prompt = render(list(messages))
    _check_prompt_chars(prompt, "messages", limits)
    return Request(kind="chat", prompts=(prompt,), messages=messages, **c)
