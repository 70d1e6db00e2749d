"""Caller identity: an interceptor that checks the Ed25519 assertion on the calls that need one.

`authorization: Bearer <jwt>` is verified (signature by the subject's own key,
audience, expiry) and its `jti` recorded in a ReplaySet until it expires, so a
captured assertion works once. The subject (hex public key) is put in
`caller`, a ContextVar the servicer reads with `current_caller()`.
Anything wrong raises AssertionInvalid (UNAUTHENTICATED), mapped by the
outer ErrorInterceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextvars import ContextVar
from typing import Any

import grpc

from troop_common.assertions import COORDINATOR_AUDIENCE, verify_assertion
from troop_common.errors import AssertionInvalid
from troop_common.interceptors.wrapping import is_exempt, wrap_handler
from troop_common.proto import COORDINATOR_SERVICE
from troop_common.replay import ReplaySet
from troop_common.request_context import set_principal

caller: ContextVar[str | None] = ContextVar("troop_coordinator_caller", default=None)

# Users: spending and reading credits. Nodes: heartbeats and proofs.
IDENTIFIED_METHODS = frozenset(
    f"/{COORDINATOR_SERVICE}/{name}"
    for name in (
        "Join",
        "Authorize",
        "ReportUsage",
        "GetBalance",
        "ListTransactions",
        "Heartbeat",
        "GetChallenge",
        "VerifyProof",
    )
)


def current_caller() -> str:
    """The verified caller's hex public key; only inside an identified method."""
    subject = caller.get()
    if subject is None:
        raise AssertionInvalid("this call needs an identity assertion")
    return subject


def _bearer(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break
    raise AssertionInvalid("missing authorization: Bearer <assertion>")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        replays: ReplaySet,
        *,
        audience: str = COORDINATOR_AUDIENCE,
        methods: Collection[str] = IDENTIFIED_METHODS,
    ) -> None:
        self._replays = replays
        self._audience = audience
        self._methods = frozenset(methods)

    async def _authenticate(self, metadata: Any) -> str:
        assertion = verify_assertion(_bearer(metadata), self._audience)
        if not await self._replays.add(f"assertion:{assertion.jti}", assertion.expires_at):
            raise AssertionInvalid("assertion already used")
        set_principal(assertion.subject)
        return assertion.subject

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method or ""
        if is_exempt(method) or method not in self._methods:
            return handler
        metadata = details.invocation_metadata

        def unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = caller.set(await self._authenticate(metadata))
                try:
                    return await behaviour(request, context)
                finally:
                    caller.reset(token)

            return call

        def stream(
            behaviour: Callable[..., AsyncIterator[Any]],
        ) -> Callable[..., AsyncIterator[Any]]:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                # Each call runs in its own task (its own context copy): nothing to reset,
                # and resetting from a generator finalised elsewhere would fail.
                caller.set(await self._authenticate(metadata))
                async for message in behaviour(request, context):
                    yield message

            return call

        return wrap_handler(handler, unary, stream)
