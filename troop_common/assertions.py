"""Self-signed identity assertions: how a user or node proves it holds its Ed25519 key.

An assertion is a JWT signed with EdDSA by the caller's own key: `sub` is the
public key (64 lowercase hex digits), `aud` the service it is for, a minute of
life, a unique `jti`. It travels as `authorization: Bearer <jwt>`. Verifying is
pure; the replay check (each `jti` once) is the caller's, against a ReplaySet,
until `Assertion.expires_at`: the last moment the assertion is accepted.

What is accepted (docs/protocol.md, Assertions); every refusal is an
AssertionInvalid (UNAUTHENTICATED) that says why:

- `sub`: a public key in its one spelling (`troop_common.keys.parse_public_key_hex`);
- `iat`, `exp`: numbers of seconds; `iat` at most MAX_CLOCK_SKEW_S ahead of the
  verifier's clock, `0 < exp − iat ≤ MAX_LIFETIME_S`, `exp + LEEWAY_S` not passed;
  so no accepted assertion lives past `now + MAX_CLOCK_SKEW_S + MAX_LIFETIME_S + LEEWAY_S`;
- `jti`: 16-128 characters of A-Z a-z 0-9 _ - (what the replay set stores).
"""

from __future__ import annotations

import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from troop_common import jws
from troop_common.errors import AssertionInvalid
from troop_common.keys import Identity, parse_public_key_hex

COORDINATOR_AUDIENCE = "troop-coordinator"
ASSERTION_LIFETIME_S = 60
# The longest lifetime (exp − iat) a verifier accepts.
MAX_LIFETIME_S = 10 * ASSERTION_LIFETIME_S
# How far `iat` may be ahead of the verifier's clock.
MAX_CLOCK_SKEW_S = 30
# How long after `exp` an assertion is still accepted (clock skew the other way).
LEEWAY_S = 5
# Far above any assertion Troop makes (~400 characters): nothing larger is parsed.
MAX_TOKEN_CHARS = 2048
JTI = re.compile(r"[A-Za-z0-9_-]{16,128}")


@dataclass(frozen=True)
class Assertion:
    subject: str  # hex Ed25519 public key
    jti: str
    expires_at: float  # exp + leeway: the last moment it is accepted, and its replay entry's end


def create_assertion(
    identity: Identity,
    audience: str = COORDINATOR_AUDIENCE,
    now: float | None = None,
    lifetime_s: int = ASSERTION_LIFETIME_S,
) -> str:
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": identity.public_key_hex,
        "aud": audience,
        "iat": issued,
        "exp": issued + lifetime_s,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, identity.private_key, algorithm="EdDSA")


def verify_assertion(token: str, audience: str, now: float | None = None) -> Assertion:
    """The verified assertion; AssertionInvalid, with the reason, for anything else."""
    now = time.time() if now is None else now
    if len(token) > MAX_TOKEN_CHARS:
        raise AssertionInvalid(f"assertion longer than {MAX_TOKEN_CHARS} characters")
    try:
        parsed = jws.parse(token)  # once (troop_common.jws): PyJWT reads it char by char
        claims = parsed.claims()
    except jws.JwsError as exc:
        raise AssertionInvalid(f"invalid assertion: {exc}") from exc
    subject = claims.get("sub")
    if not isinstance(subject, str):
        raise AssertionInvalid("assertion sub must be a hex Ed25519 public key (a string)")
    try:
        key = parse_public_key_hex(subject)
    except ValueError as exc:
        raise AssertionInvalid(f"assertion sub: {exc}") from exc
    try:
        jws.verify_eddsa(parsed, key)
        # sub is checked above; exp, iat (against `now`) and jti below, with their types.
        jws.require(claims, ("sub", "aud", "exp", "iat", "jti"))
        jws.check_audience(claims, audience)
    except jws.JwsError as exc:
        raise AssertionInvalid(f"invalid assertion: {exc}") from exc
    expires_at = _check_times(claims, now)
    jti = claims["jti"]
    if not isinstance(jti, str) or not JTI.fullmatch(jti):
        raise AssertionInvalid("assertion jti must be 16-128 characters of A-Z a-z 0-9 _ -")
    return Assertion(subject=subject, jti=jti, expires_at=expires_at)


def _seconds(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AssertionInvalid(f"assertion {name} must be a number of seconds since the epoch")
    return float(value)


def _check_times(claims: dict[str, Any], now: float) -> float:
    """When the assertion stops being accepted (exp + leeway); AssertionInvalid if not now."""
    issued, expires = _seconds(claims, "iat"), _seconds(claims, "exp")
    if issued > now + MAX_CLOCK_SKEW_S:
        raise AssertionInvalid(
            f"assertion issued in the future (iat more than {MAX_CLOCK_SKEW_S} s ahead)"
        )
    if not 0 < expires - issued <= MAX_LIFETIME_S:
        raise AssertionInvalid(f"assertion lifetime (exp - iat) must be 1-{MAX_LIFETIME_S} s")
    if expires + LEEWAY_S < now:
        raise AssertionInvalid("assertion expired")
    return expires + LEEWAY_S
