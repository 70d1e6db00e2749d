"""Wrap a gRPC aio handler's behaviour, for unary and server-streaming methods alike.

Interceptor libraries mishandle async streams (RECIPES.md), so each Troop
interceptor is written against this: it supplies one async context function
that runs around the whole call, including every message of a stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

Around = Callable[[Any, grpc.aio.ServicerContext, Callable[[], Any]], Any]


def wrap_handler(
    handler: grpc.RpcMethodHandler | None,
    unary: Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]],
    stream: Callable[[Callable[..., AsyncIterator[Any]]], Callable[..., AsyncIterator[Any]]],
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


def method_name(details: grpc.HandlerCallDetails) -> str:
    return details.method or ""


EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def is_exempt(method: str) -> bool:
    """Health and reflection pass through every interceptor untouched."""
    return method.startswith(EXEMPT_PREFIXES)
