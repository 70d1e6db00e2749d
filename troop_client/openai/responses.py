"""OpenAI response objects and the SSE framing, built from Troop chunks.

Two shapes share the code: chat (`chat.completion[.chunk]`, `delta` /
`message`) and the legacy text completion (`text_completion`, `text`).
Every function returns the bytes one `google.api.HttpBody` carries.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from troop_client.chat import Usage
from troop_client.openai.errors import OpenAIError
from troop_client.results import ModelOffer

SSE = "text/event-stream"
JSON = "application/json"
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse(obj: object) -> bytes:
    return f"data: {_dumps(obj)}\n\n".encode()


def error_event(error: OpenAIError) -> bytes:
    """The in-stream form of an error that happened after the stream started."""
    return sse(error.to_dict())


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


@dataclass
class ResponseShape:
    """One response's identity (id, created, model) and its chat or text shape."""

    model: str
    chat: bool
    include_usage: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def set_job(self, job_id: str) -> None:
        if not self.id:
            self.id = ("chatcmpl-" if self.chat else "cmpl-") + (job_id or "troop")

    def _base(self, obj: str) -> dict[str, object]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    # Streaming ------------------------------------------------------------

    def _chunk(self, choice: dict[str, object]) -> dict[str, object]:
        chunk = self._base("chat.completion.chunk" if self.chat else "text_completion")
        chunk["system_fingerprint"] = None
        chunk["choices"] = [{"index": 0, **choice}]
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def first_chunk(self, echo: str = "") -> bytes:
        """Chat: the role announcement; text: the echoed prompt (or nothing)."""
        if self.chat:
            delta = {"role": "assistant", "content": ""}
            return sse(self._chunk({"delta": delta, "logprobs": None, "finish_reason": None}))
        return self.text_chunk(echo) if echo else b""

    def text_chunk(self, text: str) -> bytes:
        choice: dict[str, object]
        if self.chat:
            choice = {"delta": {"content": text}, "logprobs": None, "finish_reason": None}
        else:
            choice = {"text": text, "logprobs": None, "finish_reason": None}
        return sse(self._chunk(choice))

    def finish_chunk(self, finish_reason: str) -> bytes:
        choice: dict[str, object]
        if self.chat:
            choice = {"delta": {}, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"text": "", "logprobs": None, "finish_reason": finish_reason}
        return sse(self._chunk(choice))

    def usage_chunk(self, usage: Usage) -> bytes:
        """The extra last chunk `stream_options.include_usage` asks for: no choices."""
        chunk = self._base("chat.completion.chunk" if self.chat else "text_completion")
        chunk["system_fingerprint"] = None
        chunk["choices"] = []
        chunk["usage"] = usage_dict(usage)
        return sse(chunk)

    # Whole ----------------------------------------------------------------

    def whole(self, text: str, finish_reason: str, usage: Usage) -> bytes:
        obj = self._base("chat.completion" if self.chat else "text_completion")
        obj["system_fingerprint"] = None
        if self.chat:
            choice: dict[str, object] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj["choices"] = [choice]
        obj["usage"] = usage_dict(usage)
        return _dumps(obj).encode()


def _model(offer: ModelOffer) -> dict[str, object]:
    # `node_count` and `pricing` are Troop's own additions: how many live nodes serve
    # the model, and what a job costs (millicredits per 1,000 tokens; 1 credit = 1000).
    return {
        "id": offer.id, "object": "model", "created": 0, "owned_by": "troop",
        "node_count": offer.node_count,
        "pricing": {
            "prompt_millicredits_per_1k_tokens": offer.prompt_millicredits_per_1k,
            "completion_millicredits_per_1k_tokens": offer.completion_millicredits_per_1k,
            "parameters": offer.parameters,
        },
    }  # fmt: skip


def model_list(models: list[ModelOffer]) -> bytes:
    """`GET /v1/models`."""
    return _dumps({"object": "list", "data": [_model(m) for m in models]}).encode()


def model_object(offer: ModelOffer) -> bytes:
    """`GET /v1/models/{model}`."""
    return _dumps(_model(offer)).encode()


__all__ = [
    "DONE",
    "JSON",
    "KEEPALIVE",
    "SSE",
    "ResponseShape",
    "error_event",
    "model_list",
    "model_object",
    "sse",
    "usage_dict",
]
