"""The user's presentation of a ticket, read from a job's call metadata.

A worker is paid only for receipts that carry the job's user's signed
presentation (troop_common.presentation), so it refuses, before spending the
ticket or doing any work, a call that does not bring a valid one: a client
that leaves it out would otherwise get its answer free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from troop_common.errors import (
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    PresentationMissing,
)
from troop_common.node_proof import NONCE_HEADER, is_nonce
from troop_common.presentation import (
    PRESENTATION_HEADER,
    parse_presentation,
    verify_presentation,
)
from troop_common.tickets import Ticket


@dataclass(frozen=True)
class Presented:
    nonce: str
    signature: bytes


def presentation_of(ticket: Ticket, metadata: Iterable[tuple[str, object]]) -> Presented:
    """The call's nonce and the user's presentation; InvalidArgument for a missing or
    malformed nonce, PresentationMissing (UNAUTHENTICATED) without a valid presentation."""
    found = {k: v for k, v in metadata if k in (NONCE_HEADER, PRESENTATION_HEADER)}
    nonce = found.get(NONCE_HEADER)
    if not isinstance(nonce, str) or not is_nonce(nonce):
        # Checked before the ticket is spent: a client can retry with a good one.
        raise InvalidArgument(
            [FieldViolation(NONCE_HEADER, "a fresh nonce of 32-128 lowercase hex digits")]
        )
    raw = found.get(PRESENTATION_HEADER)
    signature = parse_presentation(raw if isinstance(raw, str) else None)
    if signature is None:
        raise PresentationMissing(
            f"send {PRESENTATION_HEADER}: the hex Ed25519 signature by the ticket's user of "
            '"troop-presentation/v1\\n<job id>\\n<node id>\\n<nonce>" (docs/protocol.md)'
        )
    try:
        verify_presentation(ticket.user, ticket.job_id, ticket.node_id, nonce, signature)
    except PermissionDenied as exc:
        raise PresentationMissing(f"{PRESENTATION_HEADER} is not the ticket user's") from exc
    return Presented(nonce, signature)
