"""Compact JWS (the JWT wire form) read once per token, and the two signatures Troop checks.

Tickets (RS256) and assertions (EdDSA) are verified on every job and on every signed
call. PyJWT checks each base64url segment one character at a time in Python, and the
old path read a ticket three times (its `kid`, again inside `verify_ticket`, then the
verified decode): about 0.5 ms of a worker's CPU per job, and twice per call on the
coordinator for assertions. `parse` splits and decodes a token once, with the C
base64 decoder behind one regular expression that keeps PyJWT's strictness on the
alphabet and refuses non-canonical encodings; `verify_rs256` and `verify_eddsa` check
the signature with a key object the caller already holds (parsed once, cached).
Making tokens stays with PyJWT.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")


class JwsError(ValueError):
    """The token is not a well-formed compact JWS, or its signature does not verify."""


@dataclass(frozen=True)
class CompactJws:
    header: dict[str, Any]
    payload: bytes  # the claims' JSON, as signed
    signing_input: bytes  # "<header>.<payload>", the bytes the signature covers
    signature: bytes

    def claims(self) -> dict[str, Any]:
        """The payload as a JSON object; JwsError for anything else."""
        try:
            claims = json.loads(self.payload)
        except ValueError as exc:
            raise JwsError("the payload is not JSON") from exc
        if not isinstance(claims, dict):
            raise JwsError("the payload is not a JSON object")
        return claims


def _segment(raw: bytes, name: str) -> bytes:
    if len(raw) % 4 == 1 or not _SEGMENT.fullmatch(raw):
        raise JwsError(f"invalid {name} encoding")
    try:
        decoded = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except binascii.Error as exc:
        raise JwsError(f"invalid {name} encoding") from exc
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != raw:
        raise JwsError(f"invalid {name} encoding")  # trailing bits set: not canonical
    return decoded


def parse(token: str) -> CompactJws:
    """The token's header, payload and signature, unverified; JwsError if malformed."""
    try:
        data = token.encode("ascii")
    except (UnicodeEncodeError, AttributeError) as exc:
        raise JwsError("not a compact JWS") from exc
    parts = data.split(b".")
    if len(parts) != 3:
        raise JwsError("not enough segments" if len(parts) < 3 else "too many segments")
    header_raw, payload_raw, signature_raw = parts
    try:
        header = json.loads(_segment(header_raw, "header"))
    except ValueError as exc:
        raise JwsError("invalid header") from exc
    if not isinstance(header, dict):
        raise JwsError("invalid header")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwsError("the key id (kid) must be a string")
    return CompactJws(
        header=header,
        payload=_segment(payload_raw, "payload"),
        signing_input=header_raw + b"." + payload_raw,
        signature=_segment(signature_raw, "signature"),
    )


def _algorithm(jws: CompactJws, expected: str) -> None:
    if jws.header.get("alg") != expected:
        raise JwsError(f"the algorithm must be {expected}")


def verify_rs256(jws: CompactJws, key: rsa.RSAPublicKey) -> None:
    """JwsError unless the header says RS256 and `key` signed the token."""
    _algorithm(jws, "RS256")
    try:
        key.verify(jws.signature, jws.signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature as exc:
        raise JwsError("signature verification failed") from exc


def verify_eddsa(jws: CompactJws, key: ed25519.Ed25519PublicKey) -> None:
    """JwsError unless the header says EdDSA and `key` signed the token."""
    _algorithm(jws, "EdDSA")
    try:
        key.verify(jws.signature, jws.signing_input)
    except InvalidSignature as exc:
        raise JwsError("signature verification failed") from exc


def check_audience(claims: dict[str, Any], audience: str) -> None:
    """JwsError unless `aud` is `audience` (or a list of strings holding it)."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        aud = [aud]
    if not isinstance(aud, list) or not all(isinstance(a, str) for a in aud):
        raise JwsError("invalid claim format in token (aud)")
    if audience not in aud:
        raise JwsError("audience doesn't match")


def require(claims: dict[str, Any], names: tuple[str, ...]) -> None:
    """JwsError naming the first of `names` the claims lack."""
    for name in names:
        if claims.get(name) is None:
            raise JwsError(f'token is missing the "{name}" claim')
