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

Round trips (docs/adr/0034): on PostgreSQL each money-moving call (reserve,
countersignature, receipt, one job of a sweep) is one stored function, one
round trip, and the hot reads one statement each, straight through the driver
(`troop_coordinator.ledger.postgres`). On SQLite the same flows run as Python
transactions, this process's writers queued on an asyncio lock rather than in
SQLite's busy handler (`db.engine`); reads take no lock (`db.engine.reading`).
Every transaction, read and driver call goes through one `Database`
(`troop_coordinator.db.transactions`), which owns the retry (docs/adr/0040).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from troop_common.errors import (
    FieldViolation,
    InsufficientCredits,
    InvalidArgument,
    PermissionDenied,
)
from troop_coordinator import page_tokens
from troop_coordinator.db.models import EntryKind
from troop_coordinator.db.transactions import Database
from troop_coordinator.ledger import settlement, settling
from troop_coordinator.ledger.audit import audit_ledger
from troop_coordinator.ledger.held import HeldPay
from troop_coordinator.ledger.postgres import PostgresCalls, Rules
from troop_coordinator.ledger.repository import LedgerRepository
from troop_coordinator.ledger.settling import Settling
from troop_coordinator.ledger.types import (
    AuditReport,
    JobBounds,
    JobRecord,
    JobView,
    NewJob,
    NotJoined,
    Page,
    TooManyOpenJobs,
)

T = TypeVar("T")

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
MAX_ENTRY_ID = 2**63 - 1  # a BIGINT: a larger id in a page token is no token of ours


def encode_page_token(last_id: int) -> str:
    return page_tokens.encode("e", last_id)


def decode_page_token(token: str) -> int:
    value = page_tokens.decode("e", token, MAX_ENTRY_ID)
    if value is None:
        raise InvalidArgument([FieldViolation("page_token", "not a token from this API")])
    return value


