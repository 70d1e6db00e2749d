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
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from troop_common.errors import (
    FieldViolation,
    InsufficientCredits,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from troop_coordinator.db.models import EntryKind, JobStatus
from troop_coordinator.ledger.audit import audit_ledger
from troop_coordinator.ledger.repository import LedgerRepository
from troop_coordinator.ledger.settlement import (
    SLOW_JOBS_TO_UNPROVE,
    far_below_proof,
    terms_for,
)
from troop_coordinator.ledger.types import (
    AuditReport,
    ClientClaim,
    Entry,
    JobBounds,
    NewJob,
    NodeClaim,
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
MAX_ENTRY_ID = 2**63 - 1  # a BIGINT: a larger id in a page token is no token of ours
SWEEP_BATCH = 500
# A dispute multiplies the node's reputation by DISPUTE_FACTOR; an agreeing job adds
# AGREE_STEP back (at most 1.0). Discovery prefers reputable nodes.
DISPUTE_FACTOR = 0.8
AGREE_STEP = 0.02


def encode_page_token(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"e:{last_id}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        value = int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument([FieldViolation("page_token", "not a token from this API")]) from exc
    if prefix != "e" or not 0 < value <= MAX_ENTRY_ID:
        raise InvalidArgument([FieldViolation("page_token", "not a token from this API")])
    return value


def _retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in RETRYABLE_SQLSTATES


class Ledger:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        starter_millicredits: int,
        token_slack: int = 2,
        countersign_s: float = 60.0,
    ) -> None:
        self._sessions = sessions
        self.starter_millicredits = starter_millicredits
        self.token_slack = token_slack
        self.countersign_s = countersign_s

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
                "max_prompt_tokens": job.max_prompt_tokens,
                "max_tokens": job.max_tokens,
                "prompt_price_per_1k": job.prompt_price_per_1k,
                "completion_price_per_1k": job.completion_price_per_1k,
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

    async def job_bounds(self, job_id: str) -> JobBounds | None:
        """A job's node, user and ticket bounds, or None for an unknown job."""
        async with self._sessions() as session:
            job = await LedgerRepository(session).get_job(job_id)
        if job is None:
            return None
        return JobBounds(
            node_id=str(job.node_id),
            user_public_key=str(job.user_public_key),
            max_prompt_tokens=int(job.max_prompt_tokens or 0),
            max_tokens=int(job.max_tokens or 0),
        )

    async def record_receipt(self, claim: NodeClaim, now: datetime) -> Settlement:
        """Keep the node's claim and settle if the client has countersigned, in one
        transaction; later receipts change nothing and report the job as it stands."""
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
        )
        if row is None:
            return _recorded(await repo.get_job(claim.job_id))
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
        )
        if row is None:
            return _recorded(await repo.get_job(claim.job_id)), False
        if row.status != JobStatus.OPEN.value:
            # Settled before (on the receipt alone, refunded or expired): a late report
            # is only compared.
            return await self._compare_late(repo, row, now), True
        if row.node_duration_ms is None:
            if claim.completion_tokens == 0:
                # Nothing delivered: whatever the node claims, the lower count is 0 and
                # the job costs nothing, so the reservation returns now, not at expiry.
                return await self._close(repo, row, JobStatus.REFUNDED, 0, now), True
            return _pending(row), True
        return await self._settle_claimed(repo, row, now), True

    async def _compare_late(self, repo: LedgerRepository, job: Any, now: datetime) -> Settlement:
        """A claim that came after its job settled: moves nothing, may be a dispute."""
        disputed = False
        if job.node_duration_ms is not None and job.usage_reported_at is not None:
            terms = terms_for(job, token_slack=self.token_slack)
            if terms.dispute is not None:
                await self._dispute(repo, job, terms.dispute, now)
                disputed = True
        return replace(_recorded(job), disputed=disputed)

    async def _settle_claimed(self, repo: LedgerRepository, job: Any, now: datetime) -> Settlement:
        """Charge a job that has its node's claim (and maybe the client's), once."""
        terms = terms_for(job, token_slack=self.token_slack)
        settlement = await self._close(repo, job, JobStatus.CHARGED, terms.charged, now)
        if settlement.already_settled:
            return settlement
        if terms.dispute is not None:
            await self._dispute(repo, job, terms.dispute, now)
        elif job.usage_reported_at is not None:
            await repo.raise_reputation(job.node_id, AGREE_STEP)
        node = await repo.node_terms(job.node_id)
        slow = None if node is None else far_below_proof(job, node[1])
        if slow is not None and await repo.note_speed(
            job.node_id, slow=slow, withdraw_after=SLOW_JOBS_TO_UNPROVE
        ):
            log.warning("node %s ran far below its proof: proof withdrawn", job.node_id)
        return replace(settlement, disputed=terms.dispute is not None)

    @staticmethod
    async def _dispute(repo: LedgerRepository, job: Any, reason: str, now: datetime) -> None:
        if await repo.insert_dispute(job, reason, now):
            await repo.scale_reputation(job.node_id, DISPUTE_FACTOR)

    async def _close(
        self, repo: LedgerRepository, job: Any, status: JobStatus, charged: int, now: datetime
    ) -> Settlement:
        """Move an open job to `status`, pay its node's owner `charged` and return the
        rest to its user; reports the first settlement if another got there first."""
        reserved = int(job.reserved_millicredits)
        terms = await repo.node_terms(job.node_id) if charged else None
        # A node with no row has no owner to pay: charging it would burn credits.
        charged = charged if terms is not None else 0
        # The claim: only one transaction, on any replica, moves the job out of
        # `open`; a concurrent one waits on the row lock, then matches nothing.
        if not await repo.close_job(job.job_id, status, charged, now):
            return _recorded(await repo.get_job(job.job_id))
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
                job_id=job.job_id,
            )
        return Settlement(job.job_id, status, charged, reserved - charged)

    async def settle_overdue(self, now: datetime) -> list[Settlement]:
        """Settle, on the node's receipt alone, the jobs whose client did not countersign
        by the deadline; safe on many replicas."""
        async with self._sessions() as session:
            candidates = await LedgerRepository(session).overdue_job_ids(now, SWEEP_BATCH)
        settled = []
        for job_id in candidates:
            settlement = await self._in_transaction(
                partial(self._settle_overdue, job_id=job_id, now=now)
            )
            if settlement is not None:
                settled.append(settlement)
        return settled

    async def _settle_overdue(
        self, repo: LedgerRepository, job_id: str, now: datetime
    ) -> Settlement | None:
        job = await repo.get_job(job_id)
        if job is None or job.status != JobStatus.OPEN.value or job.node_duration_ms is None:
            return None
        settlement = await self._settle_claimed(repo, job, now)
        return None if settlement.already_settled else settlement

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
        job = await repo.get_job(job_id)
        if job is None or job.status != JobStatus.OPEN.value:
            return None
        if job.node_duration_ms is not None:
            # A receipt waiting for its countersignature is work done: it settles on
            # the receipt alone, never expires unpaid.
            settlement = await self._settle_claimed(repo, job, now)
        else:
            settlement = await self._close(repo, job, JobStatus.EXPIRED, 0, now)
        return None if settlement.already_settled else settlement

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
        """Conservation, every cached balance against its entries, and fairness (no job
        charged beyond its counted work), in one snapshot (troop_coordinator.ledger.audit)."""
        return await audit_ledger(self._sessions, token_slack=self.token_slack)


def _recorded(job: Any) -> Settlement:
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


def _pending(job: Any) -> Settlement:
    """A job waiting for its other side."""
    return Settlement(job.job_id, JobStatus.OPEN, 0, 0)


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
