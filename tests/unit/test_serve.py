"""`ftcot serve`: the OpenAI API on a tiny random-init GPT-2, checked against decode.generate.

One server (module fixture) on a free port, loaded the way the CLI loads a checkpoint (save_hf -> models.load).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers.serve import MAX_BATCH, MODEL_ID, assert_openai_error, raw, start, stop, tiny_student
from tests.helpers.toy_tokenizers import bpe_tokenizer

openai = pytest.importorskip("openai")

MAX_TOKENS = 12  # one max_tokens for most requests: one decoder compilation per prompt bucket


@pytest.fixture(scope="module")
def student():
    return tiny_student()


@pytest.fixture(scope="module")
def srv(student):
    s = start(student)
    yield s
    stop(s)


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=120)


def reference(student, prompts, max_new_tokens=MAX_TOKENS, stop=None):
    """decode.generate on `prompts`, greedy. Padded to whole batches of MAX_BATCH rows like the server pads
    its calls, so both compile the same shapes (keeps the test fast; equality does not depend on it)."""
    from ftcot_jax.decode import generate

    prompts = list(prompts)
    filler = (-len(prompts)) % MAX_BATCH
    gens = generate(
        student.model,
        student.tokenizer,
        prompts + prompts[-1:] * filler,
        max_new_tokens=max_new_tokens,
        batch_size=MAX_BATCH,
        stop=stop,
        temperature=0.0,
    )
    return gens[: len(prompts)]


# ---------------------------------------------------------------------------------------------------------
# The official client, outputs equal to decode.generate.


def test_models_endpoint(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_completion_equals_generate(student, client):
    prompt = "Q: What is 2 + 3?\nA:"
    want = reference(student, [prompt])[0]
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
    assert r.object == "text_completion" and r.model == MODEL_ID and len(r.choices) == 1
    assert r.choices[0].text == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    n_prompt = len(student.tokenizer(prompt)["input_ids"])
    assert r.usage.prompt_tokens == n_prompt
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.total_tokens == n_prompt + len(want.token_ids)


def test_prompt_list_and_n(student, client):
    prompts = ["Question 1: apples", "Question 2: the last letters"]
    want = reference(student, prompts)
    r = client.completions.create(model=MODEL_ID, prompt=prompts, n=2, max_tokens=MAX_TOKENS, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [want[0].text, want[0].text, want[1].text, want[1].text]
    assert r.usage.completion_tokens == 2 * (len(want[0].token_ids) + len(want[1].token_ids))


def test_stop_string_honoured(student, client):
    prompt = "Q: Take the last letters of each word"
    free = reference(student, [prompt], max_new_tokens=16)[0].text
    assert len(free) >= 6, free
    stop_s = free[3:5]  # occurs in the free-running output: decoding must stop there
    want = reference(student, [prompt], max_new_tokens=16, stop=[stop_s])[0]
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=16, temperature=0, stop=[stop_s])
    assert r.choices[0].text == want.text
    assert r.choices[0].finish_reason == "stop"
    assert stop_s not in r.choices[0].text
    assert free.startswith(r.choices[0].text)


def test_chat_equals_generate_with_plain_template(student, client):
    from ftcot_jax.serve.chat import render_chat

    two = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 3?", "name": "ann"}]
    assert render_chat(student.tokenizer, two) == "System: Be brief.\n\nUser (ann): 2 + 3?\n\nAssistant:"
    messages = [{"role": "user", "content": "2 + 3?"}]  # short: stays in the smallest prompt bucket
    rendered = render_chat(student.tokenizer, messages)
    assert rendered == "User: 2 + 3?\n\nAssistant:"
    want = reference(student, [rendered])[0]
    r = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == len(student.tokenizer(rendered)["input_ids"])
    # max_completion_tokens is the newer name of max_tokens
    r2 = client.chat.completions.create(
        model=MODEL_ID, messages=messages, max_completion_tokens=MAX_TOKENS, temperature=0
    )
    assert r2.choices[0].message.content == want.text


def test_chat_template_from_tokenizer():
    from ftcot_jax.serve.chat import render_chat

    tok = bpe_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    out = render_chat(tok, [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert out == "<system>be brief\n<user>hi\n<assistant>"


def test_streaming_matches_non_streaming(client):
    messages = [{"role": "user", "content": "Take the last letters"}]
    full = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID,
            messages=messages,
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        full.choices[0].finish_reason
    ]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == full.usage.total_tokens
    comp = list(
        client.completions.create(
            model=MODEL_ID, prompt="Question 7:", max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
    )
    ref = client.completions.create(model=MODEL_ID, prompt="Question 7:", max_tokens=MAX_TOKENS, temperature=0)
    assert "".join(c.choices[0].text for c in comp) == ref.choices[0].text


def test_sampling_runs_and_seed_reproduces(client):
    kw = dict(model=MODEL_ID, prompt="Question 1:", max_tokens=MAX_TOKENS, temperature=1.0, top_p=0.9, seed=123)
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    assert a == b


# ---------------------------------------------------------------------------------------------------------
# Token streaming: text leaves while the decoder still runs, and adds up to the non-streamed answer.

LONG = 64  # tokens: the tiny model never ends these prompts early, so a stream has several chunks


def test_stream_sends_text_while_decoding(student):
    """The decoder waits, after its first chunk, until the client holds the first streamed text: so that text
    arrived before decoding ended (the answer needs 4 chunks of 16 steps)."""
    from ftcot_jax.decode import generate

    got_first, waited = threading.Event(), []

    def gated(model, tok, prompts, **kw):
        inner = kw.get("on_chunk")
        if inner is not None:  # only streaming batches get a hook

            def on_chunk(partials):
                out = inner(partials)
                if not waited:
                    waited.append(got_first.wait(20))
                return out

            kw["on_chunk"] = on_chunk
        return generate(model, tok, prompts, **kw)

    s = start(student, generate_fn=gated)
    try:
        client = openai.OpenAI(base_url=s.url, api_key="unused", max_retries=0, timeout=120)
        kw = dict(model=MODEL_ID, prompt="Question 3: apples", max_tokens=LONG, temperature=0)
        texts = []
        for c in client.completions.create(**kw, stream=True):
            if c.choices and c.choices[0].text:
                texts.append(c.choices[0].text)
                got_first.set()
        full = client.completions.create(**kw)
        assert waited == [True]
        assert full.usage.completion_tokens == LONG and len(texts) > 1, texts
        assert "".join(texts) == full.choices[0].text
    finally:
        stop(s)


def test_streamed_stop_strings_and_choices(student, client):
    """Several prompts and samples stream interleaved, each choice's chunks add up to its non-streamed text,
    and text that may begin a stop string is held back: never streamed when the stop string follows."""
    prompts = ["Q: Take the last letters of each word", "Question 1: apples"]
    stop_s = "You" * 7
    first16 = reference(student, prompts[:1], max_new_tokens=16)[0].text
    free = reference(student, prompts[:1], max_new_tokens=LONG)[0].text
    assert "You" in first16 and stop_s not in first16 and stop_s in free, free  # a stop's start in chunk 1
    kw = dict(model=MODEL_ID, prompt=prompts, n=2, max_tokens=LONG, temperature=0, stop=[stop_s])
    full = client.completions.create(**kw)
    texts, chunks, finish = ["", "", "", ""], [[], [], [], []], [None] * 4
    for c in client.completions.create(**kw, stream=True):
        ch = c.choices[0]
        texts[ch.index] += ch.text
        chunks[ch.index] += [ch.text] if ch.text else []
        finish[ch.index] = ch.finish_reason or finish[ch.index]
    assert texts == [ch.text for ch in full.choices]
    assert finish == [ch.finish_reason for ch in full.choices] == ["stop", "stop", "length", "length"]
    assert texts[0] == free[: free.find(stop_s)] and not any("You" in t for t in chunks[0] + chunks[1])
    assert len(chunks[2]) > 1 and len(chunks[3]) > 1, chunks


# ---------------------------------------------------------------------------------------------------------
# A trained student: its own prompt, its answer parsed, its card.

QUESTION = 'Take the last letters of each word in "Elon Musk" and concatenate them.'


@pytest.fixture(scope="module")
def trained():
    from ftcot_jax.prompts import METHOD_TEMPLATE
    from ftcot_jax.trained import TrainedFormat

    return TrainedFormat(
        task="last_letter_concatenation",
        method="ft_cot",
        template=METHOD_TEMPLATE["ft_cot"],
        model_kind="decoder",
        step=24,
        epoch=3,
        accuracy=0.5,
        selection="best",
        max_new_tokens=LONG,
    )


@pytest.fixture(scope="module")
def student_srv(student, trained):
    s = start(student, trained=trained)
    yield s
    stop(s)


def test_trained_student_chat(student, trained, student_srv):
    client = openai.OpenAI(base_url=student_srv.url, api_key="unused", max_retries=0, timeout=120)
    card = client.models.retrieve(MODEL_ID).to_dict()
    assert card["ftcot"] == trained.card() == client.models.list().data[0].to_dict()["ftcot"]
    prompt = trained.prompt(QUESTION)
    want = reference(student, [prompt], max_new_tokens=MAX_TOKENS)[0].text
    parsed = trained.parse(want)
    ftcot = {"rationale": parsed.rationale, "answer": parsed.answer, "prompt": prompt}
    messages = [
        {"role": "system", "content": "ignored: a trained student knows its format"},
        {"role": "user", "content": "an earlier question"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": QUESTION},
    ]
    kw = dict(model=MODEL_ID, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    r = client.chat.completions.create(**kw)
    assert r.choices[0].message.content == want
    assert r.choices[0].to_dict()["ftcot"] == ftcot
    assert r.usage.prompt_tokens == len(student.tokenizer(prompt)["input_ids"])
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    last = chunks[-1].choices[0]
    assert last.finish_reason == r.choices[0].finish_reason and last.to_dict()["ftcot"] == ftcot
    assert all("ftcot" not in c.choices[0].to_dict() for c in chunks[:-1])
    # without max_tokens: the training evaluation's budget (LONG), not the server's limit (128); without
    # temperature: greedy, as the student was evaluated (OpenAI's default would sample at 1.0)
    default = client.chat.completions.create(model=MODEL_ID, messages=messages)
    assert default.usage.completion_tokens == LONG and default.choices[0].finish_reason == "length"
    greedy = reference(student, [prompt], max_new_tokens=LONG)[0].text
    assert default.choices[0].message.content == greedy
    again = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model=MODEL_ID, messages=messages, stream=True)
    )
    assert again == greedy
    # /v1/completions stays raw text
    comp = raw(student_srv.port, "POST", C, _c(prompt=prompt, max_tokens=MAX_TOKENS))[1]
    assert comp["choices"][0]["text"] == want and "ftcot" not in comp["choices"][0]
    status, parsed_err, data = raw(student_srv.port, "POST", CH, _ch(messages=[{"role": "system", "content": "x"}]))
    assert_openai_error(status, parsed_err, data, 400, "messages")
    assert "user message" in parsed_err["error"]["message"]


# ---------------------------------------------------------------------------------------------------------
# Concurrency: 50 requests at once, all correct, decoded in fewer batches than requests.


def test_50_concurrent_requests_are_batched(student, srv, client):
    prompts = [f"Question {i}: how many apples?" for i in range(50)]
    want = [g.text for g in reference(student, prompts)]
    before = srv.app.stats()

    def one(p):
        return client.completions.create(model=MODEL_ID, prompt=p, max_tokens=MAX_TOKENS, temperature=0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(50) as ex:
        results = list(ex.map(one, prompts))
    dt = time.perf_counter() - t0
    after = srv.app.stats()
    assert [r.choices[0].text for r in results] == want
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 50
    assert batches < 50 and after["max_batch_rows"] > 1, (batches, after)
    print(
        f"\n50 concurrent completions ({MAX_TOKENS} tokens each): {dt:.2f}s, {50 / dt:.1f} req/s, "
        f"{batches} batches, largest {after['max_batch_rows']} rows"
    )


def test_mixed_max_tokens_and_stops_share_batches(student, srv):
    """Rows with different max_tokens / stop strings are decoded together and cut per row afterwards:
    each answer still equals decode.generate for that row's own settings."""
    prompt = "Question 3: apples"
    free = reference(student, [prompt], max_new_tokens=16)[0].text
    assert len(free) >= 6, free
    cases = [dict(max_tokens=m) for m in (1, 3, 7, 16)] + [
        dict(max_tokens=16, stop=[free[2:4]]),
        dict(max_tokens=5, stop=[free[4:6], "zzz"]),
    ]
    want = [reference(student, [prompt], max_new_tokens=c["max_tokens"], stop=c.get("stop"))[0] for c in cases]
    before = srv.app.stats()
    with ThreadPoolExecutor(len(cases)) as ex:
        got = list(ex.map(lambda c: raw(srv.port, "POST", C, _c(prompt=prompt, **c))[1], cases))
    after = srv.app.stats()
    for c, w, g in zip(cases, want, got, strict=True):
        ch = g["choices"][0]
        assert (ch["text"], ch["finish_reason"], g["usage"]["completion_tokens"]) == (
            w.text,
            w.finish_reason,
            len(w.token_ids),
        ), c
    assert after["batches"] - before["batches"] < len(cases)


