"""The one place a server turns exceptions into gRPC status.

A TroopError becomes its code with rich details; anything else becomes
INTERNAL with a generic message (the traceback goes to the log, never to the
caller). Must be the outermost interceptor so every other one is covered.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from troop_common import request_context
from troop_common.errors import TroopError, to_status
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
    await context.abort(grpc.StatusCode.INTERNAL, "internal error", _trace_trailers())


class ErrorInterceptor(WrappingInterceptor):
    def unary(self, method: str, behaviour: Unary) -> Unary:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behaviour(request, context)
            except Exception as exc:
                if _is_abort(exc):
                    raise
                await _abort(context, exc, method)

        return call

    def stream(self, method: str, behaviour: Stream) -> Stream:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
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
