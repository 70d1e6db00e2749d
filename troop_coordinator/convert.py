"""Domain values ↔ protobuf, at the edge only."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from troop_common.proto import common_pb2
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.db.models import EntryKind, JobStatus
from troop_coordinator.ledger import Entry, JobView, Settlement
from troop_coordinator.node_checks import NodeChecks
from troop_coordinator.pricing import ModelPrice
from troop_coordinator.registry import LiveNode, NodeHardware, NodeLoad

_KINDS = {
    EntryKind.GRANT: pb.TRANSACTION_KIND_GRANT,
    EntryKind.RESERVE: pb.TRANSACTION_KIND_RESERVE,
    EntryKind.RELEASE: pb.TRANSACTION_KIND_RELEASE,
    EntryKind.EARN: pb.TRANSACTION_KIND_EARN,
    EntryKind.REFUND: pb.TRANSACTION_KIND_REFUND,
}
_SETTLEMENTS = {
    JobStatus.CHARGED: pb.SETTLEMENT_KIND_CHARGED,
    JobStatus.REFUNDED: pb.SETTLEMENT_KIND_REFUNDED,
    JobStatus.EXPIRED: pb.SETTLEMENT_KIND_EXPIRED,
    JobStatus.OPEN: pb.SETTLEMENT_KIND_PENDING,
}


def timestamp(when: datetime | float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    if isinstance(when, datetime):
        stamp.FromDatetime(when.astimezone(UTC))
    else:
        stamp.FromNanoseconds(int(when * 1e9))
    return stamp


def load_from_pb(load: pb.NodeLoad) -> NodeLoad:
    return NodeLoad(load.active_jobs, load.queue_depth, load.max_concurrent_jobs)


def hardware_from_pb(hardware: pb.NodeHardware) -> NodeHardware:
    return NodeHardware(hardware.device, hardware.cpu_count, hardware.memory_bytes)


def checks_to_pb(checks: NodeChecks, now: float) -> pb.NodeVerification:
    """A node's verification record as of `now`: held_until and failed_models only
    while they hold."""
    message = pb.NodeVerification(
        checks_passed=checks.checks_passed,
        checks_failed=checks.checks_failed,
        failed_models=checks.failed(now),
        barred=checks.barred,
    )
    if checks.last_checked is not None:
        message.last_checked.CopyFrom(timestamp(checks.last_checked))
    if checks.held_until is not None and checks.held(now):
        message.held_until.CopyFrom(timestamp(checks.held_until))
    return message


def node_to_pb(node: LiveNode, now: float) -> pb.NodeInfo:
    return pb.NodeInfo(
        node_id=node.node_id,
        endpoint=node.endpoint,
        models=list(node.models),
        load=pb.NodeLoad(
            active_jobs=node.load.active_jobs,
            queue_depth=node.load.queue_depth,
            max_concurrent_jobs=node.load.max_concurrent_jobs,
        ),
        hardware=pb.NodeHardware(
            device=node.hardware.device,
            cpu_count=node.hardware.cpu_count,
            memory_bytes=node.hardware.memory_bytes,
        ),
        multiplier=node.multiplier,
        last_seen=timestamp(node.last_seen),
        node_public_key=node.node_public_key,
        tls=node.tls,
        verification=checks_to_pb(node.checks, now),
    )


def entry_to_pb(entry: Entry) -> pb.Transaction:
    return pb.Transaction(
        id=entry.id,
        created_at=timestamp(entry.created_at),
        kind=_KINDS[entry.kind],
        amount_millicredits=entry.amount_millicredits,
        job_id=entry.job_id or "",
        balance_after_millicredits=entry.balance_after_millicredits,
    )


def settlement_to_pb(settlement: Settlement) -> pb.SubmitReceiptResponse:
    return pb.SubmitReceiptResponse(
        job_id=settlement.job_id,
        kind=_SETTLEMENTS[settlement.status],
        charged_millicredits=settlement.charged_millicredits,
        released_millicredits=settlement.released_millicredits,
        already_settled=settlement.already_settled,
    )


def price_to_pb(price: ModelPrice) -> common_pb2.ModelPrice:
    return common_pb2.ModelPrice(
        prompt_millicredits_per_1k_tokens=price.prompt_per_1k,
        completion_millicredits_per_1k_tokens=price.completion_per_1k,
        parameters=price.parameters,
        max_prompt_tokens=price.max_prompt_tokens,
        max_completion_tokens=price.max_completion_tokens,
    )


def job_to_pb(job: JobView) -> pb.GetJobResponse:
    if job.status is JobStatus.OPEN:
        spoke = job.receipt_received or job.countersigned
        state = pb.JOB_STATE_PENDING if spoke else pb.JOB_STATE_OPEN
    else:
        state = {
            JobStatus.CHARGED: pb.JOB_STATE_CHARGED,
            JobStatus.REFUNDED: pb.JOB_STATE_REFUNDED,
            JobStatus.EXPIRED: pb.JOB_STATE_EXPIRED,
        }[job.status]
    reply = pb.GetJobResponse(
        job_id=job.job_id,
        model=job.model,
        node_id=job.node_id,
        state=state,
        reserved_millicredits=job.reserved_millicredits,
        charged_millicredits=job.charged_millicredits,
        max_tokens=job.max_tokens,
        max_prompt_tokens=job.max_prompt_tokens,
        prompt_millicredits_per_1k_tokens=job.prompt_price_per_1k,
        completion_millicredits_per_1k_tokens=job.completion_price_per_1k,
        created_at=timestamp(job.created_at),
        receipt_received=job.receipt_received,
        countersigned=job.countersigned,
        disputed=job.disputed,
    )
    if job.settled_at is not None:
        reply.settled_at.CopyFrom(timestamp(job.settled_at))
    if job.charged_tokens is not None:
        prompt, completion = job.charged_tokens
        usage = reply.charged_usage
        usage.prompt_tokens, usage.completion_tokens = prompt, completion
        usage.total_tokens = prompt + completion
    return reply
