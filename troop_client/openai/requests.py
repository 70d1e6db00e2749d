"""OpenAI request bodies (as the transcoder parsed them) to Troop domain requests.

Validation happens here, before any credit is reserved: a bad request is an
`InvalidArgument` whose field violation names the OpenAI parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import struct_pb2

from troop_client.chat import ChatOptions, Message
from troop_common.errors import FieldViolation, InvalidArgument
from troop_common.proto import openai_pb2

MAX_STOP = 4
# The coordinator's bound (troop_coordinator.pricing.MAX_COMPLETION_TOKENS): a larger
# max_tokens is refused here, before Authorize reserves anything for it.
MAX_COMPLETION_TOKENS = 32768
# Content is a string or a list of parts, a part a string or {"type": "text", "text": ...}:
# nothing an accepted content holds is deeper than this (list → part → text).
MAX_CONTENT_DEPTH = 3
# OpenAI's default for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class OpenAIRequest:
    """What the sidecar runs for one OpenAI call."""

    model: str
    messages: list[Message]
    options: ChatOptions
    stream: bool
    include_usage: bool
    echo: str = ""


def _bad(param: str, description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(param, description)])


def _depth_exceeds(value: struct_pb2.Value, bound: int) -> bool:
    """Whether `value` nests deeper than `bound` levels (iterative: no recursion to exhaust)."""
    pending = [(value, 1)]
    while pending:
        current, depth = pending.pop()
        if depth > bound:
            return True
        kind = current.WhichOneof("kind")
        if kind == "list_value":
            pending.extend((v, depth + 1) for v in current.list_value.values)
        elif kind == "struct_value":
            pending.extend((v, depth + 1) for v in current.struct_value.fields.values())
    return False


def _part(part: struct_pb2.Value, param: str) -> str:
    """One content part: a string or {"type": "text", "text": "..."}."""
    if part.WhichOneof("kind") == "string_value":
        return part.string_value
    fields = part.struct_value.fields if part.HasField("struct_value") else {}
    if "type" not in fields or fields["type"].string_value != "text":
        raise _bad(param, "only text content parts are supported")
    if "text" not in fields:
        return ""
    if fields["text"].WhichOneof("kind") != "string_value":
        raise _bad(f"{param}.text", "must be a string")
    return fields["text"].string_value


def _text(value: struct_pb2.Value, param: str) -> str:
    """A message's content: a string, a flat list of text parts, or null."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return ""
    if kind == "string_value":
        return value.string_value
    if _depth_exceeds(value, MAX_CONTENT_DEPTH):
        raise _bad(param, "must be a string or a flat list of text parts (nested too deep)")
    if kind == "list_value":
        values = value.list_value.values
        return "".join(_part(part, f"{param}[{index}]") for index, part in enumerate(values))
    raise _bad(param, "must be a string or a list of content parts")


def _stop(value: struct_pb2.Value) -> list[str]:
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return []
    if kind == "string_value":
        stops = [value.string_value]
    elif kind == "list_value":
        if any(v.WhichOneof("kind") != "string_value" for v in value.list_value.values):
            raise _bad("stop", "must be a string or a list of strings")
        stops = [v.string_value for v in value.list_value.values]
    else:
        raise _bad("stop", "must be a string or a list of strings")
    stops = [s for s in stops if s]
    if len(stops) > MAX_STOP:
        raise _bad("stop", f"at most {MAX_STOP} stop sequences")
    return stops


def _common(
    request: openai_pb2.CreateChatCompletionRequest | openai_pb2.CreateCompletionRequest,
    max_tokens: int | None,
    max_tokens_param: str = "max_tokens",
) -> ChatOptions:
    if request.HasField("n") and request.n != 1:
        raise _bad("n", "only n=1 is supported")
    temperature = request.temperature if request.HasField("temperature") else None
    if temperature is not None and not 0 <= temperature <= 2:
        raise _bad("temperature", "must be between 0 and 2")
    top_p = request.top_p if request.HasField("top_p") else None
    if top_p is not None and not 0 < top_p <= 1:
        raise _bad("top_p", "must be in (0, 1]")
    if max_tokens is not None and not 1 <= max_tokens <= MAX_COMPLETION_TOKENS:
        raise _bad(max_tokens_param, f"must be between 1 and {MAX_COMPLETION_TOKENS}")
    seed = request.seed if request.HasField("seed") else None
    if seed is not None and seed < 0:
        raise _bad("seed", "must not be negative")
    return ChatOptions(
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop=_stop(request.stop),
        seed=seed,
    )


def chat_request(
    request: openai_pb2.CreateChatCompletionRequest, default_model: str
) -> OpenAIRequest:
    """`POST /v1/chat/completions` → an OpenAIRequest; InvalidArgument if malformed."""
    if not request.messages:
        raise _bad("messages", "at least one message is required")
    messages = []
    for index, message in enumerate(request.messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise _bad(
                f"messages[{index}].role",
                f"unsupported role {message.role!r} (system, developer, user or assistant)",
            )
        messages.append(Message(role, _text(message.content, f"messages[{index}].content")))
    max_tokens, param = None, "max_tokens"
    if request.HasField("max_completion_tokens"):
        max_tokens, param = request.max_completion_tokens, "max_completion_tokens"
    elif request.HasField("max_tokens"):
        max_tokens = request.max_tokens
    return OpenAIRequest(
        model=request.model or default_model,
        messages=messages,
        options=_common(request, max_tokens, param),
        stream=request.stream,
        include_usage=request.stream_options.include_usage,
    )


def completion_request(
    request: openai_pb2.CreateCompletionRequest, default_model: str
) -> OpenAIRequest:
    """`POST /v1/completions` → one user message to the chat model."""
    prompt = request.prompt
    kind = prompt.WhichOneof("kind")
    if kind == "string_value":
        text = prompt.string_value
    elif kind == "list_value" and len(prompt.list_value.values) == 1:
        text = _text(prompt.list_value.values[0], "prompt[0]")
    elif kind == "list_value":
        raise _bad("prompt", "only one prompt per request is supported")
    else:
        raise _bad("prompt", "must be a string")
    max_tokens = request.max_tokens if request.HasField("max_tokens") else None
    return OpenAIRequest(
        model=request.model or default_model,
        messages=[Message("user", text)],
        options=_common(
            request, COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        ),
        stream=request.stream,
        include_usage=request.stream_options.include_usage,
        echo=text if request.echo else "",
    )


__all__ = ["OpenAIRequest", "chat_request", "completion_request"]
