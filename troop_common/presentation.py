"""The user's presentation of a ticket to a node, which the node's receipt must carry.

When a client opens a job's stream it sends, beside its fresh nonce
(`x-troop-client-nonce`), an Ed25519 signature by the user's key over

    "troop-presentation/v1\\n" + job_id + "\\n" + node_id + "\\n" + nonce

in `x-troop-presentation` (hex). The worker copies both into its signed receipt;
the coordinator checks the signature against the job's user before it records
the receipt. A node therefore cannot be paid for a job that no user started
with it: a ticket it never saw presented, or a job the client took elsewhere.
"""

from __future__ import annotations

import re

from troop_common.errors import AuthError, PresentationInvalid
from troop_common.keys import Identity, verify_ed25519

PRESENTATION_HEADER = "x-troop-presentation"
_SIGNATURE = re.compile(r"^[0-9a-f]{128}$")


def _message(job_id: str, node_id: str, nonce: str) -> bytes:
    return f"troop-presentation/v1\n{job_id}\n{node_id}\n{nonce}".encode()


def sign_presentation(user: Identity, job_id: str, node_id: str, nonce: str) -> str:
    """The header value a client sends with a job's stream."""
    return user.sign(_message(job_id, node_id, nonce)).hex()


def parse_presentation(value: str | None) -> bytes | None:
    """The signature bytes of a header value, or None if absent or malformed."""
    if not isinstance(value, str) or not _SIGNATURE.match(value):
        return None
    return bytes.fromhex(value)


def verify_presentation(
    user_public_key: str, job_id: str, node_id: str, nonce: str, signature: bytes
) -> None:
    """PresentationInvalid unless the user's key signed this job, node and nonce."""
    if len(signature) != 64 or not nonce:
        raise PresentationInvalid("the receipt carries no presentation by the job's user")
    try:
        verify_ed25519(user_public_key, signature, _message(job_id, node_id, nonce))
    except AuthError as exc:
        raise PresentationInvalid(
            "the receipt's presentation is not signed by the job's user"
        ) from exc