# ---------------------------------------------------------------------------------------------------------
# Malformed requests: a 4xx in OpenAI's error shape, and the server keeps serving after each.

C, CH = "/v1/completions", "/v1/chat/completions"
OK_COMPLETION = {"model": MODEL_ID, "prompt": "Question 1:", "max_tokens": 2, "temperature": 0}
USER = [{"role": "user", "content": "hi"}]


def _c(**kw):
    return {**OK_COMPLETION, **kw}


def _ch(**kw):
    return {"model": MODEL_ID, "messages": USER, "max_tokens": 2, **kw}


def _drop(d, key):
    return {k: v for k, v in d.items() if k != key}


MALFORMED = [
    # (name, path, body, headers, status, param)
    ("invalid JSON", C, b'{"model": "tiny-gpt2", "prompt": ', None, 400, None),
    ("empty body", C, b"", None, 400, None),
    ("whitespace body", CH, b"  \n", None, 400, None),
    ("JSON array body", C, b"[1, 2]", None, 400, None),
    ("lone surrogate in JSON", C, b'{"model": "tiny-gpt2", "prompt": "\\ud800"}', None, 400, None),
    ("NaN in JSON", C, b'{"model": "tiny-gpt2", "prompt": "x", "temperature": NaN}', None, 400, None),
    ("non-JSON content type", C, json.dumps(OK_COMPLETION).encode(), {"Content-Type": "text/plain"}, 400, None),
    (
        "form content type",
        CH,
        b"model=tiny-gpt2&prompt=x",
        {"Content-Type": "application/x-www-form-urlencoded"},
        400,
        None,
    ),
    ("no content type", C, json.dumps(OK_COMPLETION).encode(), {}, 400, None),
    ("missing model", C, _drop(OK_COMPLETION, "model"), None, 400, "model"),
    ("unknown model", C, _c(model="gpt-4"), None, 404, None),
    ("unknown model (chat)", CH, _ch(model="tiny-gpt3"), None, 404, None),
    ("model wrong type", C, _c(model=7), None, 400, "model"),
    ("missing prompt", C, _drop(OK_COMPLETION, "prompt"), None, 400, "prompt"),
    ("empty prompt", C, _c(prompt=""), None, 400, "prompt"),
    ("empty prompt list", C, _c(prompt=[]), None, 400, "prompt"),
    ("prompt wrong type", C, _c(prompt={"text": "x"}), None, 400, "prompt"),
    ("token-id prompt", C, _c(prompt=[1, 2, 3]), None, 400, "prompt"),
    ("max_tokens wrong type", C, _c(max_tokens="12"), None, 400, "max_tokens"),
    ("max_tokens bool", C, _c(max_tokens=True), None, 400, "max_tokens"),
    ("max_tokens float", C, _c(max_tokens=2.5), None, 400, "max_tokens"),
    ("max_tokens -1", C, _c(max_tokens=-1), None, 400, "max_tokens"),
    ("max_tokens 0", C, _c(max_tokens=0), None, 400, "max_tokens"),
    ("max_tokens 10**9", C, _c(max_tokens=10**9), None, 400, "max_tokens"),
    (
        "max_completion_tokens -1 (chat)",
        CH,
        {**_drop(_ch(), "max_tokens"), "max_completion_tokens": -1},
        None,
        400,
        "max_completion_tokens",
    ),
    ("max_tokens 10**9 (chat)", CH, _ch(max_tokens=10**9), None, 400, "max_tokens"),
    ("n huge", C, _c(n=1000), None, 400, "n"),
    ("n zero", CH, _ch(n=0), None, 400, "n"),
    ("n wrong type", C, _c(n="2"), None, 400, "n"),
    ("temperature wrong type", C, _c(temperature="hot"), None, 400, "temperature"),
    ("temperature out of range", CH, _ch(temperature=5), None, 400, "temperature"),
    ("top_p zero", C, _c(top_p=0), None, 400, "top_p"),
    ("stop wrong type", C, _c(stop=[1, 2]), None, 400, "stop"),
    ("too many stops", C, _c(stop=["a", "b", "c", "d", "e"]), None, 400, "stop"),
    ("stream wrong type", C, _c(stream="yes"), None, 400, "stream"),
    ("200k-character prompt", C, _c(prompt="x" * 200_000), None, 400, "prompt"),
    (
        "200k-character chat message",
        CH,
        _ch(messages=[{"role": "user", "content": "y" * 200_000}]),
        None,
        400,
        "messages",
    ),
    ("unknown field", C, _c(foo=1), None, 400, "foo"),
    ("unknown field (chat)", CH, _ch(top_k=5), None, 400, "top_k"),
    ("unsupported logprobs", C, _c(logprobs=5), None, 400, "logprobs"),
    ("unsupported echo", C, _c(echo=True), None, 400, "echo"),
    ("unsupported suffix", C, _c(suffix="END"), None, 400, "suffix"),
    ("unsupported best_of", C, _c(best_of=3), None, 400, "best_of"),
    ("unsupported tools", CH, _ch(tools=[{"type": "function", "function": {"name": "f"}}]), None, 400, "tools"),
    ("unsupported logit_bias", CH, _ch(logit_bias={"5": 10}), None, 400, "logit_bias"),
    ("missing messages", CH, _drop(_ch(), "messages"), None, 400, "messages"),
    ("empty messages", CH, _ch(messages=[]), None, 400, "messages"),
    ("messages wrong type", CH, _ch(messages="hi"), None, 400, "messages"),
    ("message not an object", CH, _ch(messages=["hi"]), None, 400, "messages[0]"),
    ("role that does not exist", CH, _ch(messages=[{"role": "wizard", "content": "x"}]), None, 400, "messages[0].role"),
    (
        "tool role",
        CH,
        _ch(messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]),
        None,
        400,
        "messages[0].role",
    ),
    ("missing role", CH, _ch(messages=[{"content": "x"}]), None, 400, "messages[0].role"),
    ("missing content", CH, _ch(messages=[{"role": "user"}]), None, 400, "messages[0].content"),
    ("content wrong type", CH, _ch(messages=[{"role": "user", "content": 5}]), None, 400, "messages[0].content"),
    (
        "image content part",
        CH,
        _ch(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]),
        None,
        400,
        "messages[0].content[0].type",
    ),
    (
        "unknown message key",
        CH,
        _ch(messages=[{"role": "user", "content": "x", "mood": "happy"}]),
        None,
        400,
        "messages[0].mood",
    ),
    ("stream_options without stream", CH, _ch(stream_options={"include_usage": True}), None, 400, "stream_options"),
]


