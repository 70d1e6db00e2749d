"""A job as the coordinator's ledger holds it, for the SDK's callers (no protobuf)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from troop_common.proto import coordinator_pb2

_STATES = {
    coordinator_pb2.JOB_STATE_OPEN: "open",
    coordinator_pb2.JOB_STATE_PENDING: "pending",
    coordinator_pb2.JOB_STATE_CHARGED: "charged",
    coordinator_pb2.JOB_STATE_REFUNDED: "refunded",
    coordinator_pb2.JOB_STATE_EXPIRED: "expired",
}


@dataclass(frozen=True)
class Job:
    """One of your jobs: its state ("open", "pending", "charged", "refunded" or "expired")
    and what it reserved and was charged, in millicredits."""

    job_id: str
    model: str
    node_id: str
    state: str
    reserved_millicredits: int
    charged_millicredits: int
    created_at: datetime
    settled_at: datetime | None
    disputed: bool

    @property
    def settled(self) -> bool:
        return self.state in ("charged", "refunded", "expired")

    @classmethod
    def from_pb(cls, reply: coordinator_pb2.GetJobResponse) -> Job:
        return cls(
            job_id=reply.job_id,
            model=reply.model,
            node_id=reply.node_id,
            state=_STATES.get(reply.state, "unknown"),
            reserved_millicredits=reply.reserved_millicredits,
            charged_millicredits=reply.charged_millicredits,
            created_at=reply.created_at.ToDatetime(),
            settled_at=reply.settled_at.ToDatetime() if reply.HasField("settled_at") else None,
            disputed=reply.disputed,
        )
