"""Ed25519 public points: decode one (RFC 8032 §5.1.3) and refuse those of small order.

OpenSSL takes any 32 bytes as a public key. Two kinds must not name an account:

- bytes that are no point, or a point spelled non-canonically (`y` ≥ p, or
  `x` = 0 with the sign bit set): one point would have several names;
- the 8 points of small order (the identity `01 00…00` among them): a
  signature can verify under them for any message, so whoever sends one could
  act as that "account" without a private key.

Small order is found by arithmetic, not a list: [8]P (three doublings) is the
identity exactly when P's order divides the cofactor 8. Together with the
canonical-`y` rule this refuses all 8 small-order points in every spelling, the
non-canonical ones (`y` ≥ p) included. Pure Python, one exponentiation a key, cached.
"""

from __future__ import annotations

from functools import lru_cache

_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode(raw: bytes) -> tuple[int, int]:
    """The affine point (x, y) of a 32-byte encoding; ValueError if there is none."""
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    number = int.from_bytes(raw, "little")
    sign, y = number >> 255, number & ((1 << 255) - 1)
    if y >= _P:
        raise ValueError("not a canonical Ed25519 point (y >= p)")
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    if u == 0:
        if sign:
            raise ValueError("not a canonical Ed25519 point (x = 0 with the sign bit set)")
        return 0, y
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if (v * x * x - u) % _P:
        x = x * _SQRT_M1 % _P
    if (v * x * x - u) % _P:
        raise ValueError("not a point on Ed25519")
    if x & 1 != sign:
        x = _P - x
    return x, y


def _double(point: tuple[int, int, int]) -> tuple[int, int, int]:
    """2P in projective coordinates (X:Y:Z), twisted Edwards with a = -1; no inversion."""
    x, y, z = point
    b, c, d = (x + y) ** 2 % _P, x * x % _P, y * y % _P
    f = d - c
    j = f - 2 * z * z
    return (b - c - d) * j % _P, f * (-c - d) % _P, f * j % _P


@lru_cache(maxsize=4096)
def check_public_point(raw: bytes) -> None:
    """ValueError unless `raw` is a canonical Ed25519 point that is not of small order."""
    x, y = _decode(raw)
    point = (x, y, 1)
    for _ in range(3):
        point = _double(point)
    x, y, z = point
    if x == 0 and y == z:  # the identity (0 : 1 : 1), scaled
        raise ValueError("an Ed25519 public key of small order is not accepted")
