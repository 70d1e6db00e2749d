"""What the SDK's account, ledger and network calls return: frozen dataclasses, no protobuf.

Each type reads its coordinator reply in its own `from_pb`, here and nowhere else (ADR 42):
a timestamp becomes an aware UTC `datetime` (None when unset), an enum a lowercase string,
an empty id None, and credits stay integer millicredits (ADR 2). The chat stream's own types
(ChatChunk, Usage) are converted the same way in troop_client.chat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

from google.protobuf.message import Message as ProtoMessage
from google.protobuf.timestamp_pb2 import Timestamp

from troop_client.chat import Usage
from troop_common.proto import common_pb2
from troop_common.proto import coordinator_pb2 as pb

T = TypeVar("T")

JobState = Literal["open", "pending", "charged", "refunded", "expired", "unknown"]
TransactionKind = Literal["grant", "reserve", "release", "earn", "refund", "unknown"]

_JOB_STATES: dict[int, JobState] = {
    pb.JOB_STATE_OPEN: "open",
    pb.JOB_STATE_PENDING: "pending",
    pb.JOB_STATE_CHARGED: "charged",
    pb.JOB_STATE_REFUNDED: "refunded",
    pb.JOB_STATE_EXPIRED: "expired",
}
_TRANSACTION_KINDS: dict[int, TransactionKind] = {
    pb.TRANSACTION_KIND_GRANT: "grant",
    pb.TRANSACTION_KIND_RESERVE: "reserve",
    pb.TRANSACTION_KIND_RELEASE: "release",
    pb.TRANSACTION_KIND_EARN: "earn",
    pb.TRANSACTION_KIND_REFUND: "refund",
}


def _utc(timestamp: Timestamp) -> datetime:
    when: datetime = timestamp.ToDatetime(tzinfo=UTC)
    return when


def _utc_or_none(message: ProtoMessage, name: str) -> datetime | None:
    """The Timestamp field `name` of `message`; None when unset (a job not yet settled)."""
    return _utc(getattr(message, name)) if message.HasField(name) else None


@dataclass(frozen=True)
class Balance:
    """A user's spendable credits and the credits held by open reservations."""

    public_key: str
    balance_millicredits: int
    reserved_millicredits: int

    @property
    def credits(self) -> float:
        return self.balance_millicredits / 1000

    @classmethod
    def from_pb(cls, reply: pb.GetBalanceResponse) -> Balance:
        return cls(reply.public_key, reply.balance_millicredits, reply.reserved_millicredits)


@dataclass(frozen=True)
class Joined:
    """The account after `join`: what this call granted (the starter credits, or 0 when the
    identity had joined before, `already_joined`) and the balance now."""

    public_key: str
    granted_millicredits: int
    balance_millicredits: int
    already_joined: bool

    @classmethod
    def from_pb(cls, reply: pb.JoinResponse) -> Joined:
        return cls(
            public_key=reply.public_key,
            granted_millicredits=reply.granted_millicredits,
            balance_millicredits=reply.balance_millicredits,
            already_joined=reply.already_joined,
        )


@dataclass(frozen=True)
class Grant:
    """An authorized job: the node to stream from, the credits reserved for it until it
    settles (or `expires_at` passes unused), its token bounds and the price it is charged at.

    `ticket` is the bearer credential the node accepts once; it is left out of `repr` so a
    logged grant does not leak it."""

    job_id: str
    node_id: str
    endpoint: str
    node_public_key: str
    expires_at: datetime
    reserved_millicredits: int
    max_tokens: int
    max_prompt_tokens: int
    prompt_millicredits_per_1k: int
    completion_millicredits_per_1k: int
    ticket: str = field(repr=False)
    # Whether the node serves TLS at `endpoint` (it declared it, the coordinator proved it).
    tls: bool = False

    @classmethod
    def from_pb(cls, reply: pb.AuthorizeResponse) -> Grant:
        return cls(
            job_id=reply.job_id,
            node_id=reply.node_id,
            endpoint=reply.endpoint,
            node_public_key=reply.node_public_key,
            expires_at=_utc(reply.expires_at),
            reserved_millicredits=reply.reserved_millicredits,
            max_tokens=reply.max_tokens,
            max_prompt_tokens=reply.max_prompt_tokens,
            prompt_millicredits_per_1k=reply.price.prompt_millicredits_per_1k_tokens,
            completion_millicredits_per_1k=reply.price.completion_millicredits_per_1k_tokens,
            ticket=reply.ticket,
            tls=reply.tls,
        )


