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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from troop_common.background import BackgroundSender, HotPath
from troop_common.errors import TroopError, Unavailable
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


class DurableSender(Generic[T]):
    """Messages that must reach the coordinator, sent off the hot path and never lost.

    Each message is kept in the `Outbox` (when there is one) before it is queued on a
    `BackgroundSender`, which sends it once no job is starting. The coordinator being
    unavailable (`Unavailable` from `deliver`) is tried again with backoff; an answer,
    a refusal (any other TroopError) or the message growing older than `max_age_s` (it
    can no longer settle anything) removes it. `resume` queues what an earlier run left.
    A subclass says what a message is: `key`, `encode`, `parse`, `made_at`, `describe`,
    and how it is delivered (`deliver`).
    """

    name = "messages"
    # How loud a message the coordinator refused, or one dropped for its age, is.
    loss_level = logging.WARNING

    def __init__(
        self,
        *,
        outbox: Path | None,
        max_age_s: float,
        backoff_s: float = 1.0,
        max_wait_s: float = 0.5,
        retries: int | None = None,
        log: logging.Logger = log,
    ) -> None:
        """`retries` without an outbox (with one, every message is tried until answered)."""
        self.outbox = Outbox(outbox) if outbox is not None else None
        self._max_age_s = max_age_s
        self._log = log
        self._sender: BackgroundSender[T] = BackgroundSender(
            self._send,
            name=self.name,
            retries=None if self.outbox is not None else retries,
            backoff_s=backoff_s,
            max_wait_s=max_wait_s,
            describe=self.describe,
            durable=self.outbox is not None,
        )

    def key(self, message: T) -> str:
        raise NotImplementedError

    def encode(self, message: T) -> bytes:
        raise NotImplementedError

    def parse(self, data: bytes) -> T:
        """From the outbox's bytes; ValueError if they are not a message."""
        raise NotImplementedError

    def made_at(self, message: T) -> float:
        """When the message was made (unix seconds): its age counts from then."""
        raise NotImplementedError

    def describe(self, message: T) -> str:
        raise NotImplementedError

    async def deliver(self, message: T) -> None:
        """Send it; Unavailable to be tried again, another TroopError if refused."""
        raise NotImplementedError

    @property
    def hot(self) -> HotPath:
        """The jobs still before their first token: messages wait for them."""
        return self._sender.hot

    @property
    def pending(self) -> int:
        """Messages queued, waiting for a retry or being sent."""
        return self._sender.pending

    @property
    def batches(self) -> int:
        """How many batches were sent (each: every message ready at the time)."""
        return self._sender.batches

    def queue(self, message: T) -> None:
        """Keep `message` in the outbox, then queue it; returns at once."""
        if self.outbox is not None:
            self.outbox.put(self.key(message), self.encode(message))
        self._sender.submit(message)

    def resume(self) -> int:
        """Queue every message an earlier run left in the outbox; how many."""
        if self.outbox is None:
            return 0
        kept = self.outbox.load(self.parse)
        for message in kept:
            self._sender.submit(message)
        if kept:
            self._log.info("%d %s left by an earlier run queued", len(kept), self.name)
        return len(kept)

    def _done(self, message: T) -> None:
        if self.outbox is not None:
            self.outbox.remove(self.key(message))

    async def _send(self, message: T) -> None:
        age_s = time.time() - self.made_at(message)
        if age_s > self._max_age_s:
            self._log.log(
                self.loss_level,
                "%s is %.0f s old, past the %.0f s in which it could matter: dropped",
                self.describe(message), age_s, self._max_age_s,
            )  # fmt: skip
            self._done(message)
            return
        try:
            await self.deliver(message)
        except Unavailable:
            raise  # tried again by the sender; the outbox keeps it meanwhile
        except TroopError as exc:  # an answer: sending it again would get the same one
            self._log.log(
                self.loss_level, "coordinator refused %s: %s", self.describe(message), exc
            )
        self._done(message)

    async def drain(self, timeout_s: float) -> None:
        """Send what is queued (within `timeout_s`); the outbox keeps the rest."""
        await self._sender.drain(timeout_s)

    async def close(self, timeout_s: float) -> None:
        """As `drain`, then stop the sender."""
        await self._sender.close(timeout_s)


__all__ = ["DurableSender", "Outbox"]
