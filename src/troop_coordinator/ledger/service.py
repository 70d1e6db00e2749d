"""The ledger service: owns transactions and turns conflicts into domain errors.

Invariants, at every commit: balances never go negative (checked by the
database too), every movement is one entry with the balance after it, and
minted starter credits = balances + open reservations. Settlement happens
once per job: the conditional `open -> settled` UPDATE is the claim, so
concurrent receipts, sweepers and replicas cannot double-pay.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from troop_common.errors import (
    FieldViolation,
    InsufficientCredits,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from troop_coordinator.db.models import EntryKind, JobStatus
from troop_coordinator.ledger.repository import LedgerRepository, entries, jobs, users
from troop_coordinator.ledger.types import (
    AuditReport,
    Entry,
    NewJob,
    Outcome,
    Page,
    Settlement,
)

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
SWEEP_BATCH = 500


def encode_page_token(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"e:{last_id}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        value = int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument([FieldViolation("page_token", "not a token from this API")]) from exc
    if prefix != "e" or value <= 0:
        raise InvalidArgument([FieldViolation("page_token", "not a token from this API")])
    return value


def compute_charge(*, reserved: int, duration_ms: int, observed_ms: int, multiplier: float) -> int:
    """Millicredits for a job: its duration (no longer than the coordinator saw it open)
    at the node's multiplier, never more than the reservation."""
    billable_ms = max(0, min(duration_ms, observed_ms))
    return max(0, min(reserved, round(billable_ms * multiplier)))


