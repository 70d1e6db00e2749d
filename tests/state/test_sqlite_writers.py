"""The embedded SQLite ledger under concurrency: this process's writers queue in the event
loop, not in SQLite's busy handler, and reads wait for no writer.

SQLite's busy timeout is set to 0 here, so any transaction of this process that found
the database locked by another would fail at once with "database is locked": the
tests show none does. Real SQLite file, real ledger, nothing mocked.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text

from troop_coordinator.db import migrate
from troop_coordinator.db.engine import create_engine, session_factory
from troop_coordinator.ledger import ClientClaim, Ledger, NewJob, NodeClaim, Outcome
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.registry import LiveNode

MODEL = "smollm2-135m-instruct"


@pytest.fixture
async def ledger(sqlite_url: str) -> AsyncIterator[Ledger]:
    engine = create_engine(sqlite_url)

    @event.listens_for(engine.sync_engine, "connect")
    def _no_busy_wait(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=0")  # after the engine's own: locked = error
        cursor.close()

    await migrate.upgrade(engine)
    yield Ledger(session_factory(engine), starter_millicredits=10**6)
    await engine.dispose()


async def test_concurrent_writers_never_find_the_database_locked(ledger: Ledger) -> None:
    now = datetime.now(UTC)
    owner = secrets.token_hex(32)
    nodes = NodeDirectory(ledger.sessions)
    await nodes.record_heartbeat(LiveNode("n1", secrets.token_hex(32), "h:1", (MODEL,)), owner, now)
    users = [secrets.token_hex(32) for _ in range(12)]

    async def user_flow(user: str) -> int:
        await ledger.ensure_user_with_grant(user, now)  # its own first write
        charged = 0
        for _ in range(3):
            job_id = secrets.token_hex(8)
            expires = now + timedelta(minutes=5)
            job = NewJob(job_id, user, "n1", MODEL, 10_000, now, expires, 100, 100, 0, 100_000)
            await ledger.reserve(job)
            await ledger.record_countersignature(ClientClaim(job_id, user, 5, 50), now)
            await nodes.bound_key("n1")  # a read through a plain session, as receipts do
            claim = NodeClaim(job_id, "n1", Outcome.COMPLETED, 0, 5, 10)
            charged += (await ledger.record_receipt(claim, now)).charged_millicredits
        return charged

    charged = await asyncio.gather(*(user_flow(u) for u in users))

    assert charged == [3 * 500] * len(users)
    assert await ledger.balance(owner) == (3 * 500 * len(users), 0)
    assert (await ledger.audit()).ok


async def test_reads_do_not_wait_for_a_writer(ledger: Ledger) -> None:
    user = secrets.token_hex(32)
    await ledger.ensure_user_with_grant(user, datetime.now(UTC))
    async with ledger.sessions.begin() as session:
        # A write transaction holds SQLite's write lock (and this process's turn) ...
        await session.execute(text("UPDATE nodes SET reputation = reputation"))
        # ... and the user's balance, jobs and history are still read meanwhile.
        reads = asyncio.gather(
            ledger.balance(user),
            ledger.open_jobs(user),
            ledger.has_joined(user),
            ledger.transactions(user),
        )
        balance, open_jobs, joined, page = await asyncio.wait_for(reads, timeout=10)
    assert balance == (10**6, 0) and open_jobs == (0, None) and joined
    assert [e.kind.value for e in page.entries] == ["grant"]
