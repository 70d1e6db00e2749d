"""The OpenAI-shaped gRPC service the client sidecar runs behind its Envoy.

Each call: check the local API key (when keys are configured), validate the
body, then let `TroopClient.chat` authorize with the coordinator and stream
from the worker. A pump task reads the worker stream into a queue so the
response can send SSE keep-alive comments while nothing arrives, without
ever cancelling the read. If the HTTP client goes away, gRPC cancels this
handler, and closing the pump cancels the worker call (the worker then
settles for what it generated).

The response headers carry `x-troop-overhead-ms`: the protocol's time before the first
token, the sidecar's share (its time to the first chunk, less the wait on the worker's
stream: Authorize, signing, OpenAI parsing, SSE framing) plus the worker's own
(docs/protocol.md). A stream whose first bytes were a keep-alive has none: the
headers had left before it was known.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection

import grpc
from google.api import httpbody_pb2

from troop_client.chat import ChatChunk, Usage
from troop_client.openai.errors import OpenAIErrorResponse, openai_error
from troop_client.openai.requests import OpenAIRequest, chat_request, completion_request
from troop_client.openai.responses import (
    DONE,
    JSON,
    KEEPALIVE,
    SSE,
    ResponseShape,
    error_event,
    model_list,
    model_object,
)
from troop_client.sdk import TroopClient
from troop_common.errors import AuthError, NotFound, TroopError, Unavailable
from troop_common.interceptors.wrapping import bearer_token
from troop_common.metrics import Metrics
from troop_common.proto import openai_pb2, openai_pb2_grpc
from troop_common.request_context import OVERHEAD, add_initial_metadata, current, format_ms

log = logging.getLogger("troop.client.openai")

DEFAULT_KEEPALIVE_S = 3.0
_END = object()


class _Pump:
    """Reads a chunk stream in its own task; `next(timeout)` never disturbs the read."""

    def __init__(self, chunks: AsyncIterator[ChatChunk]) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=64)
        self._task = asyncio.create_task(self._run(chunks))

    async def _run(self, chunks: AsyncIterator[ChatChunk]) -> None:
        try:
            async for chunk in chunks:
                await self._queue.put(chunk)
            await self._queue.put(_END)
        except Exception as exc:
            await self._queue.put(exc)

    async def next(self, timeout_s: float | None) -> ChatChunk | None:
        """The next chunk; None at the end; raises what the stream raised, or TimeoutError."""
        item = await asyncio.wait_for(self._queue.get(), timeout_s)
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, ChatChunk)
        return item

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _announce_overhead(chunk: ChatChunk) -> None:
    """Put the protocol's total time before `chunk` (the first) in the response headers."""
    info = current.get()
    if info is None or chunk.overhead is None:
        return
    ours = info.elapsed_ms() - chunk.overhead.waited_ms
    add_initial_metadata(OVERHEAD, format_ms(ours + (chunk.overhead.worker_ms or 0.0)))


class _JobFailed(Unavailable):
    """The worker reported a failure, or ended the stream without a last chunk: the node
    (or the upstream it relays to) could not finish the job, not an internal error (503)."""


