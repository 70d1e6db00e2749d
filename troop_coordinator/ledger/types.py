"""Plain values the ledger takes and returns (no SQLAlchemy, no protobuf)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from troop_common.errors import FailedPrecondition, RateLimited
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
    # The ticket's bounds and the model's price at Authorize (troop_coordinator.pricing).
    max_prompt_tokens: int
    max_tokens: int
    prompt_price_per_1k: int
    completion_price_per_1k: int


class NotJoined(FailedPrecondition):
    """A reservation refused: the user has had no starter grant (nothing written). The
    coordinator answers with its own wording (it knows the admission mode)."""

    def __init__(self, public_key: str) -> None:
        super().__init__("join first")
        self.public_key = public_key


class TooManyOpenJobs(RateLimited):
    """A reservation refused: the user already holds `open_jobs` open reservations, at
    least the cap (nothing written). `first_expiry`: the earliest of their expiries, when
    one will have been settled or expired at the latest."""

    def __init__(self, open_jobs: int, cap: int, first_expiry: datetime | None) -> None:
        super().__init__(f"too many open jobs: {open_jobs} of at most {cap} per user", 1.0)
        self.open_jobs = open_jobs
        self.cap = cap
        self.first_expiry = first_expiry


@dataclass(frozen=True)
class NodeClaim:
    """What a node's signed receipt says it did for a job."""

    job_id: str
    node_id: str
    outcome: Outcome
    prompt_tokens: int
    completion_tokens: int
    duration_ms: int
    # SHA-256 of the output evidence the node sent the client (empty: none).
    evidence_sha256: bytes = b""


@dataclass(frozen=True)
class ClientClaim:
    """What a job's user countersigned: the completion tokens it can vouch it received."""

    job_id: str
    user_public_key: str
    completion_tokens: int
    stream_ms: int


@dataclass(frozen=True)
class JobView:
    """A job as its user may see it."""

    job_id: str
    user_public_key: str
    model: str
    node_id: str
    status: JobStatus
    reserved_millicredits: int
    charged_millicredits: int
    max_tokens: int
    max_prompt_tokens: int
    prompt_price_per_1k: int
    completion_price_per_1k: int
    created_at: datetime
    settled_at: datetime | None
    receipt_received: bool
    countersigned: bool
    disputed: bool
    # Once CHARGED, the (prompt, completion) tokens the charge is for; None otherwise.
    charged_tokens: tuple[int, int] | None = None


@dataclass(frozen=True)
class JobRecord:
    """A job's row as the ledger's repository reads it (troop_coordinator.db.models.Job)."""

    job_id: str
    user_public_key: str
    node_id: str
    model: str
    reserved_millicredits: int
    status: JobStatus
    created_at: datetime
    expires_at: datetime
    settled_at: datetime | None
    charged_millicredits: int | None
    node_completion_tokens: int | None
    node_duration_ms: int | None
    client_completion_tokens: int | None
    client_stream_ms: int | None
    usage_reported_at: datetime | None
    max_prompt_tokens: int | None
    max_tokens: int | None
    prompt_price_per_1k: int | None
    completion_price_per_1k: int | None
    node_prompt_tokens: int | None
    countersign_deadline: datetime | None
    evidence_sha256: str | None = None  # hex; the evidence the node's receipt vouched for


@dataclass(frozen=True)
class JobBounds:
    """An open job's node, bounds and whether it can still take a receipt."""

    node_id: str
    user_public_key: str
    max_prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class Settlement:
    job_id: str
    status: JobStatus  # charged, refunded or expired; open while waiting for a side
    charged_millicredits: int
    released_millicredits: int
    already_settled: bool = False
    disputed: bool = False  # the two sides disagreed beyond the slack


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
    """Conservation check: minted = balances + open reservations + held pay, balances =
    their entries."""

    minted_millicredits: int
    balances_millicredits: int
    open_reservations_millicredits: int
    # Settled jobs' pay held from their nodes' owners (docs/adr/0053), not yet released
    # or returned: in no balance meanwhile.
    held_millicredits: int = 0
    mismatched_accounts: dict[str, tuple[int, int]] = field(default_factory=dict)
    negative_accounts: list[str] = field(default_factory=list)
    # Jobs whose entries do not add up (open: -reserved; closed: 0).
    unbalanced_jobs: list[str] = field(default_factory=list)
    # Jobs with two EARNs, or two of RELEASE/REFUND: settled more than once.
    settled_twice_jobs: list[str] = field(default_factory=list)
    # Fairness: jobs charged more than the settlement rule gives for their counted
    # tokens, and jobs charged with neither a receipt nor a countersignature recorded
    # (a job whose node never sent its receipt is charged on its user's count alone).
    overcharged_jobs: list[str] = field(default_factory=list)
    unreceipted_charges: list[str] = field(default_factory=list)
    # Who leads the disputes: (node id or user key, disputes), most first. Information,
    # not a violation.
    node_dispute_leaders: list[tuple[str, int]] = field(default_factory=list)
    user_dispute_leaders: list[tuple[str, int]] = field(default_factory=list)

    @property
    def conserved(self) -> bool:
        return self.minted_millicredits == (
            self.balances_millicredits
            + self.open_reservations_millicredits
            + self.held_millicredits
        )

    @property
    def ok(self) -> bool:
        return (
            self.conserved
            and not self.mismatched_accounts
            and not self.negative_accounts
            and not self.unbalanced_jobs
            and not self.settled_twice_jobs
            and not self.overcharged_jobs
            and not self.unreceipted_charges
        )
