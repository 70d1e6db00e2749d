"""The one transaction helper (troop_coordinator.db.transactions) under a real
serialization failure on PostgreSQL: the unit of work runs again, whole, and after its
bound the failure propagates with nothing written."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from troop_coordinator.db import migrate
from troop_coordinator.db.engine import create_engine, driver_connection, session_factory
from troop_coordinator.db.models import EntryKind
from troop_coordinator.db.transactions import Database, RetryPolicy
from troop_coordinator.ledger import Ledger
from troop_coordinator.ledger.repository import LedgerRepository

STARTER = 1_000_000
SPENT = 100


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[Database]:
    engine = create_engine(postgres_url)
    await migrate.upgrade(engine)
    yield Database(session_factory(engine), RetryPolicy(attempts=3))
    await engine.dispose()


async def joined_user(db: Database) -> str:
    user = secrets.token_hex(32)
    ledger = Ledger(db.sessions, starter_millicredits=STARTER)
    assert await ledger.ensure_user_with_grant(user, datetime.now(UTC))
    return user


def spend(db: Database, user: str, conflicts: int, attempts: list[int]):
    """A unit of work that debits `user` and records the entry, at REPEATABLE READ; its
    first `conflicts` runs find the row changed by another transaction since their
    snapshot, which PostgreSQL answers with a serialization failure (SQLSTATE 40001)."""

    async def work(session: AsyncSession) -> int | None:
        attempts.append(len(attempts) + 1)
        await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        repo = LedgerRepository(session)
        await repo.balance(user)  # the snapshot is taken here
        if len(attempts) <= conflicts:
            # Another transaction touches the row and commits (changing nothing).
            async with driver_connection(db.engine) as other:
                await other.execute(
                    "UPDATE users SET balance_millicredits = balance_millicredits"
                    " WHERE public_key = $1",
                    user,
                )
        balance = await repo.debit_if_covered(user, SPENT)
        assert balance is not None
        await repo.append(
            account=user,
            kind=EntryKind.RESERVE,
            amount=-SPENT,
            balance_after=balance,
            now=datetime.now(UTC),
        )
        return balance

    return work


async def account(db: Database, user: str) -> tuple[int, int]:
    """(balance, number of entries) of one account."""

    async def read(session: AsyncSession) -> tuple[int, int]:
        repo = LedgerRepository(session)
        balance = await repo.balance(user)
        assert balance is not None
        return balance, len(await repo.entries_before(user, None, 100))

    return await db.snapshot(read)


async def test_a_serialization_failure_runs_the_whole_transaction_again(db: Database) -> None:
    user = await joined_user(db)
    attempts: list[int] = []
    balance = await db.transaction(spend(db, user, conflicts=2, attempts=attempts))
    assert attempts == [1, 2, 3]  # failed twice, then committed
    assert balance == STARTER - SPENT
    assert await account(db, user) == (STARTER - SPENT, 2)  # the grant, one debit: once


async def test_past_its_bound_the_failure_propagates_and_nothing_is_written(
    db: Database,
) -> None:
    user = await joined_user(db)
    attempts: list[int] = []
    with pytest.raises(DBAPIError) as failure:
        await db.transaction(spend(db, user, conflicts=99, attempts=attempts))
    assert getattr(failure.value.orig, "sqlstate", None) == "40001"
    assert attempts == [1, 2, 3]  # RetryPolicy(attempts=3)
    assert await account(db, user) == (STARTER, 1)  # the grant only


async def test_other_failures_are_not_run_again(db: Database) -> None:
    user = await joined_user(db)
    attempts: list[int] = []

    async def duplicate(session: AsyncSession) -> None:
        attempts.append(1)
        await LedgerRepository(session).invites.insert("a" * 64, datetime.now(UTC))
        await LedgerRepository(session).invites.insert("a" * 64, datetime.now(UTC))

    with pytest.raises(IntegrityError):
        await db.transaction(duplicate)
    assert attempts == [1]
    assert await account(db, user) == (STARTER, 1)
