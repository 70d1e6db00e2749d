"""The one way into the database for every repository: a unit of work, retried whole.

    db = Database(sessions)
    granted = await db.transaction(lambda session: work(session))  # read-write
    row = await db.read(lambda connection: query(connection))        # one snapshot a statement
    row = await db.call(lambda driver: driver.fetchrow(SQL, ...))    # PostgreSQL, one round trip

A unit of work is a function of its connection, so it can run again: a
deadlock or serialization failure (PostgreSQL's SQLSTATE 40P01, 40001) rolled
the whole transaction back, and it is run again from the start after a short,
jittered, growing pause, at most `RetryPolicy.attempts` times in all; the last
failure propagates. Anything else (a domain error, a constraint) rolls back
and propagates at once. Work must therefore be safe to repeat: its decisions are
made by the statements (a conditional UPDATE is the claim), never by what a
previous attempt saw (docs/adr/0010, 0040).

A lost PostgreSQL (refused, reset, shutting down or starting:
`engine.connection_lost`) is `Unavailable` to the caller, never an internal
error, and nothing is committed half: each unit of work is one transaction. A
unit that failed before it was handed its connection (the connect itself failed)
never reached the database, and a read changes nothing: those run once more, at
once, on a fresh connection. A read-write unit whose connection died under it
may have committed, so it is not run again: the caller is told UNAVAILABLE and
decides (docs/adr/0050).

SQLite serialises writers (BEGIN IMMEDIATE behind this process's writer queue,
`db.engine`), so a transaction there never fails for these reasons; its busy
timeout is the wait, and a "database is locked" after it is not retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from troop_common.errors import Unavailable
from troop_coordinator.db.engine import (
    connection_lost,
    dialect_name,
    driver_connection,
    reading,
)

T = TypeVar("T")
log = logging.getLogger("troop.coordinator.db")

# PostgreSQL's serialization_failure and deadlock_detected: the transaction was
# rolled back as a whole and may simply run again.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# What a caller is told while the database cannot be reached.
UNAVAILABLE_MESSAGE = "the ledger database is unavailable; try again shortly"

# Told by a unit of work's attempt once it holds its connection (the database reached).
Connected = Callable[[], None]


@dataclass(frozen=True)
class RetryPolicy:
    """At most `attempts` runs of one unit of work; before run n+1 a pause drawn from
    [0, min(max_delay_s, first_delay_s * 2**(n-1))] (full jitter, so the transactions
    that collided do not collide again in step)."""

    attempts: int = 4
    first_delay_s: float = 0.005
    max_delay_s: float = 0.1

    def delay_s(self, failed_attempts: int) -> float:
        return random.uniform(
            0, min(self.max_delay_s, self.first_delay_s * 2 ** (failed_attempts - 1))
        )


def retryable(exc: BaseException) -> bool:
    """True for a deadlock or serialization failure, through SQLAlchemy or the driver."""
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return code in RETRYABLE_SQLSTATES
    if isinstance(exc, asyncpg.PostgresError):
        return exc.sqlstate in RETRYABLE_SQLSTATES
    return False


class Database:
    """A session factory's engine, with every unit of work run under one retry policy."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], retry: RetryPolicy | None = None
    ) -> None:
        engine = sessions.kw.get("bind")
        if not isinstance(engine, AsyncEngine):
            raise TypeError("the session factory must be bound to an AsyncEngine")
        self.sessions = sessions
        self.engine = engine
        self.retry = retry or RetryPolicy()

    @property
    def dialect(self) -> str:
        """ "sqlite" or "postgresql"."""
        return self.engine.dialect.name

    async def transaction(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """`work` in one read-write transaction, committed on return."""

        async def attempt(connected: Connected) -> T:
            async with self.sessions.begin() as session:
                await session.connection()
                connected()
                return await work(session)

        return await self._retrying(attempt, idempotent=False)

    async def read(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`work` on a connection outside any transaction (`db.engine.reading`): each
        statement its own snapshot, no write lock taken. Never write through it."""

        async def attempt(connected: Connected) -> T:
            async with reading(self.engine) as connection:
                connected()
                return await work(connection)

        return await self._retrying(attempt, idempotent=True)

    async def snapshot(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """`work` reading one consistent snapshot (REPEATABLE READ on PostgreSQL; SQLite's
        transaction is one already), nothing written."""

        async def attempt(connected: Connected) -> T:
            async with self.sessions() as session:
                options = {"isolation_level": "REPEATABLE READ"}
                await session.connection(
                    execution_options=options if dialect_name(session) == "postgresql" else None
                )
                connected()
                result = await work(session)
                await session.commit()
                return result

        return await self._retrying(attempt, idempotent=True)

    async def call(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """PostgreSQL only: `work` on the pooled asyncpg connection itself, in autocommit,
        so one statement (a stored function) is one transaction and one round trip."""

        async def attempt(connected: Connected) -> T:
            async with driver_connection(self.engine) as connection:
                connected()
                return await work(connection)

        return await self._retrying(attempt, idempotent=False)

    async def _retrying(
        self, attempt: Callable[[Connected], Awaitable[T]], *, idempotent: bool
    ) -> T:
        """Runs `attempt` again after a deadlock or serialization failure (policy), and once
        more after a lost connection if the work cannot have reached the database (or is
        only a read); a lost connection is otherwise `Unavailable`."""
        policy = self.retry
        number, lost_before = 0, False
        while True:
            reached = False

            def connected() -> None:
                nonlocal reached
                reached = True

            number += 1
            try:
                return await attempt(connected)
            except Exception as exc:
                # (SQLite is a local file: nothing to lose; its lock timeout is its own.)
                if self.dialect == "postgresql" and connection_lost(exc):
                    if lost_before or (reached and not idempotent):
                        log.warning("database unavailable: %s", _reason(exc))
                        raise Unavailable(UNAVAILABLE_MESSAGE) from exc
                    lost_before = True
                    log.info("database connection lost (%s); once more, freshly", _reason(exc))
                    continue
                if number >= policy.attempts or not retryable(exc):
                    raise  # a domain error, a constraint, a bug: as it is
                log.warning("transaction rolled back (%s); running it again", _reason(exc))
            await asyncio.sleep(policy.delay_s(number))


def _reason(exc: BaseException) -> object:
    return exc.orig if isinstance(exc, DBAPIError) else exc
