"""How many jobs a worker runs at once, and a fair queue for the rest.

`max_jobs` run at once (what the engine batches). A job beyond that waits in
a bounded queue instead of being refused: when a slot frees, it goes to the
waiting user with the fewest running jobs (ties: the user served least
recently), so one user's burst of requests shares the
node with everybody else's instead of taking it or being turned away while
there is capacity. Refused with RateLimited (RESOURCE_EXHAUSTED + RetryInfo)
only beyond the bounds: `max_queued` waiting in all, or `max_jobs_per_user`
running plus waiting for one user. A waiting caller that goes away leaves the
queue at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from troop_common.errors import RateLimited

RETRY_AFTER_S = 1.0


class JobLimiter:
    """`async with limiter.admit(user):` holds a running slot for one job (waiting for one)."""

    def __init__(self, max_jobs: int, max_jobs_per_user: int, max_queued: int = 0) -> None:
        self.max_jobs = max_jobs
        self.max_jobs_per_user = max_jobs_per_user
        self.max_queued = max_queued
        self.active = 0
        self._running: Counter[str] = Counter()
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}  # each user's FIFO
        # When each user with jobs running or waiting was last given a slot.
        self._served: dict[str, int] = {}
        self._grants = 0

    @property
    def queued(self) -> int:
        """Jobs waiting for a slot."""
        return sum(len(futures) for futures in self._waiting.values())

    @asynccontextmanager
    async def admit(self, user: str) -> AsyncIterator[None]:
        # No await between the checks and the bookkeeping: atomic on the event loop.
        mine = self._running[user] + len(self._waiting.get(user, ()))
        if mine >= self.max_jobs_per_user:
            raise RateLimited(
                f"this node already has {self.max_jobs_per_user} of your jobs running or queued",
                RETRY_AFTER_S,
            )
        if self.active < self.max_jobs and not self.queued:
            self._take(user)
        else:
            await self._wait(user)
        try:
            yield
        finally:
            self._release(user)

    async def _wait(self, user: str) -> None:
        if self.queued >= self.max_queued:
            raise RateLimited(
                f"this node is running its maximum of {self.max_jobs} jobs"
                + (f" with {self.max_queued} waiting" if self.max_queued else ""),
                RETRY_AFTER_S,
            )
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user, deque()).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(user)  # granted just as the caller left: hand the slot on
            else:
                self._forget(user, granted)
            raise

    def _take(self, user: str) -> None:
        self.active += 1
        self._running[user] += 1
        self._grants += 1
        self._served[user] = self._grants

    def _release(self, user: str) -> None:
        self.active -= 1
        self._running[user] -= 1
        if self._running[user] <= 0:
            del self._running[user]
        self._grant()

    def _grant(self) -> None:
        while self.active < self.max_jobs and self._waiting:
            user = min(self._waiting, key=lambda u: (self._running[u], self._served.get(u, 0)))
            futures = self._waiting[user]
            granted = futures.popleft()
            if not futures:
                del self._waiting[user]
            if granted.done():  # its caller was cancelled and has not run yet: skip it
                continue
            self._take(user)
            granted.set_result(None)
        for user in [u for u in self._served if u not in self._running and u not in self._waiting]:
            del self._served[user]

    def _forget(self, user: str, granted: asyncio.Future[None]) -> None:
        futures = self._waiting.get(user)
        if futures is None or granted not in futures:
            return
        futures.remove(granted)
        if not futures:
            del self._waiting[user]
