"""The ticket interceptor: no inference call reaches the servicer without a valid ticket.

It reads `authorization: Bearer <ticket>`, verifies it (signature, expiry,
audience, node) before the handler runs — so a bad ticket is UNAUTHENTICATED
with zero messages — and hands the ticket to the servicer in a ContextVar.
Spending the ticket (single use) and matching its model are the servicer's,
after the request is validated, so a malformed or rate-limited request does
not burn the ticket. ListModels, health and reflection need no ticket.
"""

from __future__ import annotations

from contextvars import ContextVar

import grpc

from troop_common.errors import TicketInvalid
from troop_common.interceptors.wrapping import CheckingInterceptor, bearer_token
from troop_common.proto import INFERENCE_SERVICE
from troop_common.request_context import set_principal
from troop_common.tickets import Ticket
from troop_worker.tickets import TicketVerifier

PROTECTED_METHODS = frozenset({f"/{INFERENCE_SERVICE}/ChatCompletion"})

current_ticket: ContextVar[Ticket | None] = ContextVar("troop_worker_ticket", default=None)


class TicketInterceptor(CheckingInterceptor):
    """Verifies the ticket before the stream starts; the servicer reads it from a ContextVar."""

    def __init__(self, verifier: TicketVerifier) -> None:
        self.verifier = verifier

    def covers(self, method: str) -> bool:
        return method in PROTECTED_METHODS

    async def check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        token = bearer_token(context)
        if token is None:
            raise TicketInvalid("missing ticket: send 'authorization: Bearer <ticket>'")
        ticket = await self.verifier.verify(token)
        current_ticket.set(ticket)
        set_principal(ticket.user)
