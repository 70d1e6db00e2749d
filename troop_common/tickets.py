"""Job tickets: RS256 JWTs the coordinator signs and workers verify.

A ticket lets one user run one job on one node: audience `troop-worker`,
`jti` = job id, `node`, `node_key` (the node's hex Ed25519 key) and `model`
claims, the job's bounds `max_tokens` (completion tokens) and
`max_prompt_tokens` (the job was priced and reserved for at most these), `kid`
header naming the signing key, a few minutes of life.
`verify_ticket` is pure (no gRPC, no clock of its own); single use is the
worker's replay set. It reads the token once (`troop_common.jws`) and checks the
signature with the cached key object.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from troop_common import jws
from troop_common.errors import TicketInvalid

TICKET_AUDIENCE = "troop-worker"
TICKET_ISSUER = "troop-coordinator"
TICKET_ALGORITHM = "RS256"


@dataclass(frozen=True)
class Ticket:
    job_id: str
    user: str  # hex public key of the user the job is charged to
    node_id: str
    model: str
    issued_at: float
    expires_at: float
    node_key: str = ""  # hex Ed25519 public key of the node the ticket names
    max_tokens: int = 0  # completion tokens the job was reserved for
    max_prompt_tokens: int = 0  # prompt tokens the job was reserved for


def key_id(public_key: rsa.RSAPublicKey) -> str:
    """A stable id for a key: the start of the SHA-256 of its DER encoding."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def public_key_pem(public_key: rsa.RSAPublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwk(public_key: rsa.RSAPublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {
        "kty": "RSA",
        "kid": key_id(public_key),
        "use": "sig",
        "alg": TICKET_ALGORITHM,
        "n": _b64url_uint(numbers.n),
        "e": _b64url_uint(numbers.e),
    }


def public_key_from_jwk(fields: Mapping[str, str]) -> rsa.RSAPublicKey:
    def uint(text: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    return rsa.RSAPublicNumbers(uint(fields["e"]), uint(fields["n"])).public_key()


class TicketSigner:
    """Signs tickets with one RSA key loaded once."""

    def __init__(self, private_key: rsa.RSAPrivateKey, lifetime_s: int = 300) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.kid = key_id(self.public_key)
        self.lifetime_s = lifetime_s

    def issue(
        self,
        *,
        job_id: str,
        user: str,
        node_id: str,
        model: str,
        now: float | None = None,
        node_key: str = "",
        max_tokens: int,
        max_prompt_tokens: int,
    ) -> tuple[str, float]:
        """The ticket and its expiry (unix seconds)."""
        issued = int(time.time() if now is None else now)
        expires = issued + self.lifetime_s
        claims = {
            "iss": TICKET_ISSUER,
            "aud": TICKET_AUDIENCE,
            "sub": user,
            "jti": job_id,
            "node": node_id,
            "model": model,
            "iat": issued,
            "exp": expires,
            "max_tokens": max_tokens,
            "max_prompt_tokens": max_prompt_tokens,
        }
        if node_key:
            claims["node_key"] = node_key
        token = jwt.encode(claims, self._key, algorithm=TICKET_ALGORITHM, headers={"kid": self.kid})
        return token, float(expires)


def ticket_kid(token: str | jws.CompactJws) -> str | None:
    """The `kid` header of a ticket, unverified (to pick the key); None if unreadable."""
    try:
        parsed = token if isinstance(token, jws.CompactJws) else jws.parse(token)
    except jws.JwsError:
        return None
    kid = parsed.header.get("kid")
    return kid if isinstance(kid, str) else None


def unverified_ticket_claims(token: str) -> tuple[str, str] | None:
    """(job id, node id) a ticket names, unverified (a client presenting it needs them);
    None if unreadable."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    job_id, node_id = claims.get("jti"), claims.get("node")
    if not isinstance(job_id, str) or not isinstance(node_id, str):
        return None
    return job_id, node_id


def verify_ticket(
    token: str | jws.CompactJws,
    keys: Mapping[str, rsa.RSAPublicKey],
    *,
    node_id: str,
    now: float,
    leeway_s: float = 5.0,
    node_key: str | None = None,
) -> Ticket:
    """The verified ticket for this node (and, when `node_key` is given, for exactly
    that node key); TicketInvalid for anything else. `token` may be already parsed."""
    try:
        parsed = token if isinstance(token, jws.CompactJws) else jws.parse(token)
    except jws.JwsError as exc:
        raise TicketInvalid(f"invalid ticket: {exc}") from exc
    kid = ticket_kid(parsed)
    if kid is None or kid not in keys:
        raise TicketInvalid("ticket is signed by an unknown key")
    try:
        jws.verify_rs256(parsed, keys[kid])
        claims = parsed.claims()
        jws.require(claims, ("aud", "iss", "sub", "jti", "exp", "iat"))
        jws.check_audience(claims, TICKET_AUDIENCE)
        if claims["iss"] != TICKET_ISSUER:
            raise jws.JwsError("invalid issuer")
    except jws.JwsError as exc:
        raise TicketInvalid(f"invalid ticket: {exc}") from exc
    if float(claims["exp"]) + leeway_s < now:
        raise TicketInvalid("ticket expired")
    if claims.get("node") != node_id:
        raise TicketInvalid("ticket is for another node")
    if node_key is not None and claims.get("node_key") != node_key:
        raise TicketInvalid("ticket is for another node key")
    model = claims.get("model")
    if not isinstance(model, str) or not model:
        raise TicketInvalid("ticket names no model")
    bounds = [claims.get("max_tokens"), claims.get("max_prompt_tokens")]
    if not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in bounds):
        raise TicketInvalid("ticket carries no token bounds")
    return Ticket(
        job_id=str(claims["jti"]),
        user=str(claims["sub"]),
        node_id=node_id,
        model=model,
        issued_at=float(claims["iat"]),
        expires_at=float(claims["exp"]),
        node_key=str(claims.get("node_key", "")),
        max_tokens=int(claims["max_tokens"]),
        max_prompt_tokens=int(claims["max_prompt_tokens"]),
    )
