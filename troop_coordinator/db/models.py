"""SQLAlchemy models of everything the coordinator keeps: users, nodes, jobs, ledger.

The ledger is append-only: every credit movement is one `LedgerEntry` and the
cached `User.balance_millicredits` changes in the same transaction. Amounts
are integer millicredits (1 credit = 1000). The migration in
`migrations/versions` creates exactly these tables (a test compares them).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Table,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from troop_coordinator.db.types import BigIntegerId, JsonDocument, UtcDateTime


class Base(DeclarativeBase):
    pass


class JobStatus(enum.StrEnum):
    OPEN = "open"
    CHARGED = "charged"
    REFUNDED = "refunded"
    EXPIRED = "expired"


class EntryKind(enum.StrEnum):
    GRANT = "grant"
    RESERVE = "reserve"
    RELEASE = "release"
    EARN = "earn"
    REFUND = "refund"


class User(Base):
    """A user (or node owner): an Ed25519 public key with a balance."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint("balance_millicredits >= 0", name="ck_users_balance"),)

    public_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    balance_millicredits: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # When the one-time starter grant was made; NULL for owners who never asked for work.
    starter_granted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class Node(Base):
    """A worker: its id bound to its node key on first heartbeat, for good."""

    __tablename__ = "nodes"
    __table_args__ = (
        Index("ix_nodes_last_seen", "last_seen"),
        Index("ix_nodes_node_public_key", "node_public_key"),
        Index("ix_nodes_proven_endpoint", "proven_endpoint"),
    )

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_public_key: Mapped[str] = mapped_column(String(64), nullable=False)
    owner_public_key: Mapped[str] = mapped_column(String(64), nullable=False)
    endpoint: Mapped[str] = mapped_column(String(300), nullable=False)
    models: Mapped[Any] = mapped_column(JsonDocument, nullable=False)
    load: Mapped[Any] = mapped_column(JsonDocument, nullable=False)
    hardware: Mapped[Any] = mapped_column(JsonDocument, nullable=False)
    multiplier: Mapped[float] = mapped_column(Float, nullable=False, default=1.0)
    proven: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # 1.0 = no disputes; lowered when clients' countersignatures contradict receipts.
    reputation: Mapped[float] = mapped_column(Float, nullable=False, default=1.0)
    # Countersigned jobs in a row that ran far below the proven speed (docs/adr/0031):
    # at SLOW_JOBS_TO_UNPROVE the proof is withdrawn.
    slow_jobs: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # The endpoint last dialled and found answering with this node's key (ADR 33); the
    # node is listed only while it advertises this endpoint.
    proven_endpoint: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # Whether that endpoint was dialled with TLS (the mode the node declared, ADR 39).
    proven_tls: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    # What verifiers found (docs/adr/0053): checks passed and failed, the last one's time;
    # while `held_until` is ahead its jobs' earnings are held (`held_earnings`), and the
    # models in `failed_models` (model -> unix seconds until which it is not routed to
    # it) are skipped by Authorize; `barred` once its node key failed too often.
    checks_passed: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    checks_failed: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    last_checked: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    held_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    failed_models: Mapped[Any] = mapped_column(JsonDocument, nullable=True)
    barred: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )


