"""The one place a server turns exceptions into gRPC status.

A TroopError becomes its code with rich details: first its `google.rpc.ErrorInfo`
(domain "troop.network", the class's reason, its fields as metadata), then the
class's own (BadRequest, RetryInfo ...); `from_rpc_error` rebuilds the exact class
from them. Anything else becomes INTERNAL with a generic message and reason
INTERNAL (the traceback goes to the log, never to the caller). Must be the
outermost interceptor so every other one is covered.

It also parses each request: grpc calls the method's deserializer before any
interceptor runs, and reports a failure there as UNKNOWN with the exception's
class in the message. Here the deserializer is wrapped so bytes that are not the
method's message (truncated, nested too deep, invalid UTF-8 ...) reach the call
as `Unparsable`, which is refused with INVALID_ARGUMENT before anything else runs
(dressed by `malformed`, e.g. as the sidecar's OpenAI error).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from troop_common import request_context
from troop_common.errors import FieldViolation, InvalidArgument, TroopError, to_status
from troop_common.interceptors.wrapping import Stream, Unary, WrappingInterceptor

log = logging.getLogger("troop.errors")


def _trace_trailers() -> tuple[tuple[str, str], ...]:
    info = request_context.current.get()
    if info is None:
        return ()
    return (
        (request_context.REQUEST_ID, info.request_id),
        (request_context.RESPONSE_TIME, info.response_time()),
    )


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    info = request_context.current.get()
    if isinstance(exc, TroopError):
        status = to_status(exc)
        if info is not None:
            info.reason = exc.message
        await context.abort(
            status.code, status.details, status.trailing_metadata + _trace_trailers()
        )
    log.error("unhandled error in %s", method, exc_info=exc)
    if info is not None:
        info.reason = "internal error"
    status = to_status(TroopError("internal error"))
    await context.abort(status.code, status.details, status.trailing_metadata + _trace_trailers())


class Unparsable:
    """What a request that is not its method's protobuf message deserializes to."""


UNPARSABLE = Unparsable()


def _not_protobuf() -> InvalidArgument:
    return InvalidArgument(
        [FieldViolation("request", "not a valid protobuf message of this method's request type")]
    )


def _parse_safely(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, RecursionError ...: all mean "not this message"
            return UNPARSABLE

    return parse


def _with_safe_parsing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    parse = handler.request_deserializer
    if parse is None:
        return handler
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            handler.unary_unary,
            request_deserializer=_parse_safely(parse),
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            handler.unary_stream,
            request_deserializer=_parse_safely(parse),
            response_serializer=handler.response_serializer,
        )
    return handler


class ErrorInterceptor(WrappingInterceptor):
    def __init__(self, malformed: Callable[[InvalidArgument], TroopError] | None = None) -> None:
        """`malformed` presents a request that does not parse (default: as it is)."""
        self._malformed = malformed or (lambda error: error)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await super().intercept_service(continuation, details)
        method = details.method or ""
        if handler is None or not self.covers(method):
            return handler
        return self._wrapped("parse " + method, handler, lambda _, h: _with_safe_parsing(h))

    def unary(self, method: str, behaviour: Unary) -> Unary:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request is UNPARSABLE:
                await _abort(context, self._malformed(_not_protobuf()), method)
            try:
                return await behaviour(request, context)
            except Exception as exc:
                if _is_abort(exc):
                    raise
                await _abort(context, exc, method)

        return call

    def stream(self, method: str, behaviour: Stream) -> Stream:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if request is UNPARSABLE:
                await _abort(context, self._malformed(_not_protobuf()), method)
            try:
                async for message in behaviour(request, context):
                    yield message
            except Exception as exc:
                if _is_abort(exc):
                    raise
                await _abort(context, exc, method)

        return call


def _is_abort(exc: BaseException) -> bool:
    # context.abort raises grpc.aio.AbortError (an Exception subclass in grpc's
    # private module); let it through untouched.
    return type(exc).__name__ == "AbortError"