@pytest.mark.parametrize("name,path,body,headers,status,param", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_request_gets_openai_error_and_server_keeps_serving(srv, name, path, body, headers, status, param):
    got = raw(srv.port, "POST", path, body, headers)
    assert_openai_error(*got, status, param)
    ok_status, ok, ok_raw = raw(srv.port, "POST", C, OK_COMPLETION)
    assert ok_status == 200 and ok["choices"][0]["finish_reason"] in ("stop", "length"), ok_raw[:300]


def test_context_limits(student, srv):
    """Prompts measured in tokens: over max_prompt_tokens, and prompt + max_tokens over the context."""
    tok, limits = student.tokenizer, srv.app.limits
    assert limits.context_length == 256 and limits.max_prompt_tokens == 255

    def prompt_of(n_tokens):
        text = ""
        while len(tok(text)["input_ids"]) < n_tokens:
            text += " apples"
        return text

    long_prompt = prompt_of(300)
    assert len(long_prompt) < limits.max_prompt_chars  # refused for its tokens, not its characters
    status, parsed, data = raw(srv.port, "POST", C, _c(prompt=long_prompt))
    assert_openai_error(status, parsed, data, 400, "prompt")
    assert parsed["error"]["code"] == "context_length_exceeded"
    mid = prompt_of(200)
    status, parsed, data = raw(srv.port, "POST", C, _c(prompt=mid, max_tokens=100))
    assert_openai_error(status, parsed, data, 400, "max_tokens")
    assert parsed["error"]["code"] == "context_length_exceeded" and "256" in parsed["error"]["message"]
    status, parsed, data = raw(srv.port, "POST", CH, _ch(messages=[{"role": "user", "content": long_prompt}]))
    assert_openai_error(status, parsed, data, 400, "messages")
    assert raw(srv.port, "POST", C, OK_COMPLETION)[0] == 200


def test_model_not_found_shape(srv):
    status, parsed, _ = raw(srv.port, "POST", C, _c(model="gpt-4"))
    assert status == 404 and parsed["error"]["code"] == "model_not_found" and "gpt-4" in parsed["error"]["message"]


def test_routing_errors_and_keep_alive(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    # errors and successes alternate on ONE keep-alive connection: every error leaves the stream parseable
    for method, path, body, status in [
        ("GET", C, b"", 405),
        ("POST", "/v1/embeddings", _c(), 404),
        ("POST", C, b"{bad", 400),
        ("POST", C, OK_COMPLETION, 200),
        ("DELETE", "/v1/models", b"", 405),
        ("GET", "/v1/nope", b"", 404),
        ("POST", C, _c(foo=1), 400),
        ("POST", C, OK_COMPLETION, 200),
    ]:
        got = raw(srv.port, method, path, body, conn=conn)
        if status == 200:
            assert got[0] == 200, got[2][:300]
        else:
            assert_openai_error(*got, status)
    conn.close()
    assert raw(srv.port, "GET", "/health", headers={})[:2] == (200, {"status": "ok"})


def _read_all(s) -> str:
    chunks = []
    while True:
        b = s.recv(65536)
        if not b:
            return b"".join(chunks).decode()
        chunks.append(b)


def test_oversized_and_truncated_bodies(srv):
    # Content-Length beyond the limit: 413 without reading the body; the server stays up.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 99999999\r\n\r\n{"
        )
        head = _read_all(s)
    assert head.startswith("HTTP/1.1 413") and '"error"' in head
    # a client that announces more than it sends, then hangs up
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 500\r\n\r\n{"model"'
        )
    # chunked upload: refused with 411
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        head = _read_all(s)
    assert head.startswith("HTTP/1.1 411")
    # garbage instead of HTTP, and a method http.server does not know: JSON errors, not HTML pages
    for junk in (b"GET /v1/models x HTTP/1.1\r\n\r\n", b"BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
            s.sendall(junk)
            resp = _read_all(s)
        head, _, body = resp.partition("\r\n\r\n")
        assert head.split()[1] in ("400", "501"), resp
        assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert_openai_error(*raw(srv.port, "OPTIONS", C), 405)
    assert raw(srv.port, "POST", C, OK_COMPLETION)[0] == 200


def test_errors_counted_and_client_raises(srv, client):
    before = srv.app.stats()["http_4xx"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_ID, prompt="x", max_tokens=-1)
    assert "max_tokens" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=USER)
    assert srv.app.stats()["http_4xx"] >= before + 2


# ---------------------------------------------------------------------------------------------------------
# Auth, and a decoder failure.


def test_bearer_key(student):
    s = start(student, api_key="sekret-key-123")
    try:
        for headers, code in [
            ({}, None),
            ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
            ({"Authorization": "Basic sekret-key-123"}, "invalid_api_key"),
        ]:
            status, parsed, data = raw(s.port, "GET", "/v1/models", headers=headers)
            assert_openai_error(status, parsed, data, 401)
            assert parsed["error"]["code"] == code and "sekret" not in data.decode()
            status, parsed, data = raw(
                s.port, "POST", C, OK_COMPLETION, headers={"Content-Type": "application/json", **headers}
            )
            assert_openai_error(status, parsed, data, 401)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url, api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=s.url, api_key="sekret-key-123", max_retries=0)
        assert good.completions.create(model=MODEL_ID, prompt="Question 1:", max_tokens=2).choices
        assert raw(s.port, "GET", "/health", headers={})[0] == 200
    finally:
        stop(s)


