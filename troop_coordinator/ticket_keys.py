"""The coordinator's ticket-signing keys: a directory of keys, rotated without a restart.

    data_dir/ticket-keys/          (0700)
        <kid>.pem                  one RSA-2048 private key each, mode 0400
        keys.json                  {"keys": {kid: {"created_at": t, "retired_at": t | null}}}

The newest key that is not retired signs new tickets. `rotate()` (the
`troop admin rotate-ticket-key` command) writes a new key and marks every
other one retired now; a running coordinator re-reads the directory at most
every `reload_s` seconds (on the next ticket or key-set request), so the new
key is in use within that interval, with no restart and no signal. The key
set (GetKeySet) lists the current key plus keys retired less than `grace_s`
ago (default: the ticket lifetime, so every ticket already handed out still
verifies until it expires); after that a retired key leaves the set and
workers, which re-fetch the set at least every few seconds, refuse it.

The single `ticket-key.pem` of earlier versions is moved into the directory
on first start. Private keys are never logged; only their kids are.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from troop_common.keys import PRIVATE_KEY_MODE, load_rsa_private, private_pem, write_private
from troop_common.tickets import TicketSigner, key_id

log = logging.getLogger("troop.coordinator.ticket_keys")

METADATA_FILE = "keys.json"
KEY_BITS = 2048


@dataclass(frozen=True)
class KeyRecord:
    kid: str
    created_at: float
    retired_at: float | None = None


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def read_metadata(directory: Path) -> dict[str, KeyRecord]:
    path = directory / METADATA_FILE
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return {
        kid: KeyRecord(kid, float(v["created_at"]), v.get("retired_at"))
        for kid, v in data.get("keys", {}).items()
    }


def write_metadata(directory: Path, records: dict[str, KeyRecord]) -> None:
    """Atomically (write + rename): a coordinator reading concurrently sees old or new."""
    doc = {
        "keys": {
            r.kid: {"created_at": r.created_at, "retired_at": r.retired_at}
            for r in records.values()
        }
    }
    tmp = directory / f".{METADATA_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    os.chmod(tmp, 0o600)
    os.replace(tmp, directory / METADATA_FILE)


def _add_key(directory: Path, key: rsa.RSAPrivateKey, now: float, retire_others: bool) -> str:
    kid = key_id(key.public_key())
    with contextlib.suppress(FileExistsError):
        write_private(directory / f"{kid}.pem", private_pem(key))
    records = read_metadata(directory)
    if retire_others:
        records = {
            k: r if r.retired_at is not None else KeyRecord(r.kid, r.created_at, now)
            for k, r in records.items()
        }
    records[kid] = KeyRecord(kid, now)
    write_metadata(directory, records)
    return kid


@contextlib.contextmanager
def _locked(directory: Path) -> Any:
    """An exclusive lock on the directory: replicas sharing it, and the admin command,
    change it one at a time."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_key_dir(directory: Path, legacy_key: Path | None = None) -> None:
    """Create the directory with one key if it has none, adopting a legacy single key file."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(directory):
        if not read_metadata(directory):
            _first_key(directory, legacy_key)


def _first_key(directory: Path, legacy_key: Path | None) -> None:
    now = time.time()
    if legacy_key is not None and legacy_key.exists():
        kid = _add_key(directory, load_rsa_private(legacy_key), now, retire_others=False)
        legacy_key.unlink(missing_ok=True)  # one copy of a secret: the directory's
        log.info("moved %s into %s as key %s", legacy_key.name, directory, kid)
        return
    kid = _add_key(directory, _new_key(), now, retire_others=False)
    log.info("created ticket key %s", kid)


def rotate(directory: Path, *, grace_s: float, now: float | None = None) -> str:
    """Make a new signing key and retire the others now; the new kid.

    Private files of keys retired more than `grace_s` ago are deleted (they can
    no longer verify anything, so they need not exist)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = time.time() if now is None else now
    key = _new_key()
    with _locked(directory):
        return _rotate(directory, key, now, grace_s)


