"""The OpenAI API on top of the engine: authentication, model cards, request -> decoding parameters, and the
response and stream-chunk bodies (`serve.responses`). Transport-free: serve/routes.py calls it.

A trained student (`trained`, a `ftcot_jax.trained.TrainedFormat`) answers chat requests the way it was
trained: the prompt is `trained.prompt(last user message)`, not a chat template, and every choice carries
`ftcot` (`trained.parse` of the reply: rationale and answer, and the prompt); its model card carries
`trained.card()`.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from ftcot_jax.config.serve import ServeConfig
from ftcot_jax.serve.engine import Delta, Engine, Params, RowResult
from ftcot_jax.serve.errors import APIError
from ftcot_jax.serve.http_stats import HTTPStats
from ftcot_jax.serve.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessage,
    Completion,
    CompletionChoice,
    FtcotAnswer,
    ModelCard,
    ModelList,
    Usage,
)
from ftcot_jax.serve.schema import Limits, Request, parse_chat, parse_completion


@dataclass(frozen=True)
class Stream:
    """One streamed response: the id and creation time its chunks share."""

    req: Request
    id: str
    created: int


class App:
    """One served model's API; `context_len` is the model's position limit (None: no limit, e.g. T5)."""

    def __init__(self, engine: Engine, config: ServeConfig, context_len: int | None, trained=None):
        self.engine, self.config, self.trained = engine, config, trained
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
        self.http = HTTPStats()  # the HTTP layer's counters (routes.Guard, serve.protocol)

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

    def model_card(self) -> ModelCard:
        card = None if self.trained is None else self.trained.card()
        return ModelCard(id=self.config.model_id, created=self.created, ftcot=card)

    def models(self) -> dict:
        return ModelList(data=[self.model_card()]).model_dump()

    def model(self, model_id: str) -> dict:
        if model_id != self.config.model_id:
            raise APIError(
                404, f"The model `{model_id}` does not exist or you do not have access to it.", code="model_not_found"
            )
        return self.model_card().model_dump()

    def stats(self) -> dict:
        s = self.engine.stats
        return {
            "requests": s.requests,
            "rows": s.rows,
            "batches": s.batches,
            "max_batch_rows": s.max_batch_rows,
            "decode_seconds": round(s.decode_seconds, 4),
            **self.http.as_dict(),
            "queued": self.engine._queue.qsize(),
            "max_batch": self.engine.max_batch,
            "limits": self.limits.__dict__,
        }

    # -- POST --

    def parse(self, kind: str, body: dict) -> Request:
        """kind "completion" | "chat": the body -> a `Request` (400/404 APIError when it is not valid)."""
        if kind == "completion":
            return parse_completion(body, self.limits, self.config.model_id)
        render = self.engine.render_chat if self.trained is None else self._student_prompt
        return parse_chat(body, self.limits, self.config.model_id, render)

    def _student_prompt(self, messages: list[dict]) -> str:
        questions = [m["content"] for m in messages if m["role"] == "user"]
        if not questions:
            raise APIError(
                400,
                "Invalid 'messages': a trained student answers the last user message, and there is none.",
                param="messages",
            )
        return self.trained.prompt(questions[-1])

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
            if self.trained is not None:  # a trained student: its training evaluation's budget
                max_tokens = min(max_tokens, self.trained.max_new_tokens)
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

    def submit(self, req: Request, on_delta: Callable[[Delta], None] | None = None) -> tuple[Future, list[int]]:
        """Queue the request's rows (n per prompt, prompt-major: row k is choice k). Returns the engine's
        future and the prompts' token counts. 503 when the queue is full."""
        counts, max_tokens = self.prepare(req)
        temperature = req.temperature
        if temperature is None:  # OpenAI's default samples (1.0); a trained student answers as it was evaluated
            temperature = 0.0 if self.trained is not None else 1.0
        params = Params(
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=req.top_p if temperature > 0 else 1.0,
            stop=req.stop,
            seed=req.seed if temperature > 0 else None,
        )
        rows = [p for p in req.prompts for _ in range(req.n)]
        return self.engine.submit(rows, params, on_delta), counts

    def timeout_error(self) -> APIError:
        return APIError(
            504, "Decoding did not finish within the server's request timeout.", type="server_error", code="timeout"
        )

    # -- responses --

    def _usage(self, results: list[RowResult], counts: list[int]) -> Usage:
        completion = sum(r.completion_tokens for r in results)
        return Usage(prompt_tokens=sum(counts), completion_tokens=completion, total_tokens=sum(counts) + completion)

    def _ftcot(self, req: Request, text: str) -> FtcotAnswer | None:
        if self.trained is None or req.kind != "chat":
            return None
        parsed = self.trained.parse(text)
        return FtcotAnswer(rationale=parsed.rationale, answer=parsed.answer, prompt=req.prompts[0])

    def respond(self, req: Request, results: list[RowResult], counts: list[int]) -> dict:
        created, usage, model = int(time.time()), self._usage(results, counts), self.config.model_id
        if req.kind == "completion":
            choices = [
                CompletionChoice(text=r.text, index=i, finish_reason=r.finish_reason) for i, r in enumerate(results)
            ]
            return Completion(
                id=f"cmpl-{uuid.uuid4().hex[:24]}", created=created, model=model, choices=choices, usage=usage
            ).model_dump()
        choices = [
            ChatChoice(
                index=i,
                message=ChatMessage(content=r.text),
                finish_reason=r.finish_reason,
                ftcot=self._ftcot(req, r.text),
            )
            for i, r in enumerate(results)
        ]
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=created, model=model, choices=choices, usage=usage
        ).model_dump()

    # -- stream chunks (server-sent events, in OpenAI's chunk format) --

    def open_stream(self, req: Request) -> Stream:
        prefix = "cmpl" if req.kind == "completion" else "chatcmpl"
        return Stream(req=req, id=f"{prefix}-{uuid.uuid4().hex[:24]}", created=int(time.time()))

    def _chunk(self, s: Stream, choices: list, usage: Usage | None = None) -> dict:
        cls = Completion if s.req.kind == "completion" else ChatCompletionChunk
        chunk = cls(id=s.id, created=s.created, model=self.config.model_id, choices=choices, usage=usage)
        # usage: null on every chunk, and the totals on a last one without choices, when the client asked
        return chunk.model_dump(exclude=None if s.req.include_usage else {"usage"})

    def first_chunks(self, s: Stream) -> list[dict]:
        """Chat: each choice's assistant role, before any text (as OpenAI starts a stream)."""
        if s.req.kind == "completion":
            return []
        n = len(s.req.prompts) * s.req.n
        return [
            self._chunk(s, [ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))]) for i in range(n)
        ]

    def delta_chunks(self, s: Stream, d: Delta) -> list[dict]:
        """A row's new text, and its finish_reason (and a trained student's `ftcot`) once it is done."""
        chunks = []
        if s.req.kind == "completion":
            if d.text:
                chunks.append(self._chunk(s, [CompletionChoice(text=d.text, index=d.row, finish_reason=None)]))
            if d.result is not None:
                chunks.append(
                    self._chunk(s, [CompletionChoice(text="", index=d.row, finish_reason=d.result.finish_reason)])
                )
            return chunks
        if d.text:
            chunks.append(self._chunk(s, [ChatChunkChoice(index=d.row, delta=ChatDelta(content=d.text))]))
        if d.result is not None:
            last = ChatChunkChoice(
                index=d.row,
                delta=ChatDelta(),
                finish_reason=d.result.finish_reason,
                ftcot=self._ftcot(s.req, d.result.text),
            )
            chunks.append(self._chunk(s, [last]))
        return chunks

    def usage_chunks(self, s: Stream, results: list[RowResult], counts: list[int]) -> list[dict]:
        return [self._chunk(s, [], self._usage(results, counts))] if s.req.include_usage else []
