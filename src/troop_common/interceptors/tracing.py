"""Request ids and server timing, on every call.

Accepts `x-request-id` from the caller (or makes one) and sends it back in the
initial metadata with the first response message, and `x-response-time` in
the trailers when the call ends. A call that fails before any message gets
both in its trailers from the error interceptor: its response stays
"trailers-only", which is what lets Envoy turn it into one HTTP status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from troop_common.interceptors.wrapping import is_exempt, wrap_handler
from troop_common.request_context import (
    REQUEST_ID,
    RESPONSE_TIME,
    RequestInfo,
    accept_request_id,
    current,
)


def _incoming_id(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == REQUEST_ID:
            return value.decode() if isinstance(value, bytes) else value
    return None


class TracingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method or ""
        if is_exempt(method):
            return handler
        request_id = accept_request_id(_incoming_id(details.invocation_metadata))

        def begin(context: grpc.aio.ServicerContext) -> RequestInfo:
            info = RequestInfo(request_id=request_id, method=method, peer=context.peer() or "")
            current.set(info)
            return info

        def unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                info = begin(context)
                result = await behaviour(request, context)
                await context.send_initial_metadata(
                    [(REQUEST_ID, request_id), *info.initial_metadata]
                )
                context.set_trailing_metadata(
                    [(REQUEST_ID, request_id), (RESPONSE_TIME, info.response_time())]
                )
                return result

            return call

        def stream(
            behaviour: Callable[..., AsyncIterator[Any]],
        ) -> Callable[..., AsyncIterator[Any]]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                info = begin(context)
                first = True
                async for message in behaviour(request, context):
                    if first:
                        await context.send_initial_metadata(
                            [(REQUEST_ID, request_id), *info.initial_metadata]
                        )
                        first = False
                    yield message
                context.set_trailing_metadata(
                    [(REQUEST_ID, request_id), (RESPONSE_TIME, info.response_time())]
                )

            return call

        return wrap_handler(handler, unary, stream)
