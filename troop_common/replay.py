"""Replay sets: remember each id (ticket job id, assertion jti) until it expires.

`add` is atomic test-and-set: True the first time, False for a replay. The
in-process set serves the embedded default and a single worker; a Redis set
with SET NX EX serves replicas (`troop_common.redis_store`).
"""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import Protocol


class ReplaySet(Protocol):
    async def add(self, key: str, expires_at: float) -> bool:
        """Record `key` until `expires_at` (unix s); False if it was already there."""
        ...


class MemoryReplaySet:
    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []
        self._lock = asyncio.Lock()

    async def add(self, key: str, expires_at: float) -> bool:
        async with self._lock:
            now = time.time()
            while self._expiry and self._expiry[0][0] < now:
                when, old = heapq.heappop(self._expiry)
                if self._seen.get(old) == when:
                    del self._seen[old]
            if key in self._seen:
                return False
            self._seen[key] = expires_at
            heapq.heappush(self._expiry, (expires_at, key))
            return True
