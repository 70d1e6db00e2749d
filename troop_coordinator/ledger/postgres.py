"""The ledger on PostgreSQL: one round trip per call (a function call, or one read).

The functions (migration 0007_ledger_procedures, changed by 0009 and 0010) do what the
Python flows in `troop_coordinator.ledger.settling` do on SQLite, statement for
statement; each call runs as one transaction (autocommit: no BEGIN, no COMMIT, no
ROLLBACK on return), on a pooled asyncpg connection with its prepared
statement cached, so a reservation, a countersignature, a receipt or one job
of a sweep costs one round trip. The settlement rule's numbers come from
Python (`Rules`), so they are defined once. A deadlock or serialization
failure rolled the call back whole and it runs again (docs/adr/0010, 0040); a
domain refusal comes back as a row (`outcome`), not an exception (docs/adr/0034).
"""

from __future__ import annotations

import logging
from dataclasses import astuple, dataclass
from datetime import datetime, timedelta
from typing import Any

from troop_common.errors import InsufficientCredits, NotFound, PermissionDenied
from troop_coordinator.db.models import JobStatus
from troop_coordinator.db.transactions import Database
from troop_coordinator.ledger.types import (
    ClientClaim,
    JobBounds,
    NewJob,
    NodeClaim,
    NotJoined,
    Outcome,
    Settlement,
    TooManyOpenJobs,
)

log = logging.getLogger("troop.coordinator.ledger")


@dataclass(frozen=True)
class Rules:
    """The settlement rule's numbers, passed with every call as a `troop_ledger_rules` row
    (troop_coordinator.ledger.settlement and .settling define them)."""

    token_slack: int
    dispute_factor: float
    agree_step: float
    failed_job_factor: float
    speed_sample_tokens: int
    slow_share: float
    slow_jobs_to_unprove: int


def _call(function: str, arguments: int) -> str:
    """`SELECT * FROM function($1..$n, ROW($n+1..)::troop_ledger_rules)`."""
    params = ", ".join(f"${i}" for i in range(1, arguments + 1))
    types = ("bigint", "float8", "float8", "float8", "bigint", "float8", "bigint")
    rules = ", ".join(f"${arguments + i}::{t}" for i, t in enumerate(types, start=1))
    return f"SELECT * FROM {function}({params}, ROW({rules})::troop_ledger_rules)"


RESERVE = "SELECT * FROM troop_ledger_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
# The reads on receipts, balances and Authorize's rare paths, as LedgerRepository words
# them for SQLite, sent straight through the driver (SQLAlchemy's statement handling cost
# more CPU than the round trip; docs/adr/0034).
HAS_JOINED = "SELECT starter_granted_at IS NOT NULL FROM users WHERE public_key = $1"
OPEN_JOBS = (
    "SELECT count(*), min(expires_at) FROM jobs WHERE user_public_key = $1 AND status = 'open'"
)
JOB_BOUNDS = (
    "SELECT node_id, user_public_key, max_prompt_tokens, max_tokens FROM jobs WHERE job_id = $1"
)
BALANCE = (
    "SELECT balance_millicredits, (SELECT coalesce(sum(reserved_millicredits), 0) FROM jobs"
    " WHERE user_public_key = $1 AND status = 'open') FROM users WHERE public_key = $1"
)
RECORD_RECEIPT = _call("troop_ledger_record_receipt", 9)  # migration 0010's
RECORD_COUNTERSIGNATURE = _call("troop_ledger_record_countersignature", 6)
CLOSE_OPEN = _call("troop_ledger_close_open", 2)


