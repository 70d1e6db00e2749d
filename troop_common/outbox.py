"""An outbox on disk: messages that must reach the coordinator survive a restart.

A worker's signed receipts and a client's countersignatures are what settle a job. Each is
written here, as the exact bytes that will be sent, before it is queued; it is removed once
the coordinator has answered for it (taken, or refused for good). A process that stops with
the coordinator away, or is killed, finds them at its next start and sends them then.

One file per message, named by a hash of its key (a job id comes from a peer: it never
becomes a path), written to a temporary name and renamed, so a reader sees a whole file or
none. No fsync: the outbox survives the process (a crash, `kill -9`, a restart), not the
machine losing power; an fsync per job would cost more than the job's own bookkeeping.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from troop_common.private_files import PRIVATE_FILE_MODE, private_dir

log = logging.getLogger("troop.outbox")
SUFFIX = ".msg"
T = TypeVar("T")


class Outbox:
    """Messages by key, each a file in `directory` (created 0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = private_dir(directory)

    def _path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:40] + SUFFIX)

    def put(self, key: str, data: bytes) -> None:
        """Keep `data` under `key` (replacing what was there)."""
        path = self._path(key)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temporary, path)

    def remove(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*" + SUFFIX))

    def load(self, parse: Callable[[bytes], T]) -> list[T]:
        """Every message kept, oldest first, through `parse`; one it cannot read (it raises
        ValueError) is logged and removed, and half-written temporaries are discarded."""
        for stale in self.directory.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        paths = sorted(self.directory.glob("*" + SUFFIX), key=lambda p: p.stat().st_mtime_ns)
        kept = []
        for path in paths:
            try:
                kept.append(parse(path.read_bytes()))
            except ValueError as exc:
                log.error("outbox: %s cannot be read (%s); removed", path, exc)
                path.unlink(missing_ok=True)
        return kept


__all__ = ["Outbox"]
