"""Signed job receipts, sent to the coordinator in the background, batched, with retries.

A user's stream never waits on (or fails because of) the coordinator, and no job's
first token waits on another job's receipt: the servicer queues the job's record and
returns; a `troop_common.background.BackgroundSender` signs each with the node key
and submits it once no job is starting (`hot`, the servicer's HotPath), every
receipt that is ready by then in one go. A coordinator that cannot be reached is
retried 3 times (1 s, 2 s, 4 s, with jitter); other refusals are logged, not retried.
`drain` at a clean shutdown sends what is still queued (ADR 36).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from troop_common.background import BackgroundSender, HotPath
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
    """`submit(record)` returns at once; `drain(timeout)` sends what is queued (at stop)."""

    def __init__(
        self,
        client: CoordinatorClient,
        node: Identity,
        node_id: str,
        *,
        backoff_s: float = 1.0,
        max_wait_s: float = 0.5,
    ) -> None:
        """`max_wait_s`: how long receipts wait for a moment when no job is starting."""
        self._client = client
        self._node = node
        self._node_id = node_id
        self._sender: BackgroundSender[JobRecord] = BackgroundSender(
            self._send,
            name="receipts",
            retries=RETRIES,
            backoff_s=backoff_s,
            max_wait_s=max_wait_s,
            describe=lambda record: f"the receipt for job {record.job_id}",
        )

    @property
    def hot(self) -> HotPath:
        """The jobs still before their first token: receipts wait for them."""
        return self._sender.hot

    @property
    def pending(self) -> int:
        """Receipts queued, waiting for a retry or being sent."""
        return self._sender.pending

    @property
    def batches(self) -> int:
        """How many batches were sent (each: every receipt ready at the time)."""
        return self._sender.batches

    def submit(self, record: JobRecord) -> None:
        self._sender.submit(record)

    async def _send(self, record: JobRecord) -> None:
        request = sign_receipt(self._node, record.to_pb(self._node_id))
        try:
            response = await self._client.submit_receipt(request)
        except Unavailable:
            raise  # retried by the sender
        except TroopError as exc:
            log.error("coordinator refused the receipt for job %s: %s", record.job_id, exc)
            return
        log.debug(
            "job %s receipt taken: %s, charged %d millicredits",
            record.job_id,
            coordinator_pb2.SettlementKind.Name(response.kind),
            response.charged_millicredits,
        )

    async def drain(self, timeout_s: float) -> None:
        """Send every receipt still queued (within `timeout_s`); the rest is logged."""
        await self._sender.close(timeout_s)
