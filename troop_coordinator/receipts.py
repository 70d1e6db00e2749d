"""A node's signed receipt for a job: checked against the job, its node's key, the
ticket's bounds and the user's presentation, then handed to the ledger (ADR 4, 17).

The receipt stays the protobuf message the node signed: its signature covers those
bytes, so it is verified as it came (troop_common.receipts), and only then read.
"""

from __future__ import annotations

from datetime import datetime

from troop_common.errors import NotFound, PermissionDenied, SignatureInvalid
from troop_common.presentation import verify_presentation
from troop_common.proto import coordinator_pb2 as pb
from troop_common.receipts import verify_receipt_signature
from troop_coordinator.ledger import Ledger, NodeClaim, Outcome, Settlement
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.validation import Violations, check_receipt_usage


class Receipts:
    def __init__(self, ledger: Ledger, nodes: NodeDirectory) -> None:
        self.ledger = ledger
        self.nodes = nodes

    async def submit(
        self, request: pb.SubmitReceiptRequest, receipt: pb.JobReceipt, now: datetime
    ) -> Settlement:
        """Settle (or record, until the client countersigns) a well-formed receipt:
        NotFound for an unknown job, PermissionDenied for another node's,
        SignatureInvalid or PresentationInvalid for a forged one, InvalidArgument for
        counts beyond the ticket's bounds."""
        job = await self.ledger.job_bounds(receipt.job_id)
        if job is None:
            raise NotFound(f"no job {receipt.job_id}")
        if job.node_id != receipt.node_id:
            raise PermissionDenied(f"job {receipt.job_id} was given to another node")
        key = await self.nodes.bound_key(receipt.node_id)
        if key is None:
            raise SignatureInvalid("the receipt's node has no key on record")
        verify_receipt_signature(request, key)
        # Signed by the node: now its numbers are worth checking against the ticket.
        check = Violations()
        check_receipt_usage(check, receipt.usage, job)
        check.raise_if_any()
        verify_presentation(
            job.user_public_key,
            receipt.job_id,
            receipt.node_id,
            receipt.client_nonce,
            receipt.presentation,
        )
        completed = receipt.outcome == pb.JOB_OUTCOME_COMPLETED
        settlement = await self.ledger.record_receipt(
            NodeClaim(
                job_id=receipt.job_id,
                node_id=receipt.node_id,
                outcome=Outcome.COMPLETED if completed else Outcome.FAILED,
                prompt_tokens=receipt.usage.prompt_tokens,
                completion_tokens=receipt.usage.completion_tokens,
                duration_ms=receipt.duration_ms,
                evidence_sha256=receipt.evidence_sha256,
            ),
            now,
        )
        # Settling may have moved the node's reputation or withdrawn its proof: its next
        # heartbeat reads its row instead of what this coordinator remembers (nodes.py).
        self.nodes.forget(receipt.node_id)
        return settlement
