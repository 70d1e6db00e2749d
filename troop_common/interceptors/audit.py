"""One audit line per call (unary or streaming): who, what, outcome, why, how long.

Sits inside the tracing interceptor (so the request id is known) and outside
auth and limits (so refusals are recorded with their reason). Refusals of
identity — bad signatures, replays, forged tickets or receipts, another
user's account — are security events. `peer_ip` is the client's address: the
peer's, or from a proxy the audit log trusts (the local Envoy), the right-most
`x-forwarded-for` entry, which that proxy wrote.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from troop_common import request_context
from troop_common.audit import AuditLog
from troop_common.errors import TroopError
from troop_common.interceptors.ratelimit import client_ip
from troop_common.interceptors.wrapping import Stream, Unary, WrappingInterceptor

_SECURITY_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _action(method: str) -> str:
    """'/troop.v1.CoordinatorService/SubmitReceipt' → 'SubmitReceipt'."""
    return method.rsplit("/", 1)[-1]


class AuditInterceptor(WrappingInterceptor):
    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    def _record(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        exc: BaseException | None,
        **extra: Any,
    ) -> None:
        info = request_context.current.get()
        if exc is None:
            outcome, reason, kind = "OK", "", ""
        elif isinstance(exc, TroopError):
            outcome, reason, kind = exc.code.name, exc.message, type(exc).__name__
        elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
            outcome, reason, kind = "CANCELLED", "the caller went away", ""
        else:
            outcome, reason, kind = "INTERNAL", "internal error", type(exc).__name__
        event = {
            "request_id": info.request_id if info else "",
            "peer_ip": client_ip(context, self._audit.trusted_proxies),
            "principal": info.principal if info else "",
            "method": method,
            "action": _action(method),
            "outcome": outcome,
            "reason": reason,
            "latency_ms": round(info.elapsed_ms(), 3) if info else None,
            **extra,
        }
        if kind:
            event["error"] = kind
        security = isinstance(exc, TroopError) and exc.code in _SECURITY_CODES
        self._audit.record(event, security=security)

    def unary(self, method: str, behaviour: Unary) -> Unary:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                result = await behaviour(request, context)
            except BaseException as exc:
                self._record(method, context, exc)
                raise
            self._record(method, context, None)
            return result

        return call

    def stream(self, method: str, behaviour: Stream) -> Stream:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            sent = 0
            try:
                async for message in behaviour(request, context):
                    sent += 1
                    yield message
            except BaseException as exc:
                self._record(method, context, exc, messages=sent)
                raise
            self._record(method, context, None, messages=sent)

        return call