def test_decoder_failure_is_a_500_and_the_worker_survives(student):
    from ftcot_jax.decode import generate

    def flaky(model, tok, prompts, **kw):
        if any("BOOM" in p for p in prompts):
            raise RuntimeError("synthetic decoder failure")
        return generate(model, tok, prompts, **kw)

    s = start(student, generate_fn=flaky)
    try:
        status, parsed, _ = raw(s.port, "POST", C, _c(prompt="BOOM"))
        assert status == 500 and parsed["error"]["type"] == "server_error"
        status, parsed, data = raw(s.port, "POST", C, OK_COMPLETION)
        assert status == 200, data[:300]
    finally:
        stop(s)


# ---------------------------------------------------------------------------------------------------------
# The teacher client end to end: our server as the Zero-shot-CoT teacher of a teach round.


@pytest.mark.parametrize("protocol", ["completions", "chat"])
def test_teacher_client_end_to_end(student, srv, tmp_path, protocol):
    from ftcot_jax import prompts
    from ftcot_jax.serve.chat import render_chat
    from ftcot_jax.teacher.cache import TeacherCache
    from ftcot_jax.teacher.openai_backend import OpenAIBackend, step2_input
    from ftcot_jax.teacher.run import run_teach, select_items

    task = "last_letter_concatenation"
    items = select_items(task, "train", limit=2)
    backend = OpenAIBackend(MODEL_ID, protocol=protocol, base_url=srv.url, max_tokens=16, timeout=120)
    cache = TeacherCache(tmp_path / "teacher", task=task, teacher_model=MODEL_ID, temperature=0.0)
    report = run_teach(backend, cache, items, samples=1, temperature=0.0, progress=False)
    assert report.failed == 0 and report.answered == 2, report.errors
    recs = sorted(cache.records(), key=lambda r: r.sample_index)
    assert [r.sample_index for r in recs] == [it.sample_index for it in items]
    for item, rec in zip(items, recs, strict=True):
        step1 = prompts.zs_cot_step1_prompt(item.question)
        p1 = (
            step1 if protocol == "completions" else render_chat(student.tokenizer, [{"role": "user", "content": step1}])
        )
        g1 = reference(student, [p1], max_new_tokens=16, stop=["END"])[0]
        assert rec.rationale == g1.text and rec.reasoning_finish_reason == g1.finish_reason
        p2 = step2_input(protocol, item.question, g1.text)
        p2 = p2 if protocol == "completions" else render_chat(student.tokenizer, p2)
        g2 = reference(student, [p2], max_new_tokens=16, stop=["END"])[0]
        assert rec.answer_text == g2.text and rec.finish_reason == g2.finish_reason
        assert rec.endpoint == srv.url and rec.prompt_tokens > 0 and rec.completion_tokens > 0


