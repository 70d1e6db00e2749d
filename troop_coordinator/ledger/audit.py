"""The ledger audit: conservation, balances against entries, and fairness, in one snapshot.

Conservation alone cannot see theft: a worker paid a whole reservation for
one token is a conserved transfer. So the audit also recomputes every charged
job from its counted work (troop_coordinator.ledger.settlement, the rule
settlement itself uses) and lists jobs charged more than that, jobs charged
without a receipt recorded (a receipt is recorded only with the user's signed
presentation of the ticket), and the nodes and users that lead the disputes.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from troop_coordinator.db.engine import dialect_name
from troop_coordinator.db.models import EntryKind, JobStatus
from troop_coordinator.db.models import disputes_table as disputes
from troop_coordinator.ledger.repository import LedgerRepository, entries, jobs, users
from troop_coordinator.ledger.settlement import terms_for
from troop_coordinator.ledger.types import AuditReport
from troop_coordinator.usage import dispute_leaders

# Charged jobs are read in batches of this many (the audit is an offline check).
BATCH = 5000


async def audit_ledger(
    sessions: async_sessionmaker[AsyncSession], *, token_slack: int
) -> AuditReport:
    async with sessions() as session:
        if dialect_name(session) == "postgresql":
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        repo = LedgerRepository(session)
        minted = await repo.sum_of(
            entries.c.amount_millicredits, entries.c.kind == EntryKind.GRANT.value
        )
        balances = await repo.sum_of(users.c.balance_millicredits)
        open_reserved = await repo.sum_of(
            jobs.c.reserved_millicredits, jobs.c.status == JobStatus.OPEN.value
        )
        rows = await repo.balances_and_entry_sums()
        unbalanced = await repo.unbalanced_jobs()
        twice = await repo.settled_more_than_once()
        overcharged, unreceipted = await _unfair_charges(session, token_slack)
        node_leaders = await dispute_leaders(session, disputes.c.node_id)
        user_leaders = await dispute_leaders(session, disputes.c.user_public_key)
        await session.commit()
    return AuditReport(
        minted_millicredits=minted,
        balances_millicredits=balances,
        open_reservations_millicredits=open_reserved,
        mismatched_accounts={
            str(r[0]): (int(r[1]), int(r[2])) for r in rows if int(r[1]) != int(r[2])
        },
        negative_accounts=[str(r[0]) for r in rows if int(r[1]) < 0],
        unbalanced_jobs=unbalanced,
        settled_twice_jobs=twice,
        overcharged_jobs=overcharged,
        unreceipted_charges=unreceipted,
        node_dispute_leaders=node_leaders,
        user_dispute_leaders=user_leaders,
    )


async def _unfair_charges(session: AsyncSession, token_slack: int) -> tuple[list[str], list[str]]:
    """(jobs charged more than their counted work, jobs charged with no receipt)."""
    overcharged: list[str] = []
    unreceipted: list[str] = []
    after = ""
    while True:
        statement = (
            select(jobs)
            .where(
                jobs.c.status == JobStatus.CHARGED.value,
                jobs.c.charged_millicredits > 0,
                jobs.c.job_id > after,
            )
            .order_by(jobs.c.job_id)
            .limit(BATCH)
        )
        batch = (await session.execute(statement)).all()
        for job in batch:
            if job.node_duration_ms is None:
                unreceipted.append(str(job.job_id))
            elif int(job.charged_millicredits) > terms_for(job, token_slack=token_slack).charged:
                overcharged.append(str(job.job_id))
        if len(batch) < BATCH:
            return overcharged, unreceipted
        after = str(batch[-1].job_id)
