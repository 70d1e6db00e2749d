"""A load of clients doing Authorize -> ReportUsage -> SubmitReceipt in a loop, against one
coordinator, recording how every call ended (for the backend-outage tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

import grpc

from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import TroopError
from troop_common.keys import Identity
from troop_common.resilience import NO_RETRY

from . import conftest as state

CALL_TIMEOUT_S = 5.0
# (method, status code name, ErrorInfo reason) of a failed call
Failure = tuple[str, str, str]


@dataclass
class Load:
    """`users` clients cycling until `stop()`; a failed call ends its cycle. Clients do not
    retry, so each call's own status is what is recorded."""

    address: str
    node: state.TestNode
    users: list[Identity]
    succeeded: int = 0  # whole cycles
    failures: Counter[Failure] = field(default_factory=Counter)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _clients: list[CoordinatorClient] = field(default_factory=list)

    def start(self) -> None:
        for user in self.users:
            client = CoordinatorClient(self.address, user, retry=NO_RETRY, timeout_s=CALL_TIMEOUT_S)
            self._clients.append(client)
            self._tasks.append(asyncio.create_task(self._cycle(client)))

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def unexpected(self, reasons: Collection[str] = ("UNAVAILABLE",)) -> dict[Failure, int]:
        """Failures other than UNAVAILABLE with one of `reasons` (INTERNAL, a deadline...)."""
        unavailable = grpc.StatusCode.UNAVAILABLE.name
        return {
            k: n for k, n in self.failures.items() if k[1] != unavailable or k[2] not in reasons
        }

    async def _cycle(self, client: CoordinatorClient) -> None:
        assert client.identity is not None
        while True:
            method = "Authorize"
            try:
                job = await client.authorize(state.MODEL)
                method = "ReportUsage"
                await client.report_usage(job.job_id, completion_tokens=5, stream_ms=10)
                method = "SubmitReceipt"
                await client.submit_receipt(self.node.receipt(job.job_id, client.identity))
            except TroopError as exc:
                self.failures[method, exc.code.name, exc.reason] += 1
                await asyncio.sleep(0.01)  # a client pausing before its next try
            except Exception as exc:  # not a status at all: recorded, never expected
                self.failures[method, type(exc).__name__, str(exc)] += 1
                await asyncio.sleep(0.01)
            else:
                self.succeeded += 1

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in self._clients:
            await client.close()
