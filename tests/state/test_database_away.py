"""A lost database through the one transaction helper: UNAVAILABLE for the caller, a
read run once more on a fresh connection, and a write that may have committed never run
again (docs/adr/0050). The connection is lost by terminating this test's own backend,
so the shared server is untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from tests.conftest import free_port
from troop_common.errors import Unavailable
from troop_coordinator.db.engine import create_engine, session_factory
from troop_coordinator.db.transactions import Database

TERMINATE_MYSELF = "SELECT pg_terminate_backend(pg_backend_pid())"


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[Database]:
    engine = create_engine(postgres_url)
    yield Database(session_factory(engine))
    await engine.dispose()


async def test_a_call_whose_connection_dies_is_unavailable_and_not_run_again(
    db: Database,
) -> None:
    runs: list[int] = []

    async def work(driver: Any) -> None:
        runs.append(1)
        await driver.fetchval(TERMINATE_MYSELF)

    with pytest.raises(Unavailable, match="database is unavailable"):
        await db.call(work)
    assert runs == [1]  # it may have committed: not run again
    # The dead connection left the pool: the next call gets a live one.
    assert await db.call(lambda driver: driver.fetchval("SELECT 1")) == 1


async def test_a_transaction_whose_connection_dies_is_unavailable_and_not_run_again(
    db: Database,
) -> None:
    runs: list[int] = []

    async def work(session: AsyncSession) -> None:
        runs.append(1)
        await session.execute(text(TERMINATE_MYSELF))

    with pytest.raises(Unavailable):
        await db.transaction(work)
    assert runs == [1]
    assert await db.transaction(lambda s: _scalar(s, "SELECT 2")) == 2


async def test_a_read_whose_connection_dies_runs_once_more_on_a_fresh_one(db: Database) -> None:
    runs: list[int] = []

    async def work(connection: AsyncConnection) -> int:
        runs.append(1)
        if len(runs) == 1:
            await connection.execute(text(TERMINATE_MYSELF))
        return (await connection.execute(text("SELECT 3"))).scalar_one()

    assert await db.read(work) == 3
    assert runs == [1, 1]


async def test_a_database_that_refuses_connections_is_unavailable(postgres_url: str) -> None:
    # Nothing listens on the port: the connect itself fails, once and again.
    url = postgres_url.replace(postgres_url.split("@")[1].split("/")[0], f"127.0.0.1:{free_port()}")
    engine = create_engine(url)
    runs: list[int] = []

    async def work(session: AsyncSession) -> None:
        runs.append(1)

    try:
        with pytest.raises(Unavailable):
            await Database(session_factory(engine)).transaction(work)
    finally:
        await engine.dispose()
    assert runs == []


async def _scalar(session: AsyncSession, sql: str) -> Any:
    return (await session.execute(text(sql))).scalar_one()
