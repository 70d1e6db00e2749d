"""Chat domain types the SDK yields, converted from the wire at the edge."""

from __future__ import annotations

from collections.abc import Sequence
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
class Overhead:
    """What the protocol cost before the first chunk, in milliseconds (docs/protocol.md).

    `worker_ms`: the worker's own (its `x-troop-overhead-ms`: ticket, presentation,
    single use, node proof, gRPC), None when it sent none. `client_ms`: this client's
    own: from the call to the first chunk, less `waited_ms`, the time from opening the
    worker's stream to its first chunk (the worker, its engine and the wire): Authorize
    at the coordinator, signing, checking the node proof, a failed node before this one.
    """

    client_ms: float
    waited_ms: float
    worker_ms: float | None = None

    @property
    def total_ms(self) -> float:
        """Everything before the first chunk that was not the engine's (nor the wire's)."""
        return self.client_ms + (self.worker_ms or 0.0)


@dataclass(frozen=True)
class ChatChunk:
    """A piece of the answer; the last one has finish_reason and usage; the first one
    has `overhead`."""

    job_id: str
    text: str
    finish_reason: str | None = None
    usage: Usage | None = None
    overhead: Overhead | None = None
    # The last chunk's output evidence (serialized OutputEvidence) and the node's
    # signature of it (troop_common.evidence); empty elsewhere, or from a node without.
    evidence: bytes = field(default=b"", repr=False)
    evidence_signature: bytes = field(default=b"", repr=False)

    @classmethod
    def from_pb(cls, chunk: inference_pb2.ChatCompletionResponse) -> ChatChunk:
        reason = _FINISH.get(chunk.finish_reason)
        usage = None
        if chunk.HasField("usage"):
            usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        return cls(
            job_id=chunk.id, text=chunk.delta, finish_reason=reason, usage=usage,
            evidence=chunk.evidence, evidence_signature=chunk.evidence_signature,
        )  # fmt: skip


# The default completion bound when a request names none (the coordinator's too).
DEFAULT_MAX_TOKENS = 256
# A chat template's tokens around each message, and around the whole conversation
# (role markers, a default system prompt): generous, since the unused part returns.
MESSAGE_OVERHEAD_TOKENS = 8
PROMPT_OVERHEAD_TOKENS = 64


def prompt_token_bound(messages: Sequence[Message]) -> int:
    """Prompt tokens these messages can take at most, without a tokenizer: a byte-level
    tokenizer makes no more tokens than UTF-8 bytes, plus the template's own."""
    return PROMPT_OVERHEAD_TOKENS + sum(
        len(m.content.encode()) + MESSAGE_OVERHEAD_TOKENS for m in messages
    )


def vouched_tokens(
    received_bytes: int, shown: int | None, finish_reason: str | None, stop: Sequence[str]
) -> int:
    """The completion tokens a client can vouch it received (its countersignature).

    The worker's own count when it showed one, but never more than a byte-level
    tokenizer can have made of the bytes received: a token is at least one byte, the
    end-of-sequence token none, and a stop sequence's tokens are not sent."""
    bound = received_bytes + 1
    if finish_reason == "stop" and stop:
        bound += max(len(s.encode()) for s in stop)
    return bound if shown is None else min(shown, bound)


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
    overhead: Overhead | None = None  # what the protocol cost before the first chunk
