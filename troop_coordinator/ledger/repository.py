"""SQL for the ledger, one statement per method, on the caller's AsyncSession (or, for
reads, an AsyncConnection from `db.engine.reading`); rows come back as the dataclasses of
`troop_coordinator.ledger.types`. The node, dispute and invite statements a ledger
transaction also makes are their own repositories' (`troop_coordinator.repositories`),
on the same session (`nodes`, `disputes`, `invites`).

Every balance change is a single conditional UPDATE ... RETURNING, so it is
correct with any number of coordinator processes on one database: there is no
read-then-write anywhere. The caller (`Ledger`) owns the transactions, through
`troop_coordinator.db.transactions`. On
PostgreSQL the money-moving flows run as stored functions instead (migration
0007); the reads here serve both backends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Table, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from troop_coordinator.db.engine import dialect_insert
from troop_coordinator.db.models import EntryKind, JobStatus
from troop_coordinator.db.models import entries_table as entries
from troop_coordinator.db.models import held_earnings_table as held
from troop_coordinator.db.models import jobs_table as jobs
from troop_coordinator.db.models import users_table as users
from troop_coordinator.ledger.types import Entry, JobRecord
from troop_coordinator.repositories.disputes import DisputeRepository
from troop_coordinator.repositories.held_earnings import REFUNDED, HeldEarningsRepository
from troop_coordinator.repositories.invites import InviteRepository
from troop_coordinator.repositories.nodes import NodeRepository


def job_record(row: Any) -> JobRecord | None:
    """A `jobs` row as its dataclass (None stays None)."""
    if row is None:
        return None
    values = dict(row._mapping)
    return JobRecord(**{**values, "status": JobStatus(values["status"])})


class LedgerRepository:
    def __init__(self, session: AsyncSession | AsyncConnection) -> None:
        self.session = session

    @property
    def nodes(self) -> NodeRepository:
        return NodeRepository(self.session)

    @property
    def disputes(self) -> DisputeRepository:
        return DisputeRepository(self.session)

    @property
    def held(self) -> HeldEarningsRepository:
        return HeldEarningsRepository(self.session)

    @property
    def invites(self) -> InviteRepository:
        assert isinstance(self.session, AsyncSession), "writes need a transaction"
        return InviteRepository(self.session)

    def _insert(self, table: Table) -> Any:
        return dialect_insert(self.session, table)

    async def starter_granted(self, public_key: str) -> bool:
        """True if the user exists and had its starter grant (a read; never a decision to pay)."""
        statement = select(users.c.starter_granted_at).where(users.c.public_key == public_key)
        return (await self.session.execute(statement)).scalar_one_or_none() is not None

    async def insert_user_if_missing(self, public_key: str, now: datetime) -> None:
        statement = self._insert(users).values(
            public_key=public_key, balance_millicredits=0, starter_granted_at=None, created_at=now
        )
        await self.session.execute(statement.on_conflict_do_nothing(index_elements=["public_key"]))

    async def grant_once(self, public_key: str, amount: int, now: datetime) -> int | None:
        """Credit the starter grant unless already granted; the new balance, or None."""
        statement = (
            update(users)
            .where(users.c.public_key == public_key, users.c.starter_granted_at.is_(None))
            .values(
                balance_millicredits=users.c.balance_millicredits + amount,
                starter_granted_at=now,
            )
            .returning(users.c.balance_millicredits)
        )
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def debit_if_covered(self, public_key: str, amount: int) -> int | None:
        """Take `amount` if the balance covers it; the new balance, or None (nothing taken)."""
        statement = (
            update(users)
            .where(users.c.public_key == public_key, users.c.balance_millicredits >= amount)
            .values(balance_millicredits=users.c.balance_millicredits - amount)
            .returning(users.c.balance_millicredits)
        )
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def credit(self, public_key: str, amount: int) -> int:
        statement = (
            update(users)
            .where(users.c.public_key == public_key)
            .values(balance_millicredits=users.c.balance_millicredits + amount)
            .returning(users.c.balance_millicredits)
        )
        return (await self.session.execute(statement)).scalar_one()

    async def append(
        self,
        *,
        account: str,
        kind: EntryKind,
        amount: int,
        balance_after: int,
        now: datetime,
        job_id: str | None = None,
    ) -> None:
        await self.session.execute(
            entries.insert().values(
                account=account,
                kind=kind.value,
                amount_millicredits=amount,
                balance_after_millicredits=balance_after,
                job_id=job_id,
                created_at=now,
            )
        )

    async def insert_job(self, values: dict[str, Any]) -> None:
        await self.session.execute(jobs.insert().values(status=JobStatus.OPEN.value, **values))

    async def get_job(self, job_id: str) -> JobRecord | None:
        statement = select(jobs).where(jobs.c.job_id == job_id)
        return job_record((await self.session.execute(statement)).first())

    async def close_job(self, job_id: str, status: JobStatus, charged: int, now: datetime) -> bool:
        """Move an open job to `status`; False if it was settled already (nothing changed)."""
        statement = (
            update(jobs)
            .where(jobs.c.job_id == job_id, jobs.c.status == JobStatus.OPEN.value)
            .values(status=status.value, charged_millicredits=charged, settled_at=now)
        )
        return cast(CursorResult[Any], await self.session.execute(statement)).rowcount == 1

    async def record_node_claim(
        self,
        job_id: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        duration_ms: int,
        deadline: datetime,
        evidence_sha256: str | None = None,
    ) -> JobRecord | None:
        """Keep a job's first receipt (a closed job's too, to be compared) and the digest
        of the evidence it vouches for; the job row after it, or None (claimed before:
        nothing changed)."""
        statement = (
            update(jobs)
            .where(jobs.c.job_id == job_id, jobs.c.node_duration_ms.is_(None))
            .values(
                node_prompt_tokens=prompt_tokens,
                node_completion_tokens=completion_tokens,
                node_duration_ms=duration_ms,
                countersign_deadline=deadline,
                evidence_sha256=evidence_sha256,
            )
            .returning(*jobs.c)
        )
        return job_record((await self.session.execute(statement)).first())

    async def record_client_claim(
        self,
        job_id: str,
        *,
        completion_tokens: int,
        stream_ms: int,
        now: datetime,
        deadline: datetime,
    ) -> JobRecord | None:
        """Keep a job's first countersignature, and start the node's clock (`deadline`)
        if its receipt is not there yet; the job row after it, or None (reported before:
        nothing changed)."""
        statement = (
            update(jobs)
            .where(jobs.c.job_id == job_id, jobs.c.usage_reported_at.is_(None))
            .values(
                client_completion_tokens=completion_tokens,
                client_stream_ms=stream_ms,
                usage_reported_at=now,
                countersign_deadline=case(
                    (jobs.c.node_duration_ms.is_(None), deadline),
                    else_=jobs.c.countersign_deadline,
                ),
            )
            .returning(*jobs.c)
        )
        return job_record((await self.session.execute(statement)).first())

    async def overdue_job_ids(self, now: datetime, limit: int) -> list[str]:
        """Open jobs whose one claim (a receipt, or a countersignature without one) waited
        past its deadline for the other."""
        return await self._open_jobs_past(jobs.c.countersign_deadline, now, limit)

    async def balance(self, public_key: str) -> int | None:
        statement = select(users.c.balance_millicredits).where(users.c.public_key == public_key)
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def balance_and_reserved(self, public_key: str) -> tuple[int, int] | None:
        """(balance, open reservations) read by one statement, so from one snapshot."""
        reserved = (
            select(func.coalesce(func.sum(jobs.c.reserved_millicredits), 0))
            .where(jobs.c.user_public_key == public_key, jobs.c.status == JobStatus.OPEN.value)
            .scalar_subquery()
        )
        statement = select(users.c.balance_millicredits, reserved).where(
            users.c.public_key == public_key
        )
        row = (await self.session.execute(statement)).first()
        return None if row is None else (int(row[0]), int(row[1]))

    async def open_jobs(self, public_key: str) -> tuple[int, datetime | None]:
        """How many jobs of this user are open, and when the first of them expires."""
        statement = select(func.count(), func.min(jobs.c.expires_at)).where(
            jobs.c.user_public_key == public_key, jobs.c.status == JobStatus.OPEN.value
        )
        count, first_expiry = (await self.session.execute(statement)).one()
        return int(count), first_expiry

    async def entries_before(
        self, public_key: str, before_id: int | None, limit: int
    ) -> list[Entry]:
        """An account's entries, newest first, older than `before_id` if given."""
        statement = select(entries).where(entries.c.account == public_key)
        if before_id is not None:
            statement = statement.where(entries.c.id < before_id)
        statement = statement.order_by(entries.c.id.desc()).limit(limit)
        return [
            Entry(
                id=int(row.id),
                created_at=row.created_at,
                kind=EntryKind(row.kind),
                amount_millicredits=int(row.amount_millicredits),
                job_id=row.job_id,
                balance_after_millicredits=int(row.balance_after_millicredits),
            )
            for row in await self.session.execute(statement)
        ]

    async def unbalanced_jobs(self) -> list[str]:
        """Jobs whose own entries do not add up: an open job's entries are its reservation
        (-reserved); a closed job's cancel out (reserve + earn + release/refund = 0)."""
        sums = (
            select(entries.c.job_id, func.sum(entries.c.amount_millicredits).label("total"))
            .where(entries.c.job_id.is_not(None))
            .group_by(entries.c.job_id)
            .subquery()
        )
        total = func.coalesce(sums.c.total, 0)
        # A closed job whose pay is held (docs/adr/0053) is short of exactly that.
        still_held = (
            select(held.c.amount_millicredits)
            .where(held.c.job_id == jobs.c.job_id, held.c.settled_at.is_(None))
            .scalar_subquery()
        )
        expected = case(
            (jobs.c.status == JobStatus.OPEN.value, -jobs.c.reserved_millicredits),
            else_=-func.coalesce(still_held, 0),
        )
        statement = (
            select(jobs.c.job_id)
            .select_from(jobs.outerjoin(sums, sums.c.job_id == jobs.c.job_id))
            .where(total != expected)
        )
        return [str(r) for r in (await self.session.execute(statement)).scalars().all()]

    async def settled_more_than_once(self) -> list[str]:
        """Jobs with more than one settling entry of a kind (two EARNs, or RELEASE + REFUND).
        A job whose held pay went back to its user (docs/adr/0053) has that one REFUND
        on top of its RELEASE, in place of its EARN: counted as the pay, not the rest."""
        refunded_held = (
            select(func.count())
            .where(held.c.job_id == entries.c.job_id, held.c.outcome == REFUNDED)
            .scalar_subquery()
        )
        returned = func.sum(
            case(
                (entries.c.kind.in_([EntryKind.RELEASE.value, EntryKind.REFUND.value]), 1), else_=0
            )
        ) - func.max(refunded_held)
        paid = func.sum(case((entries.c.kind == EntryKind.EARN.value, 1), else_=0)) + func.max(
            refunded_held
        )
        statement = (
            select(entries.c.job_id)
            .where(entries.c.job_id.is_not(None))
            .group_by(entries.c.job_id)
            .having((returned > 1) | (paid > 1))
        )
        return [str(r) for r in (await self.session.execute(statement)).scalars().all()]

    async def stale_job_ids(self, now: datetime, limit: int) -> list[str]:
        """Open jobs past their expiry (ticket lifetime plus the settle grace)."""
        return await self._open_jobs_past(jobs.c.expires_at, now, limit)

    async def _open_jobs_past(self, deadline: Any, now: datetime, limit: int) -> list[str]:
        statement = (
            select(jobs.c.job_id)
            .where(jobs.c.status == JobStatus.OPEN.value, deadline < now)
            .order_by(deadline)
            .limit(limit)
        )
        return list((await self.session.execute(statement)).scalars().all())

    async def sum_of(self, column: Any, *where: Any) -> int:
        statement = select(func.coalesce(func.sum(column), 0)).where(*where)
        return int((await self.session.execute(statement)).scalar_one())

    async def charged_jobs_after(self, after: str, limit: int) -> list[JobRecord]:
        """Jobs charged something, by job id after `after` (the audit's batches)."""
        statement = (
            select(jobs)
            .where(
                jobs.c.status == JobStatus.CHARGED.value,
                jobs.c.charged_millicredits > 0,
                jobs.c.job_id > after,
            )
            .order_by(jobs.c.job_id)
            .limit(limit)
        )
        rows = (await self.session.execute(statement)).all()
        return [record for record in map(job_record, rows) if record is not None]

    async def balances_and_entry_sums(self) -> list[tuple[str, int, int]]:
        """(account, cached balance, sum of its entries) for every user."""
        sums = (
            select(
                entries.c.account,
                func.sum(entries.c.amount_millicredits).label("total"),
            )
            .group_by(entries.c.account)
            .subquery()
        )
        statement = select(
            users.c.public_key,
            users.c.balance_millicredits,
            func.coalesce(sums.c.total, 0),
        ).select_from(users.outerjoin(sums, sums.c.account == users.c.public_key))
        return [(str(r[0]), int(r[1]), int(r[2])) for r in await self.session.execute(statement)]
