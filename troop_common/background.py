"""Work that must be done, but never before anyone's first token: receipts and usage reports.

A worker signs and sends a receipt for every job, a client countersigns every job
(ReportUsage). Both used to start the moment a stream ended, on the same event loop
that was setting up the next job, so the next job's first token waited behind them.
Here they queue instead:

- `HotPath` counts the jobs between their arrival and their first token
  (`leave = hot.enter()` … `leave()`).
- `BackgroundSender(send)` takes items with `submit` (no await, never fails); one task
  sends them: it waits for an item, takes every other item that is ready too (up to
  `batch`), waits until no job is starting (at most `max_wait_s`, so a steady stream of
  jobs delays them but cannot starve them), and sends the batch back to back on the
  caller's one channel: one at a time, since a burst of concurrent writes would queue at
  the coordinator's database ahead of the next job's Authorize. `send` raising
  `Unavailable` (the peer could not be reached) puts the item back for another try
  after `backoff_s`·2^attempt (±20 %, at most `max_backoff_s`: troop_common.resilience's
  `RetryPolicy`), up to `retries` times
  (None: until it goes; `send` then decides when an item is too old to matter); anything
  else `send` raises is logged and the item dropped (`send` itself logs refusals it
  expects). `durable`: the items are kept on disk by the caller (troop_common.outbox), so
  one undelivered at shutdown is not lost, only late.
- `drain(timeout_s)` sends everything still queued, retries included and due at once,
  without waiting for quiet, and waits up to `timeout_s` for it; `close(timeout_s)`, at
  a clean shutdown, drains, then logs what is still undelivered, item by item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from troop_common.errors import Unavailable
from troop_common.resilience import RetryPolicy

T = TypeVar("T")
log = logging.getLogger("troop.background")


class HotPath:
    """How many jobs are between their arrival and their first token."""

    def __init__(self) -> None:
        self.starting = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    def enter(self) -> Callable[[], None]:
        """A job arrived; call what this returns when it sent its first token or ended
        without one (calling it again does nothing)."""
        self.starting += 1
        self._quiet.clear()
        done = False

        def leave() -> None:
            nonlocal done
            if done:
                return
            done = True
            self.starting -= 1
            if self.starting == 0:
                self._quiet.set()

        return leave

    async def quiet(self, max_wait_s: float, unless: asyncio.Event | None = None) -> None:
        """Until no job is starting, `max_wait_s` has passed, or `unless` is set."""
        if not self.starting:
            return
        waits = [asyncio.ensure_future(self._quiet.wait())]
        if unless is not None:
            waits.append(asyncio.ensure_future(unless.wait()))
        try:
            await asyncio.wait(waits, timeout=max_wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()


@dataclass
class _Item(Generic[T]):
    value: T
    attempt: int = 0


class BackgroundSender(Generic[T]):
    """Queues items and sends them off the hot path, in batches; see the module doc."""

    def __init__(
        self,
        send: Callable[[T], Awaitable[None]],
        *,
        name: str,
        hot: HotPath | None = None,
        batch: int = 16,
        max_wait_s: float = 0.5,
        retries: int | None = 0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        describe: Callable[[T], str] = repr,
        durable: bool = False,
    ) -> None:
        self.hot = hot or HotPath()
        self.name = name
        self._send = send
        self._batch = batch
        self._max_wait_s = max_wait_s
        self._retries = retries
        self._retry = RetryPolicy(base_delay_s=backoff_s, max_delay_s=max_backoff_s)
        self._describe = describe
        self._durable = durable
        self._ready: list[_Item[T]] = []
        self._waiting: dict[asyncio.TimerHandle, _Item[T]] = {}  # retries not yet due
        self._in_flight = 0
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._flushing = False
        self._closing = False
        self._go = asyncio.Event()  # set while draining: stop waiting for quiet
        self.sent = 0
        self.batches = 0

    @property
    def pending(self) -> int:
        """Items queued, waiting for a retry or being sent."""
        return len(self._ready) + len(self._waiting) + self._in_flight

    def submit(self, value: T) -> None:
        """Queue `value`; returns at once."""
        self._put(_Item(value))

    def _put(self, item: _Item[T]) -> None:
        self._ready.append(item)
        if self._wake is None or self._idle is None:
            self._wake, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        while True:
            if not self._ready:
                if not self._waiting and not self._in_flight:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._flushing:
                await self.hot.quiet(self._max_wait_s, unless=self._go)
            batch, self._ready = self._ready[: self._batch], self._ready[self._batch :]
            self._in_flight += len(batch)
            self.batches += 1
            try:
                for item in batch:  # back to back: a burst of writes would queue at the
                    await self._one(item)  # peer's database ahead of the next Authorize
                    self._in_flight -= 1
            except BaseException:
                self._in_flight = 0
                raise

    async def _one(self, item: _Item[T]) -> None:
        try:
            await self._send(item.value)
        except Unavailable as exc:
            if self._retries is not None and item.attempt >= self._retries:
                log.error("%s: %s not delivered: %s", self.name, self._describe(item.value), exc)
                return
            item.attempt += 1
            draining = self._flushing or self._closing
            if draining and self._retries is not None:
                self._ready.append(item)  # draining: the next tries go at once
                return
            delay = self._retry.delay(item.attempt - 1)
            if draining:  # tries without end: still spaced, but within the drain's time
                delay = min(delay, 1.0)
            log.warning("%s: %s; retrying in %.1f s", self.name, exc, delay)
            handle = asyncio.get_running_loop().call_later(delay, self._due, item)
            self._waiting[handle] = item
        except Exception:
            log.exception("%s: %s not delivered", self.name, self._describe(item.value))
        else:
            self.sent += 1

    def _due(self, item: _Item[T]) -> None:
        for handle, waiting in list(self._waiting.items()):
            if waiting is item:
                del self._waiting[handle]
        self._put(item)

    async def drain(self, timeout_s: float) -> bool:
        """Send everything queued now (retries too), without waiting for quiet, for at
        most `timeout_s`; True when nothing is left. Nothing is dropped."""
        self._flushing = True
        self._go.set()
        try:
            for handle, item in list(self._waiting.items()):
                handle.cancel()
                del self._waiting[handle]
                self._put(item)
            if self._idle is not None and self.pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), timeout_s)
        finally:
            self._flushing = False
            self._go.clear()
        return not self.pending

    async def close(self, timeout_s: float) -> None:
        """At a clean shutdown: `drain`, then log and drop what is still undelivered."""
        self._closing = True
        try:
            await self.drain(timeout_s)
            for handle in self._waiting:
                handle.cancel()
            lost = [item.value for item in (*self._ready, *self._waiting.values())]
            self._waiting = {}
            stuck = self._in_flight
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                self._task = None
            self._ready = []
            for value in lost:
                if self._durable:
                    log.warning("%s: %s kept for the next start", self.name, self._describe(value))
                else:
                    log.error(
                        "%s: %s not delivered before shutdown", self.name, self._describe(value)
                    )
            if stuck:
                log.error("%s: %d still unanswered at shutdown", self.name, stuck)
        finally:
            self._closing = False
