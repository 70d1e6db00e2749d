"""The worker's used tickets, remembered across restarts until they expire.

    used = await UsedTickets.open(settings.data_dir / "used-tickets.jsonl")
    TicketVerifier(keys, node_id=..., replay=used)   # a ReplaySet
    ...
    await used.close()

The in-memory `MemoryReplaySet` answers first (the fast path, and the atomic
test-and-set); a key it has not seen is appended to a file under the data
dir, one JSON line `{"key": ..., "expires_at": ...}` each, written and
fsynced before `add` returns, so the job runs only once its ticket is on
disk. `open` loads the entries still live and rewrites the file without the
expired ones; the file is rewritten the same way once it has grown by
`compact_every` lines. The file is 0600, created so whatever the umask.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from troop_common.private_files import open_private, private_dir
from troop_common.replay import MemoryReplaySet

log = logging.getLogger("troop.worker.tickets")

COMPACT_EVERY = 10_000


def _read_live(path: Path, now: float) -> dict[str, float]:
    """The entries in `path` that expire after `now` (damaged lines are skipped)."""
    live: dict[str, float] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return live
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            key, expires_at = str(entry["key"]), float(entry["expires_at"])
        except (ValueError, TypeError, KeyError):
            continue  # a line cut short by a crash, or garbage
        if expires_at >= now:
            live[key] = max(expires_at, live.get(key, expires_at))
    return live


def _line(key: str, expires_at: float) -> bytes:
    return (json.dumps({"key": key, "expires_at": expires_at}) + "\n").encode()


def _rewrite(path: Path, entries: dict[str, float]) -> None:
    """Replace `path` atomically with just `entries`."""
    tmp = path.with_name(path.name + ".tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, b"".join(_line(k, e) for k, e in entries.items()))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class UsedTickets:
    """A `ReplaySet` backed by an append-only file: `add` is False for a key seen before,
    in this process or an earlier one, until its expiry."""

    def __init__(
        self,
        path: Path,
        *,
        compact_every: int = COMPACT_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._memory = MemoryReplaySet()
        self._entries: dict[str, float] = {}  # what the file holds, for compaction
        self._compact_every = compact_every
        self._clock = clock
        self._appended = 0
        self._fd: int | None = None
        self._file_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        compact_every: int = COMPACT_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> UsedTickets:
        """Load the live entries from `path` (created if missing) and drop expired ones."""
        used = cls(path, compact_every=compact_every, clock=clock)
        await used._load()
        return used

    async def _load(self) -> None:
        private_dir(self.path.parent)
        live = await asyncio.to_thread(_read_live, self.path, self._clock())
        for key, expires_at in live.items():
            await self._memory.add(key, expires_at)
        self._entries = live
        await asyncio.to_thread(_rewrite, self.path, live)
        self._fd = open_private(self.path)
        if live:
            log.info("remembering %d used tickets from %s", len(live), self.path)

    @property
    def remembered(self) -> int:
        """How many used tickets the file holds (expired ones until the next compaction)."""
        return len(self._entries)

    async def add(self, key: str, expires_at: float) -> bool:
        """Record `key` until `expires_at` (unix s); False if it was already used."""
        if not await self._memory.add(key, expires_at):
            return False
        async with self._file_lock:
            if self._fd is None:
                raise RuntimeError("the used-ticket store is closed")
            await asyncio.to_thread(self._append, self._fd, _line(key, expires_at))
            self._entries[key] = expires_at
            self._appended += 1
            if self._appended >= self._compact_every:
                await self._compact()
        return True

    @staticmethod
    def _append(fd: int, line: bytes) -> None:
        os.write(fd, line)
        os.fsync(fd)

    async def _compact(self) -> None:
        """Rewrite the file with the live entries only (called under the file lock)."""
        now = self._clock()
        self._entries = {k: e for k, e in self._entries.items() if e >= now}
        await asyncio.to_thread(_rewrite, self.path, dict(self._entries))
        if self._fd is not None:
            os.close(self._fd)
        self._fd = open_private(self.path)
        self._appended = 0

    async def close(self) -> None:
        async with self._file_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


__all__ = ["UsedTickets"]
