"""An engine that relays to an OpenAI-compatible server the donor already runs.

Ollama (`http://127.0.0.1:11434/v1`), vLLM, llama.cpp's server, LM Studio and any
other server of `POST /v1/chat/completions` with `stream: true` can back a worker:

    engine = OpenAIUpstreamEngine("http://127.0.0.1:11434/v1", served="llama3.2-3b",
                                  upstream_model="llama3.2:3b")

The worker keeps everything Troop does (tickets, limits, receipts, node proof); the
upstream only generates. Tokens are passed on as the upstream's SSE chunks arrive;
closing the stream early closes the HTTP response, which stops the upstream.

Output evidence: the relay asks for `logprobs: true` (`top_logprobs: 0`) and passes each
`choices[0].logprobs.content[]` entry on as a token of the chunk (its `bytes`, else the
UTF-8 of its `token`, and its `logprob`; no token id). llama.cpp's server
(llama-cpp-python 0.3.36) sends them with every streamed delta, one entry per token, with
`bytes: null` (so a token holding part of a multi-byte character arrives as text, not as
its bytes); vLLM and OpenAI send `bytes`. An upstream that sends none: the job has no
evidence, and the worker says so once in its log.

Upstream failures become Troop errors the client can act on: a request the upstream
refuses as malformed is INVALID_ARGUMENT, its rate limit RESOURCE_EXHAUSTED (with its
Retry-After), anything else about the upstream (down, wrong key, unknown model, 5xx)
UNAVAILABLE, never INTERNAL. The upstream's API key is sent only to the upstream and
never logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx

from troop_common.config import ConfigError
from troop_common.errors import (
    FieldViolation,
    InvalidArgument,
    RateLimited,
    TroopError,
    Unavailable,
)
from troop_common.evidence import TokenEvidence
from troop_worker.engine.types import FinishReason, GenerationChunk, GenerationRequest

log = logging.getLogger("troop.worker.engine")
CONNECT_TIMEOUT_S = 5.0


class OpenAIUpstreamEngine:
    """Serves `served` (the model id on the network) with `upstream_model` upstream."""

    device_name = "openai-upstream"
    # The chat API has no way to continue an assistant reply (a trailing assistant message
    # starts a new turn on most servers), so a resumed answer is never sent here.
    continues_answers = False

    def __init__(
        self,
        base_url: str,
        *,
        served: str,
        upstream_model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"the upstream URL must start with http:// or https://, not {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self.models = [served]
        self.upstream_model = upstream_model or served
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # Read timeout: the longest gap between two chunks (prompt processing included).
        timeout = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._warned_no_logprobs = False

    async def load(self) -> None:
        """Check that the upstream answers and serves the model; a clear error if not."""
        try:
            reply = await self._http.get("/models")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if reply.status_code != 200:
            raise _refusal(reply.status_code, _error_message(reply), reply.headers)
        served = [m.get("id") for m in _json(reply).get("data", []) if isinstance(m, dict)]
        if self.upstream_model not in served:
            raise Unavailable(
                f"the upstream at {self.base_url} does not serve model "
                f"{self.upstream_model!r}; it serves: {', '.join(map(str, served)) or 'nothing'}"
            )

    async def close(self) -> None:
        await self._http.aclose()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            # The chosen tokens' log-probabilities: the job's output evidence.
            "logprobs": True,
            "top_logprobs": 0,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        try:
            async with self._http.stream("POST", "/chat/completions", json=body) as reply:
                if reply.status_code != 200:
                    await reply.aread()
                    raise _refusal(reply.status_code, _error_message(reply), reply.headers)
                evidence = False
                async for chunk in _chunks(reply, request):
                    evidence = evidence or bool(chunk.tokens)
                    if chunk.finish_reason is not None and chunk.completion_tokens:
                        self._no_logprobs(evidence)
                    yield chunk
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    def _no_logprobs(self, evidence: bool) -> None:
        if not evidence and not self._warned_no_logprobs:
            self._warned_no_logprobs = True
            log.warning(
                "the upstream at %s sends no logprobs: this node's answers carry no output "
                "evidence (a verifier cannot check them)", self.base_url,
            )  # fmt: skip

    def _unreachable(self, exc: httpx.HTTPError) -> TroopError:
        reason = type(exc).__name__ if not str(exc) else str(exc)
        return Unavailable(f"the upstream at {self.base_url} failed: {reason}")


async def _chunks(
    reply: httpx.Response, request: GenerationRequest
) -> AsyncIterator[GenerationChunk]:
    """The upstream's SSE events as chunks; the last carries the finish reason and usage."""
    finish: FinishReason | None = None
    prompt_tokens = completion_tokens = 0
    counted_usage = False
    async for line in reply.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, `: keep-alive` comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            break
        event = _event(data)
        usage = event.get("usage")
        if isinstance(usage, dict):
            prompt_tokens = _count(usage.get("prompt_tokens"))
            completion_tokens = _count(usage.get("completion_tokens"))
            counted_usage = True
        choices = event.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            text = text if isinstance(text, str) else ""
            tokens = _tokens(choice.get("logprobs"))
            if (text or tokens) and not counted_usage:
                # One event ≈ one token until the upstream counts (or its logprobs do).
                completion_tokens += max(1, len(tokens))
            if choice.get("finish_reason"):
                finish = (
                    FinishReason.LENGTH
                    if choice["finish_reason"] == "length"
                    else FinishReason.STOP
                )
            if text or tokens:
                yield GenerationChunk(text, None, prompt_tokens, completion_tokens, tokens)
    if finish is None:
        # The upstream closed without saying why: the answer may be cut short.
        raise Unavailable("the upstream ended the stream without a finish reason")
    if not counted_usage:
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
    yield GenerationChunk("", finish, prompt_tokens, completion_tokens)


def _tokens(logprobs: object) -> tuple[TokenEvidence, ...]:
    """A choice's `logprobs.content` entries as tokens (none when it has none)."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    tokens = []
    for entry in content if isinstance(content, list) else []:
        if not isinstance(entry, dict):
            continue
        logprob = entry.get("logprob")
        if not isinstance(logprob, int | float) or isinstance(logprob, bool):
            continue
        raw = entry.get("bytes")
        if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
            data = bytes(raw)
        elif isinstance(entry.get("token"), str):
            data = entry["token"].encode()
        else:
            continue
        tokens.append(TokenEvidence(data, float(logprob)))
    return tuple(tokens)


def _event(data: str) -> dict[str, Any]:
    """One SSE `data:` payload; Unavailable for one that is not an event or is an error."""
    try:
        event = json.loads(data)
    except ValueError:
        raise Unavailable(f"the upstream sent an event that is not JSON: {data[:80]!r}") from None
    if not isinstance(event, dict):
        raise Unavailable(f"the upstream sent an event that is not an object: {data[:80]!r}")
    if "error" in event:
        error = event["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise Unavailable(f"upstream: {message or 'the upstream failed'}")
    return event


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _refusal(status: int, message: str, headers: httpx.Headers) -> TroopError:
    if status in (400, 422):
        return InvalidArgument([FieldViolation("request", f"the upstream refused it: {message}")])
    if status == 429:
        retry = headers.get("retry-after", "")
        after = float(retry) if retry.isdigit() else 1.0
        return RateLimited(f"the upstream is busy: {message}", after)
    return Unavailable(f"the upstream answered {status}: {message}")


def _json(reply: httpx.Response) -> dict[str, Any]:
    try:
        value = reply.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error_message(reply: httpx.Response) -> str:
    error = _json(reply).get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return reply.text[:200] or reply.reason_phrase


__all__ = ["OpenAIUpstreamEngine"]
