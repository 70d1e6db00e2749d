"""Signed job receipts, sent to the coordinator in the background, batched, never lost.

A user's stream never waits on (or fails because of) the coordinator, and no job's
first token waits on another job's receipt: the servicer hands the job's record over and
returns; the receipt is signed with the node key at once, kept in the worker's outbox on
disk (troop_common.outbox) and queued; a `troop_common.background.BackgroundSender`
submits it once no job is starting (`hot`, the servicer's HotPath), every receipt that is
ready by then in one go. A coordinator that cannot be reached is tried again with backoff
(1 s, 2 s, 4 s … at most 60 s, with jitter) for as long as the receipt can still settle
its job (`max_age_s`: the ticket's life plus the coordinator's settle grace, 10 minutes by
default, with room to spare); an answer, or a refusal, removes it from the outbox. A
worker that stops (cleanly or not) with receipts undelivered sends them at its next start
(`resume`). `drain` at a clean shutdown sends what it can within the grace (ADR 36, 44).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.outbox import DurableSender
from troop_common.proto import coordinator_pb2
from troop_common.receipts import sign_receipt
from troop_worker.engine.types import usage_pb

log = logging.getLogger("troop.worker.receipts")

# A receipt older than this cannot settle its job any more (ticket TTL 300 s + settle grace
# 300 s by default): it is dropped rather than retried for ever.
MAX_AGE_S = 3600.0


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
    # SHA-256 of the output evidence the last chunk carried (empty: none).
    evidence_sha256: bytes = b""

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
            evidence_sha256=self.evidence_sha256,
        )


@dataclass(frozen=True)
class SignedReceipt:
    """A receipt as it is sent: the signed request, and what the sender needs to know of it."""

    job_id: str
    finished_at_s: float
    request: coordinator_pb2.SubmitReceiptRequest

    @classmethod
    def parse(cls, data: bytes) -> SignedReceipt:
        """From the outbox's bytes (a serialized SubmitReceiptRequest); ValueError if not one."""
        try:
            request = coordinator_pb2.SubmitReceiptRequest.FromString(data)
            receipt = coordinator_pb2.JobReceipt.FromString(request.receipt)
        except DecodeError as exc:
            raise ValueError(f"not a signed receipt: {exc}") from exc
        if not receipt.job_id:
            raise ValueError("a receipt without a job id")
        return cls(receipt.job_id, receipt.finished_at.ToNanoseconds() / 1e9, request)


class ReceiptSender(DurableSender[SignedReceipt]):
    """`submit(record)` returns at once; `drain(timeout)` sends what is queued (at stop);
    `resume()` sends what an earlier run left in the outbox."""

    name = "receipts"
    loss_level = logging.ERROR  # a receipt lost is a job its node is not paid for

    def __init__(
        self,
        client: CoordinatorClient,
        node: Identity,
        node_id: str,
        *,
        outbox: Path | None = None,
        backoff_s: float = 1.0,
        max_wait_s: float = 0.5,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        """`outbox`: the directory receipts are kept in until answered (None: memory only).
        `max_wait_s`: how long receipts wait for a moment when no job is starting."""
        super().__init__(
            outbox=outbox, max_age_s=max_age_s, backoff_s=backoff_s, max_wait_s=max_wait_s,
            retries=None, log=log,
        )  # fmt: skip
        self._client = client
        self._node = node
        self._node_id = node_id
        self.submitted = 0  # this run's jobs whose receipt was queued, sent or not

    def sign(self, record: JobRecord) -> SignedReceipt:
        request = sign_receipt(self._node, record.to_pb(self._node_id))
        return SignedReceipt(record.job_id, time.time(), request)

    def submit(self, record: JobRecord) -> None:
        self.submitted += 1
        self.send_signed(self.sign(record))

    def send_signed(self, receipt: SignedReceipt) -> None:
        """Keep `receipt` in the outbox, then queue it."""
        self.queue(receipt)

    def key(self, message: SignedReceipt) -> str:
        return message.job_id

    def encode(self, message: SignedReceipt) -> bytes:
        return message.request.SerializeToString()

    def parse(self, data: bytes) -> SignedReceipt:
        return SignedReceipt.parse(data)

    def made_at(self, message: SignedReceipt) -> float:
        return message.finished_at_s

    def describe(self, message: SignedReceipt) -> str:
        return f"the receipt for job {message.job_id}"

    async def deliver(self, message: SignedReceipt) -> None:
        response = await self._client.submit_receipt(message.request)
        log.debug(
            "job %s receipt taken: %s, charged %d millicredits",
            message.job_id,
            coordinator_pb2.SettlementKind.Name(response.kind),
            response.charged_millicredits,
        )

    async def drain(self, timeout_s: float) -> None:
        """Send every receipt still queued (within `timeout_s`) and stop; the outbox keeps
        the rest."""
        await self.close(timeout_s)
