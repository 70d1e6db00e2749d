"""Plain values the ledger takes and returns (no SQLAlchemy, no protobuf)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from troop_coordinator.db.models import EntryKind, JobStatus


class Outcome(enum.Enum):
    """How a job ended, as its node reports it."""

    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class NewJob:
    job_id: str
    user_public_key: str
    node_id: str
    model: str
    reserved_millicredits: int
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Settlement:
    job_id: str
    status: JobStatus  # charged, refunded or expired
    charged_millicredits: int
    released_millicredits: int
    already_settled: bool = False


@dataclass(frozen=True)
class Entry:
    id: int
    created_at: datetime
    kind: EntryKind
    amount_millicredits: int
    job_id: str | None
    balance_after_millicredits: int


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    next_page_token: str  # empty on the last page


@dataclass(frozen=True)
class AuditReport:
    """Conservation check: minted = balances + open reservations, balances = their entries."""

    minted_millicredits: int
    balances_millicredits: int
    open_reservations_millicredits: int
    mismatched_accounts: dict[str, tuple[int, int]] = field(default_factory=dict)
    negative_accounts: list[str] = field(default_factory=list)
    # Jobs whose entries do not add up (open: -reserved; closed: 0).
    unbalanced_jobs: list[str] = field(default_factory=list)
    # Jobs with two EARNs, or two of RELEASE/REFUND: settled more than once.
    settled_twice_jobs: list[str] = field(default_factory=list)

    @property
    def conserved(self) -> bool:
        return self.minted_millicredits == (
            self.balances_millicredits + self.open_reservations_millicredits
        )

    @property
    def ok(self) -> bool:
        return (
            self.conserved
            and not self.mismatched_accounts
            and not self.negative_accounts
            and not self.unbalanced_jobs
            and not self.settled_twice_jobs
        )
