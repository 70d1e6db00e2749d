"""Chat domain types the SDK yields, converted from the wire at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from troop_common.proto import common_pb2, inference_pb2

_FINISH = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_ERROR: "error",
}


@dataclass(frozen=True)
class Message:
    """One chat message: role ("system", "user" or "assistant") and its text."""

    role: str
    content: str

    def to_pb(self) -> common_pb2.ChatMessage:
        return common_pb2.ChatMessage(role=self.role, content=self.content)


@dataclass(frozen=True)
class Usage:
    """Token counts of a job, as the worker's tokenizer counted them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ChatChunk:
    """A piece of the answer; the last one has finish_reason and usage."""

    job_id: str
    text: str
    finish_reason: str | None = None
    usage: Usage | None = None

    @classmethod
    def from_pb(cls, chunk: inference_pb2.ChatCompletionResponse) -> ChatChunk:
        reason = _FINISH.get(chunk.finish_reason)
        usage = None
        if chunk.HasField("usage"):
            usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        return cls(job_id=chunk.id, text=chunk.delta, finish_reason=reason, usage=usage)


@dataclass(frozen=True)
class ChatOptions:
    """Sampling options; None leaves the worker's default (temperature 0 is greedy)."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Completion:
    """A whole answer, collected from its chunks."""

    job_id: str
    text: str
    finish_reason: str | None
    usage: Usage
    node_id: str = ""