class Ledger(Settling, HeldPay):
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        starter_millicredits: int,
        token_slack: int = 2,
        countersign_s: float = 60.0,
    ) -> None:
        self.db = Database(sessions)
        self.starter_millicredits = starter_millicredits
        self.token_slack = token_slack
        self.countersign_s = countersign_s
        self._postgres = (
            PostgresCalls(self.db, self.rules, countersign_s=countersign_s)
            if self.db.dialect == "postgresql"
            else None
        )

    @property
    def rules(self) -> Rules:
        """The settlement rule's numbers (the PostgreSQL functions take them per call)."""
        return Rules(
            token_slack=self.token_slack,
            dispute_factor=settling.DISPUTE_FACTOR,
            agree_step=settling.AGREE_STEP,
            failed_job_factor=settling.FAILED_JOB_FACTOR,
            speed_sample_tokens=settlement.SPEED_SAMPLE_TOKENS,
            slow_share=settlement.SLOW_SHARE,
            slow_jobs_to_unprove=settlement.SLOW_JOBS_TO_UNPROVE,
        )

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """The session factory, for stores that share the ledger's database."""
        return self.db.sessions

    # `_sessions` and `_engine`: the names older tests read; `db` is the way in.
    @property
    def _sessions(self) -> async_sessionmaker[AsyncSession]:
        return self.db.sessions

    @property
    def _engine(self) -> AsyncEngine:
        return self.db.engine

    async def _in_transaction(self, work: Callable[[LedgerRepository], Awaitable[T]]) -> T:
        """`work` in one transaction of the ledger's database (retried whole after a
        deadlock or serialization failure: db.transactions); domain errors raised by
        `work` roll back and propagate."""
        return await self.db.transaction(lambda session: work(LedgerRepository(session)))

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
        if self._postgres is not None:
            return await self._postgres.has_joined(public_key)
        return await self.db.read(lambda c: LedgerRepository(c).starter_granted(public_key))

    async def create_invite(self, code_hash: str, now: datetime) -> None:
        await self._in_transaction(lambda repo: repo.invites.insert(code_hash, now))

    async def _grant(
        self, repo: LedgerRepository, public_key: str, now: datetime, invite_hash: str | None
    ) -> bool:
        await repo.insert_user_if_missing(public_key, now)
        balance = await repo.grant_once(public_key, self.starter_millicredits, now)
        if balance is None:
            return False  # granted concurrently: the invite stays unspent
        if invite_hash is not None and not await repo.invites.claim(invite_hash, public_key, now):
            raise PermissionDenied("the invite code is unknown or already used")
        await repo.append(
            account=public_key,
            kind=EntryKind.GRANT,
            amount=self.starter_millicredits,
            balance_after=balance,
            now=now,
        )
        return True

    async def reserve(self, job: NewJob, *, max_open_jobs: int | None = None) -> None:
        """Hold the job's credits and record the job, in one transaction (on PostgreSQL
        one round trip). Refused with nothing written: NotJoined (no starter grant yet),
        TooManyOpenJobs (the user already holds `max_open_jobs` open reservations;
        None: no cap), InsufficientCredits. The cap is atomic: concurrent reservations
        of one user are counted one after the other (docs/adr/0034)."""
        if self._postgres is not None:
            await self._postgres.reserve(job, max_open_jobs)
            return
        await self._in_transaction(lambda repo: self._reserve(repo, job, max_open_jobs))

    async def _reserve(
        self, repo: LedgerRepository, job: NewJob, max_open_jobs: int | None
    ) -> None:
        # Inside the writer's transaction (BEGIN IMMEDIATE: SQLite's one writer lock),
        # so nothing changes between these reads and the writes below.
        user = job.user_public_key
        if not await repo.starter_granted(user):
            raise NotJoined(user)
        if max_open_jobs is not None:
            count, first_expiry = await repo.open_jobs(user)
            if count >= max_open_jobs:
                raise TooManyOpenJobs(count, max_open_jobs, first_expiry)
        balance = await repo.debit_if_covered(user, job.reserved_millicredits)
        if balance is None:
            current = await repo.balance(user)
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
        if self._postgres is not None:
            return await self._postgres.job_bounds(job_id)
        job = await self.db.read(lambda c: LedgerRepository(c).get_job(job_id))
        if job is None:
            return None
        return JobBounds(
            node_id=str(job.node_id),
            user_public_key=str(job.user_public_key),
            max_prompt_tokens=int(job.max_prompt_tokens or 0),
            max_tokens=int(job.max_tokens or 0),
        )

    async def job(self, job_id: str) -> JobView | None:
        """One job as the ledger holds it, or None for an unknown job."""
        job, disputed = await self.db.read(lambda c: _job_and_dispute(LedgerRepository(c), job_id))
        if job is None:
            return None
        return JobView(
            job_id=str(job.job_id),
            user_public_key=str(job.user_public_key),
            model=str(job.model),
            node_id=str(job.node_id),
            status=job.status,
            reserved_millicredits=int(job.reserved_millicredits),
            charged_millicredits=int(job.charged_millicredits or 0),
            max_tokens=int(job.max_tokens or 0),
            max_prompt_tokens=int(job.max_prompt_tokens or 0),
            prompt_price_per_1k=int(job.prompt_price_per_1k or 0),
            completion_price_per_1k=int(job.completion_price_per_1k or 0),
            created_at=job.created_at,
            settled_at=job.settled_at,
            receipt_received=job.node_duration_ms is not None,
            countersigned=job.usage_reported_at is not None,
            disputed=disputed,
            charged_tokens=settlement.charged_tokens(job),
        )

    async def balance(self, public_key: str) -> tuple[int, int]:
        """(balance, open reservations); (0, 0) for an unknown key, which stays unknown."""
        if self._postgres is not None:
            return await self._postgres.balance(public_key) or (0, 0)
        found = await self.db.read(lambda c: LedgerRepository(c).balance_and_reserved(public_key))
        return found or (0, 0)

    async def open_jobs(self, public_key: str) -> tuple[int, datetime | None]:
        """(open reservations, the earliest of their expiries) of one user."""
        if self._postgres is not None:
            return await self._postgres.open_jobs(public_key)
        return await self.db.read(lambda c: LedgerRepository(c).open_jobs(public_key))

    async def transactions(
        self, public_key: str, page_size: int = DEFAULT_PAGE_SIZE, page_token: str = ""
    ) -> Page:
        """Entries newest first; keyset paging by id."""
        size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
        before = decode_page_token(page_token) if page_token else None
        rows = await self.db.read(
            lambda c: LedgerRepository(c).entries_before(public_key, before, size + 1)
        )
        page = rows[:size]
        token = encode_page_token(page[-1].id) if len(rows) > size else ""
        return Page(page, token)

    async def audit(self) -> AuditReport:
        """Conservation, every cached balance against its entries, and fairness (no job
        charged beyond its counted work), in one snapshot (troop_coordinator.ledger.audit)."""
        return await audit_ledger(self.db, token_slack=self.token_slack)


async def _job_and_dispute(repo: LedgerRepository, job_id: str) -> tuple[JobRecord | None, bool]:
    job = await repo.get_job(job_id)
    return job, job is not None and await repo.disputes.exists(job_id)
