"""The ledger's settlement flows: both sides' claims recorded, jobs settled once, sweeps.

Mixed into `troop_coordinator.ledger.service.Ledger`, which owns the database
(`troop_coordinator.db.transactions.Database`: one transaction, retried whole after
a deadlock or serialization failure). Each public method is one
transaction: a claim is recorded and, when both sides have spoken, the job is
settled by the rule in `troop_coordinator.ledger.settlement` in the same
transaction, so a failure half-way leaves neither the claim nor the money moved.

These Python flows are what runs on SQLite. On PostgreSQL each public method is
one call of a stored function that does the same, statement for statement, in
one round trip (`troop_coordinator.ledger.postgres`, migrations 0007 and 0009;
docs/adr/0034):
a change to a flow here is a change to its function there, in a new migration.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from troop_common.errors import NotFound, PermissionDenied
from troop_coordinator.db.models import EntryKind, JobStatus
from troop_coordinator.db.transactions import Database
from troop_coordinator.ledger.postgres import PostgresCalls
from troop_coordinator.ledger.repository import LedgerRepository
from troop_coordinator.ledger.settlement import (
    SLOW_JOBS_TO_UNPROVE,
    countersigned_terms,
    far_below_proof,
    terms_for,
)
from troop_coordinator.ledger.types import (
    ClientClaim,
    JobRecord,
    NodeClaim,
    Outcome,
    Settlement,
)

T = TypeVar("T")
log = logging.getLogger("troop.coordinator.ledger")

SWEEP_BATCH = 500
# A dispute multiplies the node's reputation by DISPUTE_FACTOR; an agreeing job adds
# AGREE_STEP back (at most 1.0). Discovery prefers reputable nodes.
DISPUTE_FACTOR = 0.8
AGREE_STEP = 0.02
# A job its node never served (the client countersigned nothing delivered, or nobody
# spoke before expiry), or never finished (no receipt, settled on the client's count:
# its answer broke off), multiplies the node's reputation by this: three such jobs put
# it behind any healthy node within a heartbeat.
FAILED_JOB_FACTOR = 0.7


class Settling:
    db: Database
    _postgres: PostgresCalls | None
    token_slack: int
    countersign_s: float

    async def _in_transaction(self, work: Callable[[LedgerRepository], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def record_receipt(self, claim: NodeClaim, now: datetime) -> Settlement:
        """Keep the node's claim and settle if the client has countersigned, in one
        transaction; later receipts change nothing and report the job as it stands."""
        if self._postgres is not None:
            return await self._postgres.record_receipt(claim, now)
        return await self._in_transaction(lambda repo: self._record_receipt(repo, claim, now))

    async def _record_receipt(
        self, repo: LedgerRepository, claim: NodeClaim, now: datetime
    ) -> Settlement:
        job = await repo.get_job(claim.job_id)
        if job is None:
            raise NotFound(f"no job {claim.job_id}")
        if job.node_id != claim.node_id:
            raise PermissionDenied(f"job {claim.job_id} was not given to node {claim.node_id}")
        row = await repo.record_node_claim(
            claim.job_id,
            prompt_tokens=claim.prompt_tokens,
            completion_tokens=claim.completion_tokens,
            duration_ms=claim.duration_ms,
            deadline=now + timedelta(seconds=self.countersign_s),
            evidence_sha256=claim.evidence_sha256.hex() or None,
        )
        if row is None:
            return _recorded(await _job(repo, claim.job_id))
        if row.status != JobStatus.OPEN.value:
            # Settled before it came (the client reported nothing delivered, or the
            # reservation expired): the claim is only compared.
            return await self._compare_late(repo, row, now)
        if claim.outcome is Outcome.FAILED:
            return await self._close(repo, row, JobStatus.REFUNDED, 0, now)
        if row.usage_reported_at is None:
            return _pending(row)
        return await self._settle_claimed(repo, row, now)

    async def record_countersignature(
        self, claim: ClientClaim, now: datetime
    ) -> tuple[Settlement, bool]:
        """Keep the client's first report and settle if the node's receipt is there;
        (the job as it stands, True if this report was new). NotFound for an unknown
        job, PermissionDenied for another user's."""
        if self._postgres is not None:
            return await self._postgres.record_countersignature(claim, now)
        return await self._in_transaction(
            lambda repo: self._record_countersignature(repo, claim, now)
        )

    async def _record_countersignature(
        self, repo: LedgerRepository, claim: ClientClaim, now: datetime
    ) -> tuple[Settlement, bool]:
        job = await repo.get_job(claim.job_id)
        if job is None:
            raise NotFound(f"no job {claim.job_id}")
        if job.user_public_key != claim.user_public_key:
            raise PermissionDenied("a user can only report their own jobs")
        row = await repo.record_client_claim(
            claim.job_id,
            completion_tokens=claim.completion_tokens,
            stream_ms=claim.stream_ms,
            now=now,
            deadline=now + timedelta(seconds=self.countersign_s),
        )
        if row is None:
            return _recorded(await _job(repo, claim.job_id)), False
        if row.status != JobStatus.OPEN.value:
            # Settled before (on the receipt alone, refunded or expired): a late report
            # is only compared.
            return await self._compare_late(repo, row, now), True
        if row.node_duration_ms is None:
            if claim.completion_tokens == 0:
                # Nothing delivered: whatever the node claims, the lower count is 0 and
                # the job costs nothing, so the reservation returns now, not at expiry;
                # a node that takes tickets and delivers nothing stops being picked.
                await repo.nodes.scale_reputation(row.node_id, FAILED_JOB_FACTOR)
                return await self._close(repo, row, JobStatus.REFUNDED, 0, now), True
            return _pending(row), True
        return await self._settle_claimed(repo, row, now), True

    async def _compare_late(
        self, repo: LedgerRepository, job: JobRecord, now: datetime
    ) -> Settlement:
        """A claim that came after its job settled: moves nothing, may be a dispute."""
        disputed = False
        if job.node_duration_ms is not None and job.usage_reported_at is not None:
            terms = terms_for(job, token_slack=self.token_slack)
            if terms.dispute is not None:
                await self._dispute(repo, job, terms.dispute, now)
                disputed = True
        return replace(_recorded(job), disputed=disputed)

    async def _settle_claimed(
        self, repo: LedgerRepository, job: JobRecord, now: datetime
    ) -> Settlement:
        """Charge a job that has its node's claim (and maybe the client's), once."""
        terms = terms_for(job, token_slack=self.token_slack)
        settlement = await self._close(repo, job, JobStatus.CHARGED, terms.charged, now)
        if settlement.already_settled:
            return settlement
        if terms.dispute is not None:
            await self._dispute(repo, job, terms.dispute, now)
        elif job.usage_reported_at is not None:
            await repo.nodes.raise_reputation(job.node_id, AGREE_STEP)
        node = await repo.nodes.terms(job.node_id)
        slow = None if node is None else far_below_proof(job, node.multiplier)
        if slow is not None and await repo.nodes.note_speed(
            job.node_id, slow=slow, withdraw_after=SLOW_JOBS_TO_UNPROVE
        ):
            log.warning("node %s ran far below its proof: proof withdrawn", job.node_id)
        return replace(settlement, disputed=terms.dispute is not None)

    async def _settle_countersigned(
        self, repo: LedgerRepository, job: JobRecord, now: datetime
    ) -> Settlement:
        """Charge a job with no receipt on its client's count alone, once. Its node is
        marked down as for a failed job: it neither finished the answer nor said what it
        did, so it gains nothing from a job its client had to take elsewhere. Its speed is
        not noted: a broken stream's time includes waiting for the break to show."""
        terms = countersigned_terms(job)
        settlement = await self._close(repo, job, JobStatus.CHARGED, terms.charged, now)
        if not settlement.already_settled:
            await repo.nodes.scale_reputation(job.node_id, FAILED_JOB_FACTOR)
        return settlement

    @staticmethod
    async def _dispute(repo: LedgerRepository, job: JobRecord, reason: str, now: datetime) -> None:
        if await repo.disputes.insert(job, reason, now):
            await repo.nodes.scale_reputation(job.node_id, DISPUTE_FACTOR)

    async def _close(
        self,
        repo: LedgerRepository,
        job: JobRecord,
        status: JobStatus,
        charged: int,
        now: datetime,
    ) -> Settlement:
        """Move an open job to `status`, pay its node's owner `charged` (or hold it, while
        a failed check holds the node) and return the rest to its user; reports the first
        settlement if another got there first."""
        reserved = int(job.reserved_millicredits)
        terms = await repo.nodes.terms(job.node_id) if charged else None
        # A node with no row has no owner to pay: charging it would burn credits.
        charged = charged if terms is not None else 0
        # The claim: only one transaction, on any replica, moves the job out of
        # `open`; a concurrent one waits on the row lock, then matches nothing.
        if not await repo.close_job(job.job_id, status, charged, now):
            return _recorded(await _job(repo, job.job_id))
        payouts: list[tuple[str, EntryKind, int]] = []
        if charged and terms is not None and terms.holds(now):
            # A failed check holds the node's pay (docs/adr/0053): kept out of every
            # balance until the hold ends (then the EARN) or its key is barred (refunded).
            await repo.held.hold(
                job_id=job.job_id,
                node_id=job.node_id,
                owner=terms.owner_public_key,
                user=job.user_public_key,
                amount=charged,
                now=now,
            )
        elif charged and terms is not None:
            await repo.insert_user_if_missing(terms.owner_public_key, now)
            payouts.append((terms.owner_public_key, EntryKind.EARN, charged))
        if reserved - charged > 0:
            kind = EntryKind.RELEASE if status is JobStatus.CHARGED else EntryKind.REFUND
            payouts.append((job.user_public_key, kind, reserved - charged))
        # Lock (credit) accounts in key order: no deadlock between settlements.
        for account, kind, amount in sorted(payouts, key=lambda p: (p[0], p[1].value)):
            after = await repo.credit(account, amount)
            await repo.append(
                account=account,
                kind=kind,
                amount=amount,
                balance_after=after,
                now=now,
                job_id=job.job_id,
            )
        return Settlement(job.job_id, status, charged, reserved - charged)

    async def settle_overdue(self, now: datetime) -> list[Settlement]:
        """Settle the jobs whose one side spoke and the other did not by the deadline: on
        the node's receipt alone, or on the client's countersignature alone (its node
        never sent a receipt); safe on many replicas."""
        return await self._sweep(now, LedgerRepository.overdue_job_ids)

    async def expire_stale(self, now: datetime) -> list[Settlement]:
        """Return the reservations of open jobs past their expiry (a job with a receipt,
        or with the client's countersignature of tokens delivered, settles on it instead);
        safe on many replicas."""
        return await self._sweep(now, LedgerRepository.stale_job_ids)

    async def _sweep(
        self, now: datetime, candidates: Callable[[LedgerRepository, datetime, int], Any]
    ) -> list[Settlement]:
        job_ids = await self.db.read(
            lambda connection: candidates(LedgerRepository(connection), now, SWEEP_BATCH)
        )
        settled = []
        for job_id in job_ids:
            if self._postgres is not None:
                settlement = await self._postgres.close_open(job_id, now)
            else:
                settlement = await self._in_transaction(
                    partial(self._close_open, job_id=job_id, now=now)
                )
            if settlement is not None:
                settled.append(settlement)
        return settled

    async def _close_open(
        self, repo: LedgerRepository, job_id: str, now: datetime
    ) -> Settlement | None:
        """Settle a still-open job on its receipt if it has one, else on the client's
        countersignature of tokens delivered, else expire it; None if it was settled
        meanwhile (here or on another replica)."""
        job = await repo.get_job(job_id)
        if job is None or job.status != JobStatus.OPEN.value:
            return None
        if job.node_duration_ms is not None:
            # A receipt waiting for its countersignature is work done: it settles on
            # the receipt alone, never expires unpaid.
            settlement = await self._settle_claimed(repo, job, now)
        elif int(job.client_completion_tokens or 0) > 0:
            # The client vouched for tokens delivered and the node never said (killed
            # mid-stream): it is paid for them, not for nothing.
            settlement = await self._settle_countersigned(repo, job, now)
        else:
            settlement = await self._close(repo, job, JobStatus.EXPIRED, 0, now)
            if not settlement.already_settled and job.usage_reported_at is None:
                await repo.nodes.scale_reputation(job.node_id, FAILED_JOB_FACTOR)
        return None if settlement.already_settled else settlement


async def _job(repo: LedgerRepository, job_id: str) -> JobRecord:
    """A job known to exist (its row is never deleted)."""
    job = await repo.get_job(job_id)
    assert job is not None, job_id
    return job


def _recorded(job: JobRecord) -> Settlement:
    """The job as it stands, for a call that changed nothing."""
    reserved = int(job.reserved_millicredits)
    charged = int(job.charged_millicredits or 0)
    open_ = job.status == JobStatus.OPEN.value
    return Settlement(
        job_id=job.job_id,
        status=JobStatus(job.status),
        charged_millicredits=charged,
        released_millicredits=0 if open_ else reserved - charged,
        already_settled=True,
    )


def _pending(job: JobRecord) -> Settlement:
    """A job waiting for its other side."""
    return Settlement(job.job_id, JobStatus.OPEN, 0, 0)
