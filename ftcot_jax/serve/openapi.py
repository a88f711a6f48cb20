"""The API schema `ftcot serve` publishes at GET /openapi.json (OpenAPI 3.1): each route with the request models
of `serve.schema`, tightened to this server (the served model id as the one value of `model`, max_tokens, n,
prompt and message lengths, and for a trained student a user message), and the response models of
`serve.responses`. A request the schema accepts is served, or refused only for what a schema cannot say
(`INEXPRESSIBLE`).
"""

from __future__ import annotations

import copy
from http import HTTPStatus

from pydantic.json_schema import models_json_schema

from ftcot_jax import __version__
from ftcot_jax.serve.responses import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from ftcot_jax.serve.schema import ChatRequest, CompletionRequest, Limits

REF = "#/components/schemas/{model}"
# The error codes of a request the schema accepts but the server refuses (400): limits on the whole prompt,
# in tokens or summed over messages, that a schema cannot state.
INEXPRESSIBLE = ("context_length_exceeded", "string_above_max_length")
_MODELS = [(CompletionRequest, "validation"), (ChatRequest, "validation")] + [
    (m, "serialization") for m in (Completion, ChatCompletion, ChatCompletionChunk, ModelCard, ModelList, ErrorResponse)
]
_REQUEST_ERRORS = (400, 404, 408, 411, 413, 500, 503, 504)
_WHOLE_PROMPT = (
    " Limits a schema cannot state: the prompt in tokens (at most max_prompt_tokens, and with max_tokens within "
    "the model's context) and the characters of all messages together and of the rendered prompt; a request "
    f"over them gets a 400 with code {' or '.join(INEXPRESSIBLE)}."
)


def _ref(name: str) -> dict:
    return {"$ref": REF.format(model=name)}


def _schemas(limits: Limits, model_id: str, trained: bool) -> dict:
    _, top = models_json_schema(_MODELS, ref_template=REF)
    schemas = copy.deepcopy(top["$defs"])  # the models' schema extras are shared constants
    for name in ("CompletionRequest", "ChatRequest"):
        s = schemas[name]
        props = s["properties"]
        props["model"] = {"type": "string", "enum": [model_id], "description": "The served model's id."}
        props["n"]["anyOf"][0]["maximum"] = limits.max_n
        for key in ("max_tokens", "max_completion_tokens"):
            if key in props:
                props[key]["anyOf"][0]["maximum"] = limits.max_new_tokens
        s["description"] += _WHOLE_PROMPT
    one, many = schemas["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    one["maxLength"] = many["items"]["maxLength"] = limits.max_prompt_chars
    many["maxItems"] = limits.max_prompts
    schemas["Message"]["properties"]["content"]["anyOf"][0]["maxLength"] = limits.max_prompt_chars
    schemas["TextPart"]["properties"]["text"]["maxLength"] = limits.max_prompt_chars
    if trained:  # the prompt is the last user message's
        messages = schemas["ChatRequest"]["properties"]["messages"]
        messages["contains"] = {"properties": {"role": {"const": "user"}}, "required": ["role"]}
        messages["description"] = "A trained student answers the last user message: at least one is needed."
    return schemas


def _responses(ok: dict, *errors: int) -> dict:
    out = {"200": {"description": "OK", "content": ok}}
    for status in errors:
        out[str(status)] = {
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": _ref("ErrorResponse")}},
        }
    return out


def _completion_route(request: str, response: str, chunk: str, summary: str, auth: list) -> dict:
    payload = {"anyOf": [_ref(chunk), _ref("ErrorResponse")]}
    stream = {  # OpenAPI 3.1 reads an event stream's schema as each event's
        "schema": {
            "type": "object",
            "description": f"With stream: true, server-sent events: `data: <{chunk}>` ..., then `data: [DONE]`.",
            "required": ["data"],
            "properties": {
                "data": {
                    "anyOf": [
                        {"const": "[DONE]"},
                        {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
                    ]
                }
            },
        }
    }
    ok = {"application/json": {"schema": _ref(response)}, "text/event-stream": stream}
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
            "responses": _responses(ok, *_REQUEST_ERRORS, *([401] if auth else [])),
            **({"security": auth} if auth else {}),
        }
    }


def _get(summary: str, schema: dict, auth: list, *errors: int) -> dict:
    ok = {"application/json": {"schema": schema}}
    return {"get": {"summary": summary, "responses": _responses(ok, *errors), **({"security": auth} if auth else {})}}


def openapi_document(limits: Limits, model_id: str, *, api_key: bool, trained: bool) -> dict:
    """The document for a server of `model_id` with these limits; `api_key`: bearer auth is required."""
    auth = [{"bearer": []}] if api_key else []
    e401 = (401,) if api_key else ()
    model_param = {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string", "enum": [model_id]}}
    card = _get("The served model's card.", _ref("ModelCard"), auth, 404, *e401)
    card["get"]["parameters"] = [model_param]
    health = {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "ftcot serve", "version": __version__, "description": "An OpenAI-compatible server."},
        "paths": {
            "/v1/models": _get("The served model.", _ref("ModelList"), auth, *e401),
            "/v1/models/{model_id}": card,
            "/v1/completions": _completion_route(
                "CompletionRequest", "Completion", "Completion", "A text completion.", auth
            ),
            "/v1/chat/completions": _completion_route(
                "ChatRequest", "ChatCompletion", "ChatCompletionChunk", "A chat completion.", auth
            ),
            "/health": _get("Whether the server is up (no key needed).", health, []),
            "/stats": _get("Batching and HTTP counters, and the active limits.", {"type": "object"}, auth, *e401),
            "/openapi.json": _get("This document.", {"type": "object"}, auth, *e401),
        },
        "components": {
            "schemas": _schemas(limits, model_id, trained),
            **({"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}} if api_key else {}),
        },
    }
