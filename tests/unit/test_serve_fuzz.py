"""`ftcot serve` against the schema it publishes (GET /openapi.json), fuzzed with schemathesis: requests built
from the schema of each route, and each response checked by schemathesis (no 5xx, status, content type and
body as the schema says, every event of a stream included) and by us: a schema-valid request is served (200),
or refused only for a limit the schema cannot state (`serve.openapi.INEXPRESSIBLE`).

The fast tier serves the tiny model with a stub decoder (text at once: decoding is checked against
decode.generate in test_serve.py, and each new prompt shape would cost a compilation); the slow tier decodes
with the tiny model itself, and more cases.
"""

from __future__ import annotations

import pytest

from tests.helpers.serve import raw, start, stop, tiny_student

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis brings hypothesis)
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

LIMITS = dict(max_new_tokens_limit=4, max_n=2, max_prompt_chars=64, batch_window_s=0.0)


def stub_generate(model, tokenizer, prompts, *, max_new_tokens, **kw):
    """The decoder's contract without decoding: each row's text is the start of its prompt."""
    from ftcot_jax.decode import Generation

    return [
        Generation(text=p[:k], token_ids=[1] * k, finish_reason="length")
        for p, k in zip(prompts, max_new_tokens, strict=True)
    ]


@pytest.fixture(scope="module")
def student():
    return tiny_student()


def fuzz(srv, path: str, method: str, examples: int) -> dict:
    """`examples` schema-valid requests to one route; returns how many got each (status, error code)."""
    from ftcot_jax.serve.openapi import INEXPRESSIBLE

    status, doc, data = raw(srv.port, "GET", "/openapi.json")
    assert status == 200, data[:300]
    operation = schemathesis.openapi.from_dict(doc)[path][method]
    seen: dict = {}

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(operation.as_strategy())
    def one(case):
        response = case.call(base_url=f"http://127.0.0.1:{srv.port}", timeout=120)
        # schemathesis' checks; its own "schema-valid is accepted" is ours below, which knows INEXPRESSIBLE
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
        code = response.json()["error"]["code"] if response.status_code != 200 else None
        assert response.status_code == 200 or (response.status_code == 400 and code in INEXPRESSIBLE), (
            response.status_code,
            response.text[:300],
        )
        seen[response.status_code, code] = seen.get((response.status_code, code), 0) + 1

    one()
    return seen


ROUTES = [("/v1/completions", "POST"), ("/v1/chat/completions", "POST"), ("/v1/models/{model_id}", "GET")]


@pytest.mark.parametrize(
    "decoder,examples",
    [pytest.param("stub", 30, id="stub-decoder"), pytest.param("tiny-model", 150, marks=pytest.mark.slow, id="model")],
)
@pytest.mark.parametrize("path,method", ROUTES, ids=[p for p, _ in ROUTES])
def test_schema_valid_requests_are_served_and_responses_conform(student, decoder, examples, path, method):
    srv = start(student, generate_fn=stub_generate if decoder == "stub" else None, **LIMITS)
    try:
        seen = fuzz(srv, path, method, examples)
        stats = srv.app.stats()
    finally:
        stop(srv)
    # the fuzzer ran (a route with one valid request, GET of the one model, has one case) and was served
    assert seen.get((200, None), 0) >= (1 if method == "GET" else min(examples, 10)), seen
    assert stats["http_5xx"] == 0, stats  # (schemathesis may stop reading a long stream: a client disconnect)


def test_published_schema_states_the_servers_limits(student):
    srv = start(student, api_key="k3y", **LIMITS)
    try:
        assert raw(srv.port, "GET", "/openapi.json", headers={})[0] == 401  # like every route but /health
        status, doc, _ = raw(srv.port, "GET", "/openapi.json", headers={"Authorization": "Bearer k3y"})
    finally:
        stop(srv)
    assert status == 200 and doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    completion, chat = schemas["CompletionRequest"]["properties"], schemas["ChatRequest"]["properties"]
    assert completion["model"]["enum"] == chat["model"]["enum"] == ["tiny-gpt2"]
    assert completion["max_tokens"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 4}
    assert chat["max_completion_tokens"]["anyOf"][0]["maximum"] == 4 and chat["n"]["anyOf"][0]["maximum"] == 2
    one, many = completion["prompt"]["anyOf"]
    assert (one["minLength"], one["maxLength"], many["minItems"], many["maxItems"]) == (1, 64, 1, 64)
    assert completion["echo"]["enum"] == [None, False] and chat["tool_choice"]["enum"] == [None, "none"]
    assert schemas["CompletionRequest"]["additionalProperties"] is False
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "security" not in doc["paths"]["/health"]["get"]
    assert doc["paths"]["/v1/chat/completions"]["post"]["security"] == [{"bearer": []}]