def _rotate(directory: Path, key: rsa.RSAPrivateKey, now: float, grace_s: float) -> str:
    kid = _add_key(directory, key, now, retire_others=True)
    records = read_metadata(directory)
    expired = [
        r.kid for r in records.values() if r.retired_at is not None and r.retired_at + grace_s < now
    ]
    for old in expired:
        with contextlib.suppress(FileNotFoundError):
            (directory / f"{old}.pem").unlink()
        del records[old]
    if expired:
        write_metadata(directory, records)
    return kid


class TicketKeyRing:
    """The keys in the directory, re-read at most every `reload_s`; signs with the newest.

    Quacks like a TicketSigner (`kid`, `public_key`, `issue`) for the servicer."""

    def __init__(
        self,
        directory: Path,
        *,
        lifetime_s: int,
        grace_s: float,
        reload_s: float = 5.0,
        clock: Any = time.time,
    ) -> None:
        self.directory = directory
        self.lifetime_s = lifetime_s
        self.grace_s = grace_s
        self.reload_s = reload_s
        self._clock = clock
        self._loaded: dict[str, rsa.RSAPrivateKey] = {}
        self._records: dict[str, KeyRecord] = {}
        self._signer: TicketSigner | None = None
        self._checked_at = float("-inf")
        self._stamp: tuple[int, int] | None = None

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        legacy_key: Path | None,
        lifetime_s: int,
        grace_s: float,
        reload_s: float = 5.0,
    ) -> TicketKeyRing:
        """Create or adopt the directory and load it (blocking file I/O: call in a thread)."""
        ensure_key_dir(directory, legacy_key)
        ring = cls(directory, lifetime_s=lifetime_s, grace_s=grace_s, reload_s=reload_s)
        ring.reload()
        return ring

    def reload(self) -> None:
        """Re-read the metadata (and any new key files) now."""
        path = self.directory / METADATA_FILE
        stat = path.stat()
        self._stamp = (stat.st_mtime_ns, stat.st_ino)
        records = read_metadata(self.directory)
        for kid in records:
            if kid not in self._loaded and (self.directory / f"{kid}.pem").exists():
                self._loaded[kid] = load_rsa_private(self.directory / f"{kid}.pem")
        self._records = {k: r for k, r in records.items() if k in self._loaded}
        active = [r for r in self._records.values() if r.retired_at is None]
        if not active:
            raise RuntimeError(f"no active ticket key in {self.directory}")
        newest = max(active, key=lambda r: r.created_at)
        if self._signer is None or self._signer.kid != newest.kid:
            self._signer = TicketSigner(self._loaded[newest.kid], lifetime_s=self.lifetime_s)
            log.info("signing tickets with key %s", newest.kid)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.reload_s:
            return
        self._checked_at = now
        try:
            stat = (self.directory / METADATA_FILE).stat()
            if (stat.st_mtime_ns, stat.st_ino) != self._stamp:
                self.reload()
        except (OSError, ValueError, RuntimeError) as exc:
            # A half-written or broken directory must not stop ticketing: keep the keys.
            log.warning("could not reload ticket keys (keeping the current ones): %s", exc)

    @property
    def signer(self) -> TicketSigner:
        self._maybe_reload()
        assert self._signer is not None
        return self._signer

    @property
    def kid(self) -> str:
        return self.signer.kid

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.signer.public_key

    def issue(self, **claims: Any) -> tuple[str, float]:
        return self.signer.issue(**claims)

    def published_keys(self) -> list[rsa.RSAPublicKey]:
        """The current key first, then keys retired less than `grace_s` ago."""
        current = self.signer.kid
        now = self._clock()
        keys = [self._loaded[current].public_key()]
        for record in sorted(self._records.values(), key=lambda r: -r.created_at):
            if record.kid == current:
                continue
            if record.retired_at is None or record.retired_at + self.grace_s > now:
                keys.append(self._loaded[record.kid].public_key())
        return keys


__all__ = ["PRIVATE_KEY_MODE", "KeyRecord", "TicketKeyRing", "ensure_key_dir", "rotate"]
