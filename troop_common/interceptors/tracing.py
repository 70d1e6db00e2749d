"""Request ids and server timing, on every call.

Accepts `x-request-id` from the caller (or makes one) and sends it back in the
initial metadata with the first response message, and `x-response-time` in
the trailers when the call ends. A call that fails before any message gets
both in its trailers from the error interceptor: its response stays
"trailers-only", which is what lets Envoy turn it into one HTTP status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from troop_common.interceptors.wrapping import Stream, Unary, WrappingInterceptor, metadata_value
from troop_common.request_context import (
    REQUEST_ID,
    RESPONSE_TIME,
    RequestInfo,
    accept_request_id,
    current,
)


class TracingInterceptor(WrappingInterceptor):
    def _begin(self, method: str, context: grpc.aio.ServicerContext) -> RequestInfo:
        info = RequestInfo(
            request_id=accept_request_id(metadata_value(context, REQUEST_ID)),
            method=method,
            peer=context.peer() or "",
        )
        current.set(info)
        return info

    @staticmethod
    async def _send_headers(context: grpc.aio.ServicerContext, info: RequestInfo) -> None:
        await context.send_initial_metadata([(REQUEST_ID, info.request_id), *info.initial_metadata])

    @staticmethod
    def _set_trailers(context: grpc.aio.ServicerContext, info: RequestInfo) -> None:
        context.set_trailing_metadata(
            [(REQUEST_ID, info.request_id), (RESPONSE_TIME, info.response_time())]
        )

    def unary(self, method: str, behaviour: Unary) -> Unary:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            info = self._begin(method, context)
            result = await behaviour(request, context)
            await self._send_headers(context, info)
            self._set_trailers(context, info)
            return result

        return call

    def stream(self, method: str, behaviour: Stream) -> Stream:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            info = self._begin(method, context)
            first = True
            async for message in behaviour(request, context):
                if first:
                    # Headers go with the first message, never before: a call that fails
                    # first stays trailers-only (one HTTP status through Envoy).
                    await self._send_headers(context, info)
                    first = False
                yield message
            self._set_trailers(context, info)

        return call
