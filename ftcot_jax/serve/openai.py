"""The OpenAI API on top of the engine: authentication, model cards, request -> decoding parameters, and the
response and stream-event bodies. Transport-free: serve/http.py calls it from its request handler.
"""

from __future__ import annotations

import hmac
import time
import uuid
from concurrent.futures import TimeoutError as FutureTimeout

from ftcot_jax.config.serve import ServeConfig
from ftcot_jax.serve.engine import Engine, Params, RowResult
from ftcot_jax.serve.schema import APIError, Limits, Request, parse_chat, parse_completion


class App:
    """One served model's API; `context_len` is the model's position limit (None: no limit, e.g. T5)."""

    def __init__(self, engine: Engine, config: ServeConfig, context_len: int | None):
        self.engine, self.config = engine, config
        self.context_len = context_len
        max_prompt_tokens = config.max_prompt_tokens
        if max_prompt_tokens is None:
            max_prompt_tokens = (context_len - 1) if context_len else 4096
        if max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
        if context_len and max_prompt_tokens >= context_len:
            raise ValueError(
                f"max_prompt_tokens ({max_prompt_tokens}) must be below the model's context length ({context_len})"
            )
        max_prompt_chars = config.max_prompt_chars or 16 * max_prompt_tokens
        self.limits = Limits(
            max_new_tokens=config.max_new_tokens_limit,
            max_prompt_tokens=max_prompt_tokens,
            max_prompt_chars=max_prompt_chars,
            max_n=config.max_n,
            context_length=context_len or (max_prompt_tokens + config.max_new_tokens_limit),
        )
        self.created = int(time.time())

    # -- auth --

    def check_auth(self, header: str | None) -> None:
        key = self.config.api_key
        if key is None:
            return
        if not header:
            raise APIError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    # -- GET --

    def model_card(self) -> dict:
        return {"id": self.config.model_id, "object": "model", "created": self.created, "owned_by": "ftcot-jax"}

    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def model(self, model_id: str) -> dict:
        if model_id != self.config.model_id:
            raise self._model_not_found(model_id)
        return self.model_card()

    def stats(self) -> dict:
        s = self.engine.stats
        return {
            "requests": s.requests,
            "rows": s.rows,
            "batches": s.batches,
            "max_batch_rows": s.max_batch_rows,
            "decode_seconds": round(s.decode_seconds, 4),
            "http_4xx": s.http_4xx,
            "http_5xx": s.http_5xx,
            "queued": self.engine._queue.qsize(),
            "max_batch": self.engine.max_batch,
            "limits": self.limits.__dict__,
        }

    # -- POST --

    def _model_not_found(self, model_id: str) -> APIError:
        return APIError(
            404, f"The model `{model_id}` does not exist or you do not have access to it.", code="model_not_found"
        )

    def _check_model(self, body: dict) -> None:
        if "model" not in body or body["model"] is None:
            raise APIError(400, "you must provide a model parameter", param="model")
        if not isinstance(body["model"], str):
            raise APIError(
                400,
                f"Invalid type for 'model': expected a string, but got {type(body['model']).__name__}.",
                param="model",
            )
        if body["model"] != self.config.model_id:
            raise self._model_not_found(body["model"])

    def parse(self, path: str, body: dict) -> Request:
        self._check_model(body)
        if path == "/v1/completions":
            req = parse_completion(body, self.limits)
        else:
            req = parse_chat(body, self.limits, self.engine.render_chat)
        return req

    def prepare(self, req: Request) -> tuple[list[int], int]:
        """Token counts per prompt and the resolved max_tokens; refuses what does not fit the context."""
        counts = []
        for i, p in enumerate(req.prompts):
            param = "messages" if req.kind == "chat" else ("prompt" if len(req.prompts) == 1 else f"prompt[{i}]")
            k = self.engine.count_tokens(p)
            if k > self.limits.max_prompt_tokens:
                raise APIError(
                    400,
                    f"Invalid '{param}': {k} tokens is more than this server's limit of "
                    f"{self.limits.max_prompt_tokens} prompt tokens.",
                    param=param,
                    code="context_length_exceeded",
                )
            counts.append(k)
        longest = max(counts)
        room = self.limits.context_length - longest
        max_tokens = req.max_tokens
        if max_tokens is None:  # chat without max_tokens: as much as the limit and the context allow
            max_tokens = max(1, min(self.limits.max_new_tokens, room))
        if longest + max_tokens > self.limits.context_length:
            raise APIError(
                400,
                f"This model's maximum context length is {self.limits.context_length} tokens. "
                f"However, you requested {longest + max_tokens} tokens ({longest} in the prompt, "
                f"{max_tokens} in the completion). Please reduce the prompt or the completion "
                "length.",
                param="max_tokens" if req.kind == "completion" else "messages",
                code="context_length_exceeded",
            )
        return counts, max_tokens

    def run(self, req: Request) -> tuple[list[RowResult], list[int]]:
        counts, max_tokens = self.prepare(req)
        params = Params(
            max_new_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p if req.temperature > 0 else 1.0,
            stop=req.stop,
            seed=req.seed if req.temperature > 0 else None,
        )
        rows = [p for p in req.prompts for _ in range(req.n)]
        future = self.engine.submit(rows, params)
        try:
            results = future.result(timeout=self.config.request_timeout_s)
        except FutureTimeout:
            future.cancel()
            raise APIError(
                504, "Decoding did not finish within the server's request timeout.", type="server_error", code="timeout"
            ) from None
        return results, counts

    def respond(self, req: Request, results: list[RowResult], counts: list[int]) -> dict:
        created = int(time.time())
        usage = {
            "prompt_tokens": sum(counts),
            "completion_tokens": sum(r.completion_tokens for r in results),
            "total_tokens": sum(counts) + sum(r.completion_tokens for r in results),
        }
        if req.kind == "completion":
            choices = [
                {"text": r.text, "index": i, "logprobs": None, "finish_reason": r.finish_reason}
                for i, r in enumerate(results)
            ]
            return {
                "id": f"cmpl-{uuid.uuid4().hex[:24]}",
                "object": "text_completion",
                "created": created,
                "model": self.config.model_id,
                "system_fingerprint": None,
                "choices": choices,
                "usage": usage,
            }
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text, "refusal": None},
                "logprobs": None,
                "finish_reason": r.finish_reason,
            }
            for i, r in enumerate(results)
        ]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": created,
            "model": self.config.model_id,
            "system_fingerprint": None,
            "choices": choices,
            "usage": usage,
        }

    def stream_events(self, req: Request, response: dict) -> list[dict]:
        """SSE chunks for a finished response: each choice's text arrives as one chunk (decoding is batched,
        not incremental), then its finish_reason, then usage when stream_options.include_usage is set."""
        base = {
            "id": response["id"],
            "created": response["created"],
            "model": response["model"],
            "system_fingerprint": None,
        }
        events = []
        for ch in response["choices"]:
            if req.kind == "completion":
                events.append(
                    {
                        **base,
                        "object": "text_completion",
                        "choices": [
                            {"text": ch["text"], "index": ch["index"], "logprobs": None, "finish_reason": None}
                        ],
                    }
                )
                events.append(
                    {
                        **base,
                        "object": "text_completion",
                        "choices": [
                            {"text": "", "index": ch["index"], "logprobs": None, "finish_reason": ch["finish_reason"]}
                        ],
                    }
                )
            else:
                obj = "chat.completion.chunk"
                events.append(
                    {
                        **base,
                        "object": obj,
                        "choices": [
                            {
                                "index": ch["index"],
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    }
                )
                events.append(
                    {
                        **base,
                        "object": obj,
                        "choices": [
                            {
                                "index": ch["index"],
                                "delta": {"content": ch["message"]["content"]},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    }
                )
                events.append(
                    {
                        **base,
                        "object": obj,
                        "choices": [
                            {"index": ch["index"], "delta": {}, "logprobs": None, "finish_reason": ch["finish_reason"]}
                        ],
                    }
                )
        if req.include_usage:
            for e in events:
                e["usage"] = None
            obj = "text_completion" if req.kind == "completion" else "chat.completion.chunk"
            events.append({**base, "object": obj, "choices": [], "usage": response["usage"]})
        return events