class Job(Base):
    """One authorized job and its reservation, settled exactly once."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_expires_at", "status", "expires_at"),
        Index("ix_jobs_user_status", "user_public_key", "status"),
        Index("ix_jobs_status_countersign_deadline", "status", "countersign_deadline"),
        CheckConstraint("reserved_millicredits >= 0", name="ck_jobs_reserved"),
    )

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_public_key: Mapped[str] = mapped_column(
        String(64), ForeignKey("users.public_key"), nullable=False
    )
    node_id: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    reserved_millicredits: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    settled_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    charged_millicredits: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Both sides' claims (docs/adr/0017): the node's signed receipt and the client's report.
    node_completion_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    node_duration_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    client_completion_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    client_stream_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    usage_reported_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # The job's bounds and price, fixed at Authorize (docs/adr/0031): the ticket carries
    # the bounds, the charge uses the price even if the catalog changes meanwhile.
    max_prompt_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    prompt_price_per_1k: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    completion_price_per_1k: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    node_prompt_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # When a job's one claim settles on its own: a receipt waiting for the client's
    # countersignature, or a countersignature waiting for the node's receipt.
    countersign_deadline: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # Hex SHA-256 of the output evidence the node's receipt vouched for (docs/adr/0053):
    # a verdict's evidence must be those bytes. NULL: none sent, or no receipt yet.
    evidence_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


class LedgerEntry(Base):
    """One credit movement on one account; never updated, never deleted (database
    triggers refuse both). At most one entry of each kind per job: a job cannot
    be paid, released or refunded twice."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_account_id", "account", "id"),
        Index("uq_ledger_entries_job_kind", "job_id", "kind", unique=True),
    )

    id: Mapped[int] = mapped_column(BigIntegerId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    account: Mapped[str] = mapped_column(String(64), ForeignKey("users.public_key"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    amount_millicredits: Mapped[int] = mapped_column(BigInteger, nullable=False)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    balance_after_millicredits: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Invite(Base):
    """A one-time admission code from `troop admin invite`; only its SHA-256 is kept."""

    __tablename__ = "invites"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    used_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Dispute(Base):
    """The node's receipt and the client's countersignature disagreed; at most one per
    job, recorded on both parties (which one lied is not known)."""

    __tablename__ = "disputes"
    __table_args__ = (
        Index("ix_disputes_node_id", "node_id"),
        Index("ix_disputes_user_public_key", "user_public_key"),
    )

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64), nullable=False)
    user_public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    reason: Mapped[str] = mapped_column(String(200), nullable=False)
    node_completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    client_completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    node_duration_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)
    client_stream_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Verdict(Base):
    """A trusted verifier's signed finding about one job's output, kept once per job as
    the bytes it signed (docs/adr/0053)."""

    __tablename__ = "verdicts"
    __table_args__ = (
        Index("ix_verdicts_node_outcome_received", "node_id", "outcome", "received_at"),
    )

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)  # passed, failed
    verifier_public_key: Mapped[str] = mapped_column(String(64), nullable=False)
    verdict: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    signature: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class HeldEarning(Base):
    """A settled job's pay, held while its node's verification hold lasts: released to
    the owner as the job's EARN entry once the hold ends, or returned to the user who
    paid it (a REFUND entry) if the node key is barred (docs/adr/0053). Until then the
    amount is in no balance: the audit counts it (`settled_at` NULL) next to open
    reservations."""

    __tablename__ = "held_earnings"
    __table_args__ = (
        Index("ix_held_earnings_node_settled", "node_id", "settled_at"),
        CheckConstraint("amount_millicredits > 0", name="ck_held_earnings_amount"),
    )

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64), nullable=False)
    owner_public_key: Mapped[str] = mapped_column(String(64), nullable=False)
    user_public_key: Mapped[str] = mapped_column(String(64), nullable=False)
    amount_millicredits: Mapped[int] = mapped_column(BigInteger, nullable=False)
    held_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    # When it was released or returned, and which ("released", "refunded"); NULL: held.
    settled_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)


class AuditHead(Base):
    """The single row that orders the audit chain: its lock serialises appends
    across replicas, and it remembers the last event's hash."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditEvent(Base):
    """A security-relevant event; append-only (database triggers), and each row
    carries the hash of the one before it, so any edit breaks the chain."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    event: Mapped[dict[str, Any]] = mapped_column(JsonDocument, nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


# The Core tables, for statements built with `update()`/`insert()` (declarative types
# `__table__` as a FromClause; these are Tables).
users_table = cast(Table, User.__table__)
nodes_table = cast(Table, Node.__table__)
jobs_table = cast(Table, Job.__table__)
entries_table = cast(Table, LedgerEntry.__table__)
invites_table = cast(Table, Invite.__table__)
disputes_table = cast(Table, Dispute.__table__)
verdicts_table = cast(Table, Verdict.__table__)
held_earnings_table = cast(Table, HeldEarning.__table__)