@dataclass(frozen=True)
class Job:
    """One of your jobs: its state ("open", "pending", "charged", "refunded" or "expired")
    and what it reserved and was charged, in millicredits."""

    job_id: str
    model: str
    node_id: str
    state: JobState
    reserved_millicredits: int
    charged_millicredits: int
    created_at: datetime
    settled_at: datetime | None
    disputed: bool
    # Once charged: the tokens the charge is for (None before, or for a refunded job).
    charged_tokens: Usage | None = None

    @property
    def settled(self) -> bool:
        return self.state in ("charged", "refunded", "expired")

    @classmethod
    def from_pb(cls, reply: pb.GetJobResponse) -> Job:
        return cls(
            job_id=reply.job_id,
            model=reply.model,
            node_id=reply.node_id,
            state=_JOB_STATES.get(reply.state, "unknown"),
            reserved_millicredits=reply.reserved_millicredits,
            charged_millicredits=reply.charged_millicredits,
            created_at=_utc(reply.created_at),
            settled_at=_utc_or_none(reply, "settled_at"),
            disputed=reply.disputed,
            charged_tokens=(
                Usage(reply.charged_usage.prompt_tokens, reply.charged_usage.completion_tokens)
                if reply.HasField("charged_usage")
                else None
            ),
        )


@dataclass(frozen=True)
class Transaction:
    """One ledger entry of yours. `amount_millicredits` is signed (negative left the
    balance); `job_id` is None for an entry no job caused (the starter grant)."""

    id: int
    kind: TransactionKind
    amount_millicredits: int
    balance_after_millicredits: int
    job_id: str | None
    created_at: datetime

    @classmethod
    def from_pb(cls, entry: pb.Transaction) -> Transaction:
        return cls(
            id=entry.id,
            kind=_TRANSACTION_KINDS.get(entry.kind, "unknown"),
            amount_millicredits=entry.amount_millicredits,
            balance_after_millicredits=entry.balance_after_millicredits,
            job_id=entry.job_id or None,
            created_at=_utc(entry.created_at),
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, newest first. Pass `next_page_token` back for the next page;
    it is empty on the last one."""

    items: tuple[T, ...]
    next_page_token: str = ""


def transaction_page(reply: pb.ListTransactionsResponse) -> Page[Transaction]:
    return Page(tuple(Transaction.from_pb(t) for t in reply.transactions), reply.next_page_token)


@dataclass(frozen=True)
class Verification:
    """What verifiers found when they checked a node's output (ADR 52): checks passed and
    failed, when last checked, until when a failure holds its earnings (None: not held),
    the models it failed recently, and whether it is barred from the network."""

    checks_passed: int
    checks_failed: int
    last_checked: datetime | None
    held_until: datetime | None
    failed_models: tuple[str, ...]
    barred: bool

    @classmethod
    def from_pb(cls, record: pb.NodeVerification) -> Verification:
        return cls(
            checks_passed=record.checks_passed,
            checks_failed=record.checks_failed,
            last_checked=_utc_or_none(record, "last_checked"),
            held_until=_utc_or_none(record, "held_until"),
            failed_models=tuple(record.failed_models),
            barred=record.barred,
        )


@dataclass(frozen=True)
class Node:
    """A live worker node whose endpoint proved its key: what it serves, its load, its
    hardware, its multiplier (proven speed over the reference machine) and when it last
    heartbeat."""

    node_id: str
    endpoint: str
    node_public_key: str
    models: tuple[str, ...]
    active_jobs: int
    queue_depth: int
    max_concurrent_jobs: int
    multiplier: float
    device: str
    cpu_count: int
    memory_bytes: int
    last_seen: datetime | None
    tls: bool = False  # it serves TLS at `endpoint`
    verification: Verification | None = None  # None: the coordinator sent no record

    @classmethod
    def from_pb(cls, node: pb.NodeInfo) -> Node:
        return cls(
            node_id=node.node_id,
            endpoint=node.endpoint,
            node_public_key=node.node_public_key,
            models=tuple(node.models),
            active_jobs=node.load.active_jobs,
            queue_depth=node.load.queue_depth,
            max_concurrent_jobs=node.load.max_concurrent_jobs,
            multiplier=node.multiplier,
            device=node.hardware.device,
            cpu_count=node.hardware.cpu_count,
            memory_bytes=node.hardware.memory_bytes,
            last_seen=_utc_or_none(node, "last_seen"),
            tls=node.tls,
            verification=(
                Verification.from_pb(node.verification) if node.HasField("verification") else None
            ),
        )


@dataclass(frozen=True)
class ModelOffer:
    """A model live nodes serve, with what a job on it costs (the coordinator's catalog)."""

    id: str
    node_count: int
    prompt_millicredits_per_1k: int = 0
    completion_millicredits_per_1k: int = 0
    parameters: int = 0

    @classmethod
    def from_pb(cls, model: common_pb2.ModelInfo) -> ModelOffer:
        return cls(
            id=model.id,
            node_count=model.node_count,
            prompt_millicredits_per_1k=model.price.prompt_millicredits_per_1k_tokens,
            completion_millicredits_per_1k=model.price.completion_millicredits_per_1k_tokens,
            parameters=model.price.parameters,
        )
