"""Self-signed identity assertions: how a user or node proves it holds its Ed25519 key.

An assertion is a JWT signed with EdDSA by the caller's own key: `sub` is the
public key (hex), `aud` the service it is for, a minute of life, a unique
`jti`. It travels as `authorization: Bearer <jwt>`. Verifying is pure; the
replay check (each `jti` once) is the caller's, against a ReplaySet.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt

from troop_common.errors import AssertionInvalid
from troop_common.keys import Identity, parse_public_key_hex

COORDINATOR_AUDIENCE = "troop-coordinator"
ASSERTION_LIFETIME_S = 60
_LEEWAY_S = 5


@dataclass(frozen=True)
class Assertion:
    subject: str  # hex Ed25519 public key
    jti: str
    expires_at: float


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
    """The verified assertion; AssertionInvalid for anything else."""
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
        subject = unverified.get("sub")
        if not isinstance(subject, str):
            raise AssertionInvalid("assertion has no subject")
        key = parse_public_key_hex(subject)
        claims = jwt.decode(
            token,
            key,
            algorithms=["EdDSA"],
            audience=audience,
            leeway=_LEEWAY_S,
            options={"require": ["sub", "aud", "exp", "iat", "jti"], "verify_iat": False},
        )
        if now is not None and claims["exp"] + _LEEWAY_S < now:
            raise AssertionInvalid("assertion expired")
        if claims["exp"] - claims["iat"] > 10 * ASSERTION_LIFETIME_S:
            raise AssertionInvalid("assertion lives too long")
    except AssertionInvalid:
        raise
    except (jwt.PyJWTError, ValueError) as exc:
        raise AssertionInvalid(f"invalid assertion: {exc}") from exc
    return Assertion(subject=subject, jti=str(claims["jti"]), expires_at=float(claims["exp"]))
