"""Signed job receipts, sent to the coordinator in the background with retries.

A user's stream never waits on (or fails because of) the coordinator: the
servicer hands the receipt over and returns. Each receipt is signed with the
node key and submitted; a coordinator that cannot be reached is retried
3 times (1 s, 2 s, 4 s, with jitter); other refusals are logged, not retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import TroopError, Unavailable
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2
from troop_common.receipts import sign_receipt
from troop_worker.engine.types import usage_pb

log = logging.getLogger("troop.worker.receipts")

RETRIES = 3


@dataclass(frozen=True)
class JobRecord:
    """What the worker measured for one job."""

    job_id: str
    completed: bool
    duration_ms: int
    prompt_tokens: int
    completion_tokens: int
    # The user's signed presentation of the ticket and the nonce it signs.
    presentation: bytes = b""
    client_nonce: str = ""

    def to_pb(self, node_id: str) -> coordinator_pb2.JobReceipt:
        finished = timestamp_pb2.Timestamp()
        finished.FromNanoseconds(time.time_ns())
        outcome = (
            coordinator_pb2.JOB_OUTCOME_COMPLETED
            if self.completed
            else coordinator_pb2.JOB_OUTCOME_FAILED
        )
        return coordinator_pb2.JobReceipt(
            job_id=self.job_id,
            node_id=node_id,
            outcome=outcome,
            duration_ms=self.duration_ms,
            usage=usage_pb(self.prompt_tokens, self.completion_tokens),
            finished_at=finished,
            presentation=self.presentation,
            client_nonce=self.client_nonce,
        )


class ReceiptSender:
    """`submit(record)` returns at once; `drain(timeout)` waits for what is in flight."""

    def __init__(
        self,
        client: CoordinatorClient,
        node: Identity,
        node_id: str,
        *,
        backoff_s: float = 1.0,
    ) -> None:
        self._client = client
        self._node = node
        self._node_id = node_id
        self._backoff_s = backoff_s
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, record: JobRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._send(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, record: JobRecord) -> None:
        request = sign_receipt(self._node, record.to_pb(self._node_id))
        for attempt in range(RETRIES + 1):
            try:
                response = await self._client.submit_receipt(request)
            except Unavailable as exc:
                if attempt == RETRIES:
                    log.error("receipt for job %s not delivered: %s", record.job_id, exc)
                    return
                delay = self._backoff_s * 2**attempt * random.uniform(0.8, 1.2)
                log.warning("coordinator unreachable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
            except TroopError as exc:
                log.error("coordinator refused the receipt for job %s: %s", record.job_id, exc)
                return
            else:
                log.info(
                    "job %s receipt taken: %s, charged %d millicredits",
                    record.job_id,
                    coordinator_pb2.SettlementKind.Name(response.kind),
                    response.charged_millicredits,
                )
                return

    async def drain(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for receipts in flight, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%d receipts abandoned at shutdown", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
