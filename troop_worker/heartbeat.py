"""Heartbeats: tell the coordinator, every few seconds, that this node is alive and how busy.

The first beat goes out at once; after that the coordinator's
`interval_seconds` (when set) decides the pace. A failed beat is logged and
the loop goes on, so a coordinator restart never takes the worker down.

Each beat's deadline is the lower of the request timeout and the interval (but at
least 1 s, for the sub-second intervals of tests): a beat is never still waiting when
the next is due, and the node TTL (three intervals by default) is never spent on one.
A breaker (troop_common.resilience) counts beats the transport failed; once open,
beats are not sent until its cooldown's trial beat: a coordinator that is down is not
dialled every interval meanwhile, and after such an outage the node is listed again
within the cooldown (60 s by default) of the coordinator's return (ADR 49).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import TroopError
from troop_common.proto import coordinator_pb2
from troop_common.resilience import DEFAULT_REQUEST_TIMEOUT_S, CircuitBreaker

log = logging.getLogger("troop.worker.heartbeat")
# The shortest deadline a beat gets: not failed for a moment of scheduling.
MIN_DEADLINE_S = 1.0


class Heartbeater:
    """`start()` runs the loop in a task; `stop()` ends it."""

    def __init__(
        self,
        client: CoordinatorClient,
        build: Callable[[], coordinator_pb2.HeartbeatRequest],
        interval_s: float,
        *,
        breaker: CircuitBreaker | None = None,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        self._client = client
        self._build = build
        self.interval_s = interval_s
        self.breaker = breaker or CircuitBreaker(f"the coordinator at {client.address}")
        self.request_timeout_s = request_timeout_s
        self.multiplier: float | None = None
        # Whether the coordinator has proven this node's endpoint (only then is it listed).
        self.endpoint_proven = False
        self.sent = 0
        self.first_success = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    @property
    def deadline_s(self) -> float:
        """One beat's deadline: below the node TTL, and over before the next is due."""
        return max(MIN_DEADLINE_S, min(self.request_timeout_s, self.interval_s))

    async def beat(self) -> None:
        """One heartbeat (errors propagate; Unavailable at once while the breaker is open)."""
        with self.breaker.guard():
            response = await self._client.heartbeat(self._build(), timeout_s=self.deadline_s)
        self.sent += 1
        self.first_success.set()
        if response.interval_seconds > 0:
            self.interval_s = float(response.interval_seconds)
        if response.endpoint_proven != self.endpoint_proven or self.sent == 2:
            if response.endpoint_proven:
                log.info("the coordinator proved this node's endpoint: it is listed")
            elif self.sent >= 2:
                # The first beat starts the proof; by the second it should be done.
                log.warning(
                    "the coordinator has not proven this node's endpoint yet, so it is not "
                    "listed: can the coordinator reach the advertised address?"
                )
            self.endpoint_proven = response.endpoint_proven
        if response.multiplier != self.multiplier:
            log.info("coordinator multiplier for this node: %.3f", response.multiplier)
            self.multiplier = response.multiplier

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.beat()
            except TroopError as exc:
                # Log the first failure loudly, then quietly until it recovers.
                (log.debug if failing else log.warning)("heartbeat failed: %s", exc)
                failing = True
            except Exception:
                log.exception("heartbeat failed unexpectedly")
                failing = True
            else:
                if failing:
                    log.info("heartbeats reach the coordinator again")
                failing = False
            await asyncio.sleep(self.interval_s)
