"""`ftcot serve` for tests: a tiny random-init GPT-2 on the toy BPE tokenizer, a server of it on a free
127.0.0.1 port (`start`/`stop`), raw HTTP requests and the OpenAI error-shape check.
"""

from __future__ import annotations

import http.client
import json
from types import SimpleNamespace

from tests.helpers.toy_tokenizers import bpe_tokenizer

MODEL_ID = "tiny-gpt2"
MAX_BATCH = 8


def tiny_student() -> SimpleNamespace:
    """`model` and `tokenizer`: a 2-layer d=32 GPT-2 with 256 positions."""
    from ftcot_jax import models

    tok = bpe_tokenizer()
    eos = tok.eos_token_id
    cfg = dict(
        model_type="gpt2",
        vocab_size=len(tok),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    # models.load(save_hf(...)) is what `ftcot serve DIR` does; it is the models helper's tested round trip
    # and costs ~15 s here, so the server gets the random-init model directly.
    return SimpleNamespace(model=models.from_config(cfg, seed=0), tokenizer=tok)


def start(student, generate_fn=None, trained=None, **config) -> SimpleNamespace:
    """A started server of `student` (ServeConfig fields in `config`): `server`, `app`, `port`, `url`."""
    from ftcot_jax.config.serve import ServeConfig
    from ftcot_jax.serve.server import make_server

    kw = dict(model_id=MODEL_ID, port=0, max_batch=MAX_BATCH, max_new_tokens_limit=128, max_n=4, batch_window_s=0.02)
    kw.update(config)
    server = make_server(
        student.model, student.tokenizer, ServeConfig(**kw), trained=trained, generate_fn=generate_fn, quiet=True
    )
    server.start()
    return SimpleNamespace(server=server, app=server.app, port=server.port, url=f"http://127.0.0.1:{server.port}/v1")


def stop(srv) -> None:
    srv.server.stop()


def raw(port, method, path, body=b"", headers=None, conn=None):
    """One HTTP request -> (status, parsed JSON or None, raw bytes)."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    hdrs = {"Content-Type": "application/json"} if headers is None else headers
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    c.request(method, path, body=body, headers=hdrs)
    r = c.getresponse()
    data = r.read()
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    if conn is None:
        c.close()
    return r.status, parsed, data


def assert_openai_error(status, parsed, data, expect_status, param=None, type="invalid_request_error"):
    assert status == expect_status, (status, data[:300])
    assert isinstance(parsed, dict) and set(parsed) == {"error"}, data[:300]
    err = parsed["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert err["type"] == type, err
    if param is not None:
        assert err["param"] == param, err
