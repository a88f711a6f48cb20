"""What `ftcot serve` sends back, as pydantic models of OpenAI's shapes: completions and chat completions (whole
and as stream chunks), model cards, usage, errors. Fields we never fill (logprobs, refusal,
system_fingerprint) are sent as null, as OpenAI does; our own additions (`ftcot`) only when set.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


def _unset(value) -> bool:
    return value is None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ftcot-jax"
    ftcot: dict[str, Any] | None = Field(None, exclude_if=_unset)  # a trained student's TrainedFormat.card()


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FtcotAnswer(BaseModel):
    """A trained student's reply read the way its task reads one (TrainedFormat.parse), and its prompt."""

    rationale: str | None
    answer: str | None
    prompt: str


class _Reply(BaseModel):
    """The envelope every completion, chat completion and stream chunk shares."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: None = None


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: str | None


class Completion(_Reply):
    """A text completion, and (object "text_completion" too) each of its stream chunks."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: None = None
    finish_reason: str
    ftcot: FtcotAnswer | None = Field(None, exclude_if=_unset)


class ChatCompletion(_Reply):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = Field(None, exclude_if=_unset)
    content: str | None = Field(None, exclude_if=_unset)


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: str | None = None
    ftcot: FtcotAnswer | None = Field(None, exclude_if=_unset)  # on a trained student's last chunk


class ChatCompletionChunk(_Reply):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