class OpenAIServicer(openai_pb2_grpc.OpenAIServiceServicer):
    def __init__(
        self,
        troop: TroopClient,
        *,
        api_keys: Collection[str] = (),
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        metrics: Metrics | None = None,
    ) -> None:
        self.troop = troop
        self.api_keys = [k for k in api_keys if k]
        self.keepalive_s = keepalive_s
        self.metrics = metrics or Metrics("sidecar")
        self._requests = self.metrics.counter(
            "troop_openai_requests", "OpenAI requests by route and HTTP status", "route", "status"
        )

    def _first_token(self, model: str) -> None:
        info = current.get()
        if info is not None:
            seconds = time.perf_counter() - info.started
            self.metrics.first_token_seconds.labels(model).observe(seconds)

    def _finished(self, model: str, usage: Usage) -> None:
        self.metrics.tokens.labels(model).inc(usage.completion_tokens)

    def _check_key(self, context: grpc.aio.ServicerContext) -> None:
        if not self.api_keys:
            return
        key = bearer_token(context)
        if key is None or not any(
            hmac.compare_digest(key.encode(), k.encode()) for k in self.api_keys
        ):
            raise AuthError(
                "Incorrect API key provided: this Troop sidecar accepts only the keys in "
                "TROOP_CLIENT_API_KEYS (send `Authorization: Bearer <key>`)."
            )

    def CreateChatCompletion(
        self, request: openai_pb2.CreateChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        return self._create(context, lambda: chat_request(request, self.troop.settings.model))

    def CreateCompletion(
        self, request: openai_pb2.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        parse = lambda: completion_request(request, self.troop.settings.model)  # noqa: E731
        return self._create(context, parse, chat=False)

    async def _create(
        self,
        context: grpc.aio.ServicerContext,
        parse: Callable[[], OpenAIRequest],
        *,
        chat: bool = True,
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """Check the key and parse the request (an OpenAI error if either fails), then run."""
        route, status = "/v1/chat/completions" if chat else "/v1/completions", 200
        try:
            try:
                self._check_key(context)
                job = parse()
            except TroopError as exc:
                raise OpenAIErrorResponse(exc) from exc
            shape = ResponseShape(job.model, chat=chat, include_usage=job.include_usage)
            async for body in self._respond(job, shape):
                yield body
        except OpenAIErrorResponse as exc:
            status = exc.openai.status
            raise
        except Exception:
            status = 500
            raise
        except BaseException:  # the HTTP client went away
            status = 499
            raise
        finally:
            self._requests.labels(route, str(status)).inc()

    async def ListModels(
        self,
        request: openai_pb2.OpenAIServiceListModelsRequest,
        context: grpc.aio.ServicerContext,
    ) -> httpbody_pb2.HttpBody:
        try:
            self._check_key(context)
            models = await self.troop.models()
        except TroopError as exc:
            raise OpenAIErrorResponse(exc) from exc
        return httpbody_pb2.HttpBody(content_type=JSON, data=model_list(models))

    async def RetrieveModel(
        self, request: openai_pb2.RetrieveModelRequest, context: grpc.aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        try:
            self._check_key(context)
            served = {m.id: m for m in await self.troop.models()}
            if request.model not in served:
                raise NotFound(f"no live node serves model {request.model!r}")
        except TroopError as exc:
            raise OpenAIErrorResponse(exc) from exc
        body = model_object(served[request.model])
        return httpbody_pb2.HttpBody(content_type=JSON, data=body)

    async def _respond(
        self, job: OpenAIRequest, shape: ResponseShape
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        pump = _Pump(self.troop.chat(job.messages, model=job.model, options=job.options))
        try:
            if job.stream:
                async for data in self._stream(pump, job, shape):
                    yield httpbody_pb2.HttpBody(content_type=SSE, data=data)
            else:
                data = await self._whole(pump, job, shape)
                yield httpbody_pb2.HttpBody(content_type=JSON, data=data)
        finally:
            # Also on cancellation (the HTTP client went away): stops the worker call.
            await pump.close()

    async def _whole(self, pump: _Pump, job: OpenAIRequest, shape: ResponseShape) -> bytes:
        parts = [job.echo]
        try:
            while (chunk := await pump.next(None)) is not None:
                if len(parts) == 1:
                    _announce_overhead(chunk)
                    self._first_token(job.model)
                shape.set_job(chunk.job_id)
                parts.append(chunk.text)
                if chunk.finish_reason == "error":
                    raise _JobFailed("the job failed on the worker")
                if chunk.finish_reason:
                    self._finished(job.model, chunk.usage or Usage())
                    return shape.whole("".join(parts), chunk.finish_reason, chunk.usage or Usage())
            raise _JobFailed("the worker ended the stream before the answer was complete")
        except TroopError as exc:
            raise OpenAIErrorResponse(exc) from exc

    async def _stream(
        self, pump: _Pump, job: OpenAIRequest, shape: ResponseShape
    ) -> AsyncIterator[bytes]:
        started = False  # bytes sent: from here on, errors go into the stream
        announced = False
        finish, usage = None, Usage()
        try:
            while True:
                try:
                    chunk = await pump.next(self.keepalive_s)
                except TimeoutError:
                    started = True
                    yield KEEPALIVE
                    continue
                if chunk is None:
                    break
                if not announced:
                    if not started:  # the headers have not left yet
                        _announce_overhead(chunk)
                    shape.set_job(chunk.job_id)
                    self._first_token(job.model)
                    first = shape.first_chunk(job.echo)
                    announced = started = True
                    if first:
                        yield first
                if chunk.text:
                    yield shape.text_chunk(chunk.text)
                if chunk.finish_reason == "error":
                    raise _JobFailed("the job failed on the worker after it started")
                if chunk.finish_reason:
                    finish, usage = chunk.finish_reason, chunk.usage or Usage()
                    self._finished(job.model, usage)
                    break
            if finish is None:
                raise _JobFailed("the worker ended the stream before the answer was complete")
        except TroopError as exc:
            if not started:
                raise OpenAIErrorResponse(exc) from exc
            log.warning("stream %s failed after it started: %s", shape.id, exc.message)
            yield error_event(openai_error(exc))
            yield DONE
            return
        except Exception as exc:
            if not started:
                raise
            log.exception("stream %s failed after it started", shape.id)
            yield error_event(openai_error(exc))
            yield DONE
            return
        yield shape.finish_chunk(finish)
        if shape.include_usage:
            yield shape.usage_chunk(usage)
        yield DONE


__all__ = ["DEFAULT_KEEPALIVE_S", "OpenAIServicer"]