class PostgresCalls:
    def __init__(self, db: Database, rules: Rules, *, countersign_s: float) -> None:
        self._db = db
        self._rules = astuple(rules)
        self.countersign_s = countersign_s

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        """One statement in its own transaction (again, whole, after a deadlock or a
        serialization failure: db.transactions)."""
        return await self._db.call(lambda connection: connection.fetchrow(sql, *args))

    async def has_joined(self, public_key: str) -> bool:
        row = await self.fetchrow(HAS_JOINED, public_key)
        return row is not None and bool(row[0])

    async def open_jobs(self, public_key: str) -> tuple[int, datetime | None]:
        count, first_expiry = await self.fetchrow(OPEN_JOBS, public_key)
        return int(count), first_expiry

    async def job_bounds(self, job_id: str) -> JobBounds | None:
        row = await self.fetchrow(JOB_BOUNDS, job_id)
        if row is None:
            return None
        return JobBounds(
            node_id=str(row["node_id"]),
            user_public_key=str(row["user_public_key"]),
            max_prompt_tokens=int(row["max_prompt_tokens"] or 0),
            max_tokens=int(row["max_tokens"] or 0),
        )

    async def balance(self, public_key: str) -> tuple[int, int] | None:
        row = await self.fetchrow(BALANCE, public_key)
        return None if row is None else (int(row[0]), int(row[1]))

    async def reserve(self, job: NewJob, max_open_jobs: int | None) -> None:
        row = await self.fetchrow(
            RESERVE,
            job.job_id,
            job.user_public_key,
            job.node_id,
            job.model,
            job.reserved_millicredits,
            job.created_at,
            job.expires_at,
            job.max_prompt_tokens,
            job.max_tokens,
            job.prompt_price_per_1k,
            job.completion_price_per_1k,
            max_open_jobs,
        )
        outcome = row["outcome"]
        if outcome == "not_joined":
            raise NotJoined(job.user_public_key)
        if outcome == "over_cap":
            assert max_open_jobs is not None
            raise TooManyOpenJobs(int(row["open_jobs"]), max_open_jobs, row["first_expiry"])
        if outcome == "short":
            raise InsufficientCredits(job.reserved_millicredits, row["balance_after"] or 0)

    async def record_receipt(self, claim: NodeClaim, now: datetime) -> Settlement:
        row = await self.fetchrow(
            RECORD_RECEIPT,
            claim.job_id,
            claim.node_id,
            claim.outcome is Outcome.FAILED,
            claim.prompt_tokens,
            claim.completion_tokens,
            claim.duration_ms,
            now + timedelta(seconds=self.countersign_s),
            now,
            claim.evidence_sha256.hex() or None,
            *self._rules,
        )
        if row["outcome"] == "not_found":
            raise NotFound(f"no job {claim.job_id}")
        if row["outcome"] == "wrong_party":
            raise PermissionDenied(f"job {claim.job_id} was not given to node {claim.node_id}")
        return _settlement(row)

    async def record_countersignature(
        self, claim: ClientClaim, now: datetime
    ) -> tuple[Settlement, bool]:
        row = await self.fetchrow(
            RECORD_COUNTERSIGNATURE,
            claim.job_id,
            claim.user_public_key,
            claim.completion_tokens,
            claim.stream_ms,
            now + timedelta(seconds=self.countersign_s),
            now,
            *self._rules,
        )
        if row["outcome"] == "not_found":
            raise NotFound(f"no job {claim.job_id}")
        if row["outcome"] == "wrong_party":
            raise PermissionDenied("a user can only report their own jobs")
        return _settlement(row), bool(row["new_claim"])

    async def close_open(self, job_id: str, now: datetime) -> Settlement | None:
        """Settle a still-open job on its receipt if it has one, else on the client's
        countersignature of tokens delivered, else expire it; None if it was settled
        meanwhile."""
        row = await self.fetchrow(CLOSE_OPEN, job_id, now, *self._rules)
        return None if row["outcome"] == "none" else _settlement(row)


def _settlement(row: Any) -> Settlement:
    if row["proof_withdrawn"]:
        log.warning("node %s ran far below its proof: proof withdrawn", row["node_id"])
    return Settlement(
        job_id=str(row["job_id"]),
        status=JobStatus(row["status"]),
        charged_millicredits=int(row["charged"]),
        released_millicredits=int(row["released"]),
        already_settled=bool(row["already_settled"]),
        disputed=bool(row["disputed"]),
    )
