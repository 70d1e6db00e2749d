"""Key files: Ed25519 identities (users, nodes), and the helpers every private key file uses.

Private keys are created on first use, written owner-read-only (0400) through a
file descriptor opened with that mode (so no moment exists when another user
could read them), and loaded once into key objects: re-parsing a PEM per
signature is ~100x slower (RS256 with the PEM passed to `jwt.encode` each time:
~37 signatures/s against ~4,600 with the key object loaded once, on one core).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from troop_common.config import ConfigError
from troop_common.curve import check_public_point
from troop_common.errors import SignatureInvalid

PRIVATE_KEY_MODE = 0o400
# A public key's one spelling: 64 lowercase hex digits.
PUBLIC_KEY_HEX = re.compile(r"[0-9a-f]{64}")


def write_private(path: Path, data: bytes) -> None:
    """Create `path` owner-read-only with `data`; FileExistsError if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_KEY_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def private_pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> bytes:
    """The key as an unencrypted PKCS#8 PEM (the file is protected by its mode)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _read_pem(path: Path) -> object:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def load_ed25519_private(path: Path) -> ed25519.Ed25519PrivateKey:
    """The Ed25519 private key in `path`; ConfigError if it holds another kind of key."""
    key = _read_pem(path)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path} does not hold an Ed25519 private key")
    return key


def load_rsa_private(path: Path) -> rsa.RSAPrivateKey:
    """The RSA private key in `path`; ConfigError if it holds another kind of key."""
    key = _read_pem(path)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{path} does not hold an RSA private key")
    return key


def public_key_hex(key: ed25519.Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def parse_public_key_hex(text: str) -> ed25519.Ed25519PublicKey:
    """An Ed25519 public key from its one spelling; ValueError for anything else.

    The spelling is 64 lowercase hex digits (what `public_key_hex` writes): the hex
    is the account's name, so `ABCD…` and `abcd…` must not name two accounts. The
    point must decode (RFC 8032 §5.1.3, canonical `y` only) and not be of small
    order (`troop_common.curve`), or a signature could verify for every message.
    """
    if not isinstance(text, str) or not PUBLIC_KEY_HEX.fullmatch(text):
        raise ValueError("an Ed25519 public key is 64 lowercase hex digits")
    return _checked_public_key(text)


# Every call verifies its caller's key: checked once per key, not per call. Sized above
# the 10,000 nodes a coordinator is built to serve plus their users (~100 bytes a key).
@lru_cache(maxsize=32_768)
def _checked_public_key(text: str) -> ed25519.Ed25519PublicKey:
    raw = bytes.fromhex(text)
    check_public_point(raw)  # pure Python, ~100 µs: refused keys are not cached
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def is_public_key_hex(text: str) -> bool:
    """Whether `text` is a usable public key in its one spelling (lowercase hex)."""
    try:
        parse_public_key_hex(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair: a user or a node. The public key, hex, is its name."""

    private_key: ed25519.Ed25519PrivateKey

    @property
    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_key_hex(self) -> str:
        return public_key_hex(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @classmethod
    def generate(cls) -> Identity:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """The identity kept at `path`, created (mode 0400) on first use."""
        if not path.exists():
            key = ed25519.Ed25519PrivateKey.generate()
            try:
                write_private(path, private_pem(key))
            except FileExistsError:
                pass  # created concurrently by another process: load theirs
            else:
                return cls(key)
        return cls(load_ed25519_private(path))


def verify_ed25519(public_key_hex_: str, signature: bytes, data: bytes) -> None:
    """Raise SignatureInvalid unless `signature` is the key's over `data`."""
    try:
        parse_public_key_hex(public_key_hex_).verify(signature, data)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureInvalid("signature does not verify with the node's key") from exc
