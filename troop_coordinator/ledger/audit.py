"""The ledger audit: conservation, balances against entries, and fairness, in one snapshot.

Conservation: minted = balances + open reservations + pay held while a failed check
holds its node (docs/adr/0053: in no balance until released or returned).

Conservation alone cannot see theft: a worker paid a whole reservation for
one token is a conserved transfer. So the audit also recomputes every charged
job from its counted work (troop_coordinator.ledger.settlement, the rule
settlement itself uses) and lists jobs charged more than that, jobs charged
with neither a receipt (recorded only with the user's signed presentation of
the ticket) nor the user's own countersignature recorded, and the nodes and
users that lead the disputes.
"""

from __future__ import annotations

from troop_coordinator.db.models import EntryKind, JobStatus
from troop_coordinator.db.transactions import Database
from troop_coordinator.ledger.repository import LedgerRepository, entries, jobs, users
from troop_coordinator.ledger.settlement import countersigned_terms, terms_for
from troop_coordinator.ledger.types import AuditReport, JobRecord

# Charged jobs are read in batches of this many (the audit is an offline check).
BATCH = 5000


async def audit_ledger(db: Database, *, token_slack: int) -> AuditReport:
    """The audit, read from one snapshot (db.transactions.Database.snapshot)."""
    return await db.snapshot(lambda session: _audit(LedgerRepository(session), token_slack))


async def _audit(repo: LedgerRepository, token_slack: int) -> AuditReport:
    minted = await repo.sum_of(
        entries.c.amount_millicredits, entries.c.kind == EntryKind.GRANT.value
    )
    balances = await repo.sum_of(users.c.balance_millicredits)
    open_reserved = await repo.sum_of(
        jobs.c.reserved_millicredits, jobs.c.status == JobStatus.OPEN.value
    )
    held = await repo.held.held_total()
    rows = await repo.balances_and_entry_sums()
    unbalanced = await repo.unbalanced_jobs()
    twice = await repo.settled_more_than_once()
    overcharged, unreceipted = await _unfair_charges(repo, token_slack)
    return AuditReport(
        minted_millicredits=minted,
        balances_millicredits=balances,
        open_reservations_millicredits=open_reserved,
        held_millicredits=held,
        mismatched_accounts={
            account: (balance, total) for account, balance, total in rows if balance != total
        },
        negative_accounts=[account for account, balance, _ in rows if balance < 0],
        unbalanced_jobs=unbalanced,
        settled_twice_jobs=twice,
        overcharged_jobs=overcharged,
        unreceipted_charges=unreceipted,
        node_dispute_leaders=await repo.disputes.leaders("node"),
        user_dispute_leaders=await repo.disputes.leaders("user"),
    )


async def _unfair_charges(repo: LedgerRepository, token_slack: int) -> tuple[list[str], list[str]]:
    """(jobs charged more than their counted work, jobs charged with no claim)."""
    overcharged: list[str] = []
    unreceipted: list[str] = []
    after = ""
    while True:
        batch = await repo.charged_jobs_after(after, BATCH)
        for job in batch:
            fair = _fair_charge(job, token_slack)
            if fair is None:
                unreceipted.append(job.job_id)
            elif (job.charged_millicredits or 0) > fair:
                overcharged.append(job.job_id)
        if len(batch) < BATCH:
            return overcharged, unreceipted
        after = batch[-1].job_id


def _fair_charge(job: JobRecord, token_slack: int) -> int | None:
    """The most a settled job may have been charged for the claims it holds; None with
    neither. A job with both may have settled on either rule: on both claims, or on the
    countersignature alone before a late receipt came (the row does not say which), and
    either is fair: the second never exceeds what the payer itself vouched for."""
    fair = []
    if job.node_duration_ms is not None:
        fair.append(terms_for(job, token_slack=token_slack).charged)
    if job.usage_reported_at is not None:
        fair.append(countersigned_terms(job).charged)
    return max(fair) if fair else None
