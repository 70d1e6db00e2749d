"""What every engine speaks: a domain request in, a stream of text chunks out.

The servicer converts the proto request with `GenerationRequest.from_pb` and
each chunk back with `GenerationChunk.to_pb`; engines never see protobuf.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from troop_common.errors import FieldViolation, InvalidArgument
from troop_common.evidence import TokenEvidence
from troop_common.proto import common_pb2, inference_pb2

DEFAULT_MAX_TOKENS = 256


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop sequence
    LENGTH = "length"  # max_tokens reached
    ERROR = "error"  # failed after it started

    def to_pb(self) -> common_pb2.FinishReason:
        return {
            FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
            FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
            FinishReason.ERROR: common_pb2.FINISH_REASON_ERROR,
        }[self]


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """One generation job, already validated (see `troop_worker.validation`)."""

    messages: tuple[Message, ...]
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = DEFAULT_MAX_TOKENS
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # The prompt tokens the ticket was reserved for: an engine that counts before it
    # works refuses a longer prompt (`check_prompt`) before any token.
    max_prompt_tokens: int | None = None
    # The answer so far, when resuming one another node started: the engine continues it
    # (it is prompt, not completion).
    continuation: str = ""

    def check_prompt(self, prompt_tokens: int) -> None:
        """InvalidArgument if the prompt is longer than the ticket allows."""
        if self.max_prompt_tokens is not None and prompt_tokens > self.max_prompt_tokens:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "messages",
                        f"{prompt_tokens} prompt tokens; the ticket was reserved for at most "
                        f"{self.max_prompt_tokens} (Authorize's max_prompt_tokens)",
                    )
                ]
            )

    @classmethod
    def from_pb(cls, request: inference_pb2.ChatCompletionRequest) -> GenerationRequest:
        return cls(
            messages=tuple(Message(m.role, m.content) for m in request.messages),
            temperature=request.temperature if request.HasField("temperature") else 1.0,
            top_p=request.top_p if request.HasField("top_p") else 1.0,
            max_tokens=request.max_tokens if request.HasField("max_tokens") else DEFAULT_MAX_TOKENS,
            stop=tuple(request.stop),
            seed=request.seed if request.HasField("seed") else None,
            continuation=request.continuation,
        )


@dataclass(frozen=True)
class GenerationChunk:
    """New text since the last chunk; the last chunk of a stream has a finish reason.

    Token counts are running totals, so a consumer that stops early still
    knows how much was generated. `tokens`: every token generated since the previous
    chunk (those whose text is still held back, or that a stop sequence cut, too), each
    with its log-probability under the model's raw next-token distribution: the output
    evidence the servicer signs (troop_common.evidence). Empty from an engine that
    cannot tell.
    """

    text: str
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    tokens: tuple[TokenEvidence, ...] = ()

    def to_pb(self, job_id: str) -> inference_pb2.ChatCompletionResponse:
        response = inference_pb2.ChatCompletionResponse(
            id=job_id, delta=self.text, completion_tokens=self.completion_tokens
        )
        if self.finish_reason is not None:
            response.finish_reason = self.finish_reason.to_pb()
            response.usage.CopyFrom(usage_pb(self.prompt_tokens, self.completion_tokens))
        return response


def usage_pb(prompt_tokens: int, completion_tokens: int) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


@runtime_checkable
class Engine(Protocol):
    """A text generator the worker serves.

    `load` runs once at start, `close` once at the end (it frees what `load` took).
    `stream` yields chunks as they are produced; closing the iterator early (the
    client went away) must stop the work.
    Errors raised before the first chunk reach the caller as a status
    (a `TroopError` keeps its code).
    """

    models: list[str]
    # Whether `stream` honours `GenerationRequest.continuation` (the servicer refuses a
    # continuation before the ticket is spent otherwise).
    continues_answers: bool

    async def load(self) -> None: ...

    async def close(self) -> None: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]: ...