# ---------------------------------------------------------------------------------------------------------
# Overload, configuration and the command line (no decoding).


def test_full_queue_is_a_503(student):
    from ftcot_jax.decode import Generation

    release = threading.Event()

    def slow(model, tok, prompts, **kw):
        release.wait(30)
        return [Generation(text="x", token_ids=[5], finish_reason="length") for _ in prompts]

    s = start(student, generate_fn=slow, max_queue=1, batch_window_s=0.0)
    try:
        with ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(raw, s.port, "POST", C, OK_COMPLETION) for _ in range(4)]
            deadline = time.time() + 30
            while s.app.stats()["http_5xx"] == 0 and time.time() < deadline:
                time.sleep(0.05)
            release.set()
            statuses = sorted(f.result()[0] for f in futs)
        # one decoding and one queued at most: the others are refused (503, OpenAI error shape)
        assert set(statuses) == {200, 503}, statuses
        status, parsed, _ = raw(s.port, "POST", C, OK_COMPLETION)
        assert status == 200 and parsed["choices"][0]["text"] == "x"
    finally:
        release.set()
        stop(s)


def test_config_and_cli_errors(student, capsys):
    from ftcot_jax import cli
    from ftcot_jax.config.serve import ServeConfig, default_model_id

    for kw, msg in [
        (dict(max_batch=0), "max_batch"),
        (dict(max_n=0), "max_n"),
        (dict(port=70000), "port"),
        (dict(api_key=""), "api_key"),
        (dict(max_new_tokens_limit=0), "max_new_tokens_limit"),
        (dict(max_prompt_chars=0), "max_prompt_chars"),
        (dict(batch_window_s=-1), "batch_window_s"),
    ]:
        with pytest.raises(ValueError, match=msg):
            ServeConfig(model_id=MODEL_ID, **kw)
    with pytest.raises(ValueError, match="context length"):
        start(student, max_prompt_tokens=256)  # the tiny model has 256 positions
    assert default_model_id("smollm2-135m-instruct") == "smollm2-135m-instruct"
    args = cli.build_parser().parse_args(["serve", "ckpt", "--port", "0", "--max-batch", "4"])
    assert (args.command, args.checkpoint, args.host, args.port, args.max_batch) == ("serve", "ckpt", "127.0.0.1", 0, 4)
    assert cli.main(["serve", "ckpt", "--max-n", "0"]) == 2
    assert cli.main(["serve", "ckpt", "--batch-window-ms", "-1"]) == 2
    assert cli.main(["serve", "ckpt", "--step", "first"]) == 2
    assert cli.main(["serve", "ckpt", "--stream-every", "0"]) == 2
    err = capsys.readouterr().err
    assert "max_n must be >= 1" in err and "--batch-window-ms" in err
    assert "--step 'first': expected best, last or a step number" in err and "stream_every must be >= 1" in err
    with pytest.raises(ValueError, match="step must be best, last or a step number"):
        ServeConfig(model_id=MODEL_ID, step="12")
