"""Opaque page tokens: `base64url("<prefix>:<number>")`, one kind per paged list.

`TransactionsPage` tokens carry the last entry id ("e"), `ListNodes` tokens an
offset ("o"). A token is a number the coordinator issued, so anything else — not
base64, another prefix, not digits, out of range — is "not a token from this API".
"""

from __future__ import annotations

import base64
import binascii

MAX_DIGITS = 19  # a BIGINT


def encode(prefix: str, number: int) -> str:
    return base64.urlsafe_b64encode(f"{prefix}:{number}".encode()).decode().rstrip("=")


def decode(prefix: str, token: str, maximum: int) -> int | None:
    """The number in a token of this kind, in (0, maximum]; None for anything else."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    found, _, number = text.partition(":")
    if found != prefix or not number.isdigit() or len(number) > MAX_DIGITS:
        return None
    value = int(number)
    return value if 0 < value <= maximum else None
