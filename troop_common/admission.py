"""Admission puzzles and invite codes, shared by the coordinator (checks) and the SDK (solves).

Proof of work (docs/adr/0015): `sha256("troop-join\\n" + public_key_hex + "\\n"
+ nonce)` must start with `bits` zero bits. The public key is inside the hash,
so a solution works for one identity only and cannot be resold or replayed for
another; each extra bit doubles the expected work (20 bits: ~10^6 hashes, about
a second of one core in Python).

Invite codes are random; the coordinator stores only their SHA-256.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets

POW_PREFIX = b"troop-join\n"
MAX_NONCE_LENGTH = 64
MAX_INVITE_LENGTH = 128


def pow_digest(public_key_hex: str, nonce: str) -> bytes:
    return hashlib.sha256(POW_PREFIX + public_key_hex.encode() + b"\n" + nonce.encode()).digest()


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def pow_ok(public_key_hex: str, nonce: str, bits: int) -> bool:
    """True if `nonce` solves the puzzle of `public_key_hex` at difficulty `bits`."""
    if not nonce or len(nonce) > MAX_NONCE_LENGTH:
        return False
    return leading_zero_bits(pow_digest(public_key_hex, nonce)) >= bits


def solve_pow(public_key_hex: str, bits: int) -> str:
    """A nonce solving the puzzle (CPU-bound: run it in a thread)."""
    prefix = POW_PREFIX + public_key_hex.encode() + b"\n"
    for counter in itertools.count():
        nonce = str(counter)
        digest = hashlib.sha256(prefix + nonce.encode()).digest()
        if leading_zero_bits(digest) >= bits:
            return nonce
    raise AssertionError("unreachable")


def new_invite_code() -> str:
    """A one-time code a person can paste: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


def hash_invite(code: str) -> str:
    return hashlib.sha256(code.strip().encode()).hexdigest()
