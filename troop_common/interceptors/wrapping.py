"""The base of every Troop server interceptor, for unary and server-streaming methods alike.

Interceptor libraries mishandle async streams (grpc-interceptor 0.15.4: awaiting
the handler breaks every stream, and timing around it sees a stream end before
its first message), so Troop's are
written against this: a `WrappingInterceptor` replaces a method's behaviour
with its own `unary(method, behaviour)` coroutine or `stream(method,
behaviour)` async generator, which run around the whole call — every
message of a stream included. A `CheckingInterceptor` only needs
`check(method, context)`, run before the call starts (auth, limits).
Health and reflection pass through all of them untouched. Each interceptor
wraps a method's handler once and reuses the wrapped one for every later call
(the handler under it is the same object each time), instead of building new
closures and handler objects per call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Stream = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]

EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def is_exempt(method: str) -> bool:
    """Health and reflection pass through every interceptor untouched."""
    return method.startswith(EXEMPT_PREFIXES)


def wrap_handler(
    handler: grpc.RpcMethodHandler | None,
    unary: Callable[[Unary], Unary],
    stream: Callable[[Stream], Stream],
) -> grpc.RpcMethodHandler | None:
    """The handler with its unary-unary or unary-stream behaviour replaced."""
    if handler is None:
        return None
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler  # client- and bidi-streaming: Troop defines none


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Subclasses implement `unary` and `stream`; `covers` picks the methods."""

    def covers(self, method: str) -> bool:
        return not is_exempt(method)

    def unary(self, method: str, behaviour: Unary) -> Unary:
        raise NotImplementedError

    def stream(self, method: str, behaviour: Stream) -> Stream:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method or ""
        if not self.covers(method):
            return handler
        return self._wrapped(method, handler, self._wrap)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler | None:
        return wrap_handler(
            handler,
            lambda behaviour: self.unary(method, behaviour),
            lambda behaviour: self.stream(method, behaviour),
        )

    def _wrapped(
        self,
        method: str,
        handler: grpc.RpcMethodHandler | None,
        wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler | None],
    ) -> grpc.RpcMethodHandler | None:
        """`wrap(method, handler)`, made once per method and handler, then reused."""
        if handler is None:
            return None  # no such method: nothing to remember
        cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler | None]]
        cache = self.__dict__.setdefault("_handlers", {})
        known = cache.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = wrap(method, handler)
        cache[method] = (handler, wrapped)
        return wrapped


class CheckingInterceptor(WrappingInterceptor):
    """Runs `check` before the call (before any message of a stream); it raises to refuse."""

    async def check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        raise NotImplementedError

    def unary(self, method: str, behaviour: Unary) -> Unary:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self.check(method, context)
            return await behaviour(request, context)

        return call

    def stream(self, method: str, behaviour: Stream) -> Stream:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self.check(method, context)
            async for message in behaviour(request, context):
                yield message

        return call


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """The first value of an incoming metadata key, as text."""
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return None


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The token of `authorization: Bearer <token>`; None if absent or of another scheme."""
    header = metadata_value(context, "authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
