"""The OpenAI-upstream engine against a MOCK upstream (httpx's MockTransport).

A mock because no real server misbehaves on demand: these are the answers a broken or
odd upstream gives (events that are not JSON, error events, odd types, a stream that
stops without a finish reason, refusals with a status). The engine must turn each into
a Troop error the client can act on, never an INTERNAL. The well-behaved path runs
against a real upstream in tests/http/test_upstream_engine.py.
"""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest

from troop_common.config import ConfigError
from troop_common.errors import InvalidArgument, RateLimited, TroopError, Unavailable
from troop_worker.engine.openai_upstream import OpenAIUpstreamEngine
from troop_worker.engine.types import FinishReason, GenerationRequest, Message

REQUEST = GenerationRequest(messages=(Message("user", "hi there"),), max_tokens=8)


def sse(*events: object) -> bytes:
    return b"".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events
    )


def engine_answering(status: int, body: bytes, headers: dict[str, str] | None = None):
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body, headers=headers or {})

    engine = OpenAIUpstreamEngine(
        "http://upstream.test/v1", served="m", api_key="sk-secret",
        transport=httpx.MockTransport(answer),
    )  # fmt: skip
    return engine, seen


def delta(text: str | None = None, finish: str | None = None, **extra: object) -> dict:
    return {"choices": [{"delta": {"content": text}, "finish_reason": finish}], **extra}


async def collect(engine: OpenAIUpstreamEngine) -> list:
    try:
        return [chunk async for chunk in engine.stream(REQUEST)]
    finally:
        await engine.close()


async def test_mock_upstream_well_formed_stream_keeps_its_usage_and_sends_the_request() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 2}
    body = sse(delta("Hel"), delta("lo", "length"), {"choices": [], "usage": usage}, "[DONE]")
    engine, seen = engine_answering(200, body)
    chunks = await collect(engine)
    assert [c.text for c in chunks] == ["Hel", "lo", ""]
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (9, 2)
    sent = json.loads(seen[0].content)
    assert sent["stream"] is True and sent["max_tokens"] == 8 and sent["model"] == "m"
    assert seen[0].headers["authorization"] == "Bearer sk-secret"


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (sse("{not json"), "not JSON"),
        (sse([1, 2]), "not an object"),
        (sse({"error": {"message": "model overloaded"}}), "model overloaded"),
        (sse({"error": "boom"}), "boom"),
        (sse(delta("partial")), "without a finish reason"),
    ],
)
async def test_mock_upstream_broken_streams_are_unavailable(body: bytes, said: str) -> None:
    engine, _ = engine_answering(200, body)
    with pytest.raises(Unavailable, match=said):
        await collect(engine)


async def test_mock_upstream_odd_types_are_ignored_not_fatal() -> None:
    body = sse(
        {"choices": "nope"},
        {"choices": [7, {"delta": "x"}, {"delta": {"content": ["a", "b"]}}]},
        {"usage": {"prompt_tokens": "many"}},
        delta("ok", "stop"),
        "[DONE]",
    )
    engine, _ = engine_answering(200, body)
    chunks = await collect(engine)
    assert "".join(c.text for c in chunks) == "ok"
    assert chunks[-1].finish_reason is FinishReason.STOP


@pytest.mark.parametrize(
    ("status", "headers", "kind"),
    [
        (400, {}, InvalidArgument),
        (429, {"retry-after": "7"}, RateLimited),
        (401, {}, Unavailable),  # the node's key is wrong: not the user's fault
        (404, {}, Unavailable),
        (503, {}, Unavailable),
    ],
)
async def test_mock_upstream_refusals_map_to_troop_errors(
    status: int, headers: dict[str, str], kind: type[TroopError]
) -> None:
    body = json.dumps({"error": {"message": "no thanks"}}).encode()
    engine, _ = engine_answering(status, body, headers)
    with pytest.raises(kind, match="no thanks") as caught:
        await collect(engine)
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after_seconds == 7


def test_an_upstream_url_without_a_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="http:// or https://"):
        OpenAIUpstreamEngine("localhost:11434/v1", served="m")
