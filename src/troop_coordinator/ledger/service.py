"""The ledger service: owns transactions and turns conflicts into domain errors.

Invariants, at every commit: balances never go negative (checked by the
database too), every movement is one entry with the balance after it, and
minted starter credits = balances + open reservations. Settlement happens
once per job: the conditional `open -> settled` UPDATE is the claim, so
concurrent receipts, sweepers and replicas cannot double-pay (and a unique
index on ledger_entries(job_id, kind) backs that up in the database).

Concurrency on PostgreSQL at READ COMMITTED (docs/adr/0010): every balance
change is one conditional UPDATE, re-evaluated by PostgreSQL after waiting on
a row lock, so there is no read-then-write. Within one transaction accounts
are credited in public-key order, so two settlements touching the same two
accounts lock them in the same order and cannot deadlock; a deadlock or
serialization failure that happens anyway rolls the whole transaction back and
it is retried (each transaction is safe to repeat: the claim decides).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from functools import partial
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from troop_common.errors import (
    FieldViolation,
    InsufficientCredits,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from troop_coordinator.db.engine import dialect_name
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

T = TypeVar("T")
log = logging.getLogger("troop.coordinator.ledger")

MAX_PAGE_SIZE = 100
# PostgreSQL's serialization_failure and deadlock_detected: the transaction was
# rolled back as a whole and may simply run again.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
MAX_ATTEMPTS = 4
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


def _retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in RETRYABLE_SQLSTATES


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

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """The session factory, for stores that share the ledger's database."""
        return self._sessions

    async def _in_transaction(self, work: Callable[[LedgerRepository], Awaitable[T]]) -> T:
        """Run `work` in one transaction, again (whole) after a deadlock or serialization
        failure; domain errors raised by `work` roll back and propagate."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._sessions.begin() as session:
                    return await work(LedgerRepository(session))
            except DBAPIError as exc:
                if attempt == MAX_ATTEMPTS or not _retryable(exc):
                    raise
                log.warning("ledger transaction rolled back (%s); retrying", exc.orig)
        raise AssertionError("unreachable")

    async def ensure_user_with_grant(
        self, public_key: str, now: datetime, *, invite_hash: str | None = None
    ) -> bool:
        """Create the user on first sight and grant starter credits once; True if granted now.

        With `invite_hash`, the grant also spends that invite, in the same
        transaction: PermissionDenied (nothing written) if it is unknown or used."""
        if await self.has_joined(public_key):
            # A plain read only to skip a write that would change nothing: the grant
            # itself below is guarded by the database, not by this read.
            return False
        return await self._in_transaction(
            lambda repo: self._grant(repo, public_key, now, invite_hash)
        )

    async def has_joined(self, public_key: str) -> bool:
        """True once the user had its starter grant."""
        async with self._sessions() as session:
            return await LedgerRepository(session).starter_granted(public_key)

    async def create_invite(self, code_hash: str, now: datetime) -> None:
        await self._in_transaction(lambda repo: repo.insert_invite(code_hash, now))

    async def _grant(
        self, repo: LedgerRepository, public_key: str, now: datetime, invite_hash: str | None
    ) -> bool:
        await repo.insert_user_if_missing(public_key, now)
        balance = await repo.grant_once(public_key, self.starter_millicredits, now)
        if balance is None:
            return False  # granted concurrently: the invite stays unspent
        if invite_hash is not None and not await repo.claim_invite(invite_hash, public_key, now):
            raise PermissionDenied("the invite code is unknown or already used")
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
        await self._in_transaction(lambda repo: self._reserve(repo, job))

    async def _reserve(self, repo: LedgerRepository, job: NewJob) -> None:
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
        return await self._in_transaction(
            lambda repo: self._settle(repo, job_id, node_id, outcome, duration_ms, now)
        )

    async def _settle(
        self,
        repo: LedgerRepository,
        job_id: str,
        node_id: str,
        outcome: Outcome,
        duration_ms: int,
        now: datetime,
    ) -> Settlement:
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
            status = JobStatus.CHARGED
            # A node with no row has no owner to pay: charging it would burn credits.
            charged = (
                0
                if terms is None
                else compute_charge(
                    reserved=reserved,
                    duration_ms=duration_ms,
                    observed_ms=observed_ms,
                    multiplier=terms[1],
                )
            )
        # The claim: only one transaction, on any replica, moves the job out of
        # `open`; a concurrent one waits on the row lock, then matches nothing.
        if not await repo.close_job(job_id, status, charged, now):
            return _recorded(await repo.get_job(job_id))
        payouts: list[tuple[str, EntryKind, int]] = []
        if charged and terms is not None:
            await repo.insert_user_if_missing(terms[0], now)
            payouts.append((terms[0], EntryKind.EARN, charged))
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
                job_id=job_id,
            )
        return Settlement(job_id, status, charged, reserved - charged)

    async def expire_stale(self, now: datetime) -> list[Settlement]:
        """Return the reservations of open jobs past their expiry; safe on many replicas."""
        async with self._sessions() as session:
            candidates = await LedgerRepository(session).stale_job_ids(now, SWEEP_BATCH)
        expired = []
        for job_id in candidates:
            settlement = await self._in_transaction(partial(self._expire, job_id=job_id, now=now))
            if settlement is not None:
                expired.append(settlement)
        return expired

    async def _expire(
        self, repo: LedgerRepository, job_id: str, now: datetime
    ) -> Settlement | None:
        if not await repo.close_job(job_id, JobStatus.EXPIRED, 0, now):
            return None  # settled meanwhile, here or on another replica
        job = await repo.get_job(job_id)
        reserved = int(job.reserved_millicredits)
        await self._return(repo, job, reserved, JobStatus.EXPIRED, now)
        return Settlement(job_id, JobStatus.EXPIRED, 0, reserved)

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
            found = await LedgerRepository(session).balance_and_reserved(public_key)
        return found or (0, 0)

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