class Ledger:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, starter_millicredits: int
    ) -> None:
        self._sessions = sessions
        self.starter_millicredits = starter_millicredits

    async def ensure_user_with_grant(self, public_key: str, now: datetime) -> bool:
        """Create the user on first sight and grant starter credits once; True if granted now."""
        async with self._sessions.begin() as session:
            repo = LedgerRepository(session)
            await repo.insert_user_if_missing(public_key, now)
            balance = await repo.grant_once(public_key, self.starter_millicredits, now)
            if balance is None:
                return False
            await repo.append(
                account=public_key,
                kind=EntryKind.GRANT,
                amount=self.starter_millicredits,
                balance_after=balance,
                now=now,
            )
            return True

    async def reserve(self, job: NewJob) -> None:
        """Hold the job's credits and record the job; InsufficientCredits writes nothing."""
        async with self._sessions.begin() as session:
            repo = LedgerRepository(session)
            balance = await repo.debit_if_covered(job.user_public_key, job.reserved_millicredits)
            if balance is None:
                current = await repo.balance(job.user_public_key)
                raise InsufficientCredits(job.reserved_millicredits, current or 0)
            await repo.insert_job(
                {
                    "job_id": job.job_id,
                    "user_public_key": job.user_public_key,
                    "node_id": job.node_id,
                    "model": job.model,
                    "reserved_millicredits": job.reserved_millicredits,
                    "created_at": job.created_at,
                    "expires_at": job.expires_at,
                }
            )
            await repo.append(
                account=job.user_public_key,
                kind=EntryKind.RESERVE,
                amount=-job.reserved_millicredits,
                balance_after=balance,
                now=job.created_at,
                job_id=job.job_id,
            )

    async def job_node(self, job_id: str) -> str | None:
        """The node a job was given to, or None for an unknown job."""
        async with self._sessions() as session:
            job = await LedgerRepository(session).get_job(job_id)
        return None if job is None else str(job.node_id)

    async def settle(
        self, job_id: str, node_id: str, outcome: Outcome, duration_ms: int, now: datetime
    ) -> Settlement:
        """Settle a job from its node's receipt, once; later calls report the first."""
        async with self._sessions.begin() as session:
            repo = LedgerRepository(session)
            job = await repo.get_job(job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            if job.node_id != node_id:
                raise PermissionDenied(f"job {job_id} was not given to node {node_id}")
            reserved = int(job.reserved_millicredits)
            if outcome is Outcome.FAILED:
                status, charged, terms = JobStatus.REFUNDED, 0, None
            else:
                terms = await repo.node_terms(node_id)
                observed_ms = int((now - job.created_at).total_seconds() * 1000)
                multiplier = terms[1] if terms else 1.0
                status = JobStatus.CHARGED
                charged = compute_charge(
                    reserved=reserved,
                    duration_ms=duration_ms,
                    observed_ms=observed_ms,
                    multiplier=multiplier,
                )
            if not await repo.close_job(job_id, status, charged, now):
                return _recorded(await repo.get_job(job_id))
            if charged and terms is not None:
                owner = terms[0]
                await repo.insert_user_if_missing(owner, now)
                after = await repo.credit(owner, charged)
                await repo.append(
                    account=owner,
                    kind=EntryKind.EARN,
                    amount=charged,
                    balance_after=after,
                    now=now,
                    job_id=job_id,
                )
            await self._return(repo, job, reserved - charged, status, now)
            return Settlement(job_id, status, charged, reserved - charged)

    async def expire_stale(self, now: datetime) -> list[Settlement]:
        """Return the reservations of open jobs past their expiry; safe on many replicas."""
        async with self._sessions() as session:
            candidates = await LedgerRepository(session).stale_job_ids(now, SWEEP_BATCH)
        expired = []
        for job_id in candidates:
            async with self._sessions.begin() as session:
                repo = LedgerRepository(session)
                if not await repo.close_job(job_id, JobStatus.EXPIRED, 0, now):
                    continue  # settled meanwhile, here or on another replica
                job = await repo.get_job(job_id)
                reserved = int(job.reserved_millicredits)
                await self._return(repo, job, reserved, JobStatus.EXPIRED, now)
                expired.append(Settlement(job_id, JobStatus.EXPIRED, 0, reserved))
        return expired

    @staticmethod
    async def _return(
        repo: LedgerRepository, job: object, amount: int, status: JobStatus, now: datetime
    ) -> None:
        if amount <= 0:
            return
        user = job.user_public_key  # type: ignore[attr-defined]
        after = await repo.credit(user, amount)
        kind = EntryKind.RELEASE if status is JobStatus.CHARGED else EntryKind.REFUND
        await repo.append(
            account=user,
            kind=kind,
            amount=amount,
            balance_after=after,
            now=now,
            job_id=job.job_id,  # type: ignore[attr-defined]
        )

    async def balance(self, public_key: str) -> tuple[int, int]:
        """(balance, open reservations); (0, 0) for an unknown key, which stays unknown."""
        async with self._sessions() as session:
            repo = LedgerRepository(session)
            balance = await repo.balance(public_key)
            if balance is None:
                return 0, 0
            return int(balance), await repo.reserved(public_key)

    async def transactions(
        self, public_key: str, page_size: int = DEFAULT_PAGE_SIZE, page_token: str = ""
    ) -> Page:
        """Entries newest first; keyset paging by id."""
        size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
        before = decode_page_token(page_token) if page_token else None
        async with self._sessions() as session:
            rows = await LedgerRepository(session).entries_before(public_key, before, size + 1)
        page = [_entry(row) for row in rows[:size]]
        token = encode_page_token(page[-1].id) if len(rows) > size else ""
        return Page(page, token)

    async def audit(self) -> AuditReport:
        """Check conservation and every cached balance against its entries, in one snapshot."""
        async with self._sessions() as session:
            if session.bind.dialect.name == "postgresql":
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
            await session.commit()
        return AuditReport(
            minted_millicredits=minted,
            balances_millicredits=balances,
            open_reservations_millicredits=open_reserved,
            mismatched_accounts={
                str(r[0]): (int(r[1]), int(r[2])) for r in rows if int(r[1]) != int(r[2])
            },
            negative_accounts=[str(r[0]) for r in rows if int(r[1]) < 0],
        )


def _recorded(job: object) -> Settlement:
    reserved = int(job.reserved_millicredits)  # type: ignore[attr-defined]
    charged = int(job.charged_millicredits or 0)  # type: ignore[attr-defined]
    return Settlement(
        job_id=job.job_id,  # type: ignore[attr-defined]
        status=JobStatus(job.status),  # type: ignore[attr-defined]
        charged_millicredits=charged,
        released_millicredits=reserved - charged,
        already_settled=True,
    )


def _entry(row: Sequence[object]) -> Entry:
    mapping = row._mapping  # type: ignore[attr-defined]
    return Entry(
        id=int(mapping["id"]),
        created_at=mapping["created_at"],
        kind=EntryKind(mapping["kind"]),
        amount_millicredits=int(mapping["amount_millicredits"]),
        job_id=mapping["job_id"],
        balance_after_millicredits=int(mapping["balance_after_millicredits"]),
    )
