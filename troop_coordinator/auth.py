"""Caller identity: an interceptor that checks the Ed25519 assertion on the calls that need one.

`authorization: Bearer <jwt>` is verified (`troop_common.assertions`: a subject
in its one lowercase spelling and not of small order, signed by its own key;
audience; `iat` within the clock skew; bounded lifetime and `jti`) and its `jti`
recorded in a ReplaySet until the assertion stops being accepted (`exp` plus the
leeway, never longer), so a captured assertion works once. The subject (hex public key) is put in
`caller`, a ContextVar the servicer reads with `current_caller()`.
Anything wrong raises AssertionInvalid (UNAUTHENTICATED), mapped by the
outer ErrorInterceptor.
"""

from __future__ import annotations

from collections.abc import Collection
from contextvars import ContextVar

import grpc

from troop_common.assertions import COORDINATOR_AUDIENCE, verify_assertion
from troop_common.errors import AssertionInvalid
from troop_common.interceptors.wrapping import CheckingInterceptor, bearer_token
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
        "GetJob",
        "GetBalance",
        "ListTransactions",
        "Heartbeat",
        "GetChallenge",
        "StartChallenge",
        "CommitProof",
        "VerifyProof",
    )
)


def current_caller() -> str:
    """The verified caller's hex public key; only inside an identified method."""
    subject = caller.get()
    if subject is None:
        raise AssertionInvalid("this call needs an identity assertion")
    return subject


class AuthInterceptor(CheckingInterceptor):
    """Verifies the caller's assertion before an identified method runs.

    Each gRPC call runs in its own task, with its own copy of the context: the
    `caller` set here is seen by that call's handler only, and needs no reset.
    """

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

    def covers(self, method: str) -> bool:
        return method in self._methods

    async def check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        token = bearer_token(context)
        if token is None:
            raise AssertionInvalid("missing authorization: Bearer <assertion>")
        assertion = verify_assertion(token, self._audience)
        if not await self._replays.add(f"assertion:{assertion.jti}", assertion.expires_at):
            raise AssertionInvalid("assertion already used")
        caller.set(assertion.subject)
        set_principal(assertion.subject)
