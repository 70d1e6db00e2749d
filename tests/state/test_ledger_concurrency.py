"""The ledger under concurrency, on SQLite and PostgreSQL: two 'replicas' (two engines)
settling and sweeping the same jobs, and the database's own guards."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from troop_coordinator.db import migrate
from troop_coordinator.db.engine import create_engine, session_factory
from troop_coordinator.ledger import ClientClaim, Ledger, NewJob, NodeClaim, Outcome
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.registry import LiveNode

MODEL = "smollm2-135m-instruct"
STARTER = 3_600_000
RESERVED = 10_000


@pytest.fixture
async def ledgers(database_url: str) -> AsyncIterator[tuple[Ledger, Ledger]]:
    engines = [create_engine(database_url), create_engine(database_url)]
    await migrate.upgrade(engines[0])
    yield tuple(Ledger(session_factory(e), starter_millicredits=STARTER) for e in engines)
    for engine in engines:
        await engine.dispose()


def key() -> str:
    return secrets.token_hex(32)


async def bind_node(ledger: Ledger, node_id: str, owner: str) -> None:
    node = LiveNode(node_id=node_id, node_public_key=key(), endpoint="h:1", models=(MODEL,))
    await NodeDirectory(ledger._sessions).record_heartbeat(node, owner, datetime.now(UTC))


async def open_job(ledger: Ledger, user: str, node_id: str, now: datetime) -> str:
    """A job priced at 100 millicredits a completion token (prompts free), countersigned
    by its user for as many tokens as the node will claim."""
    job_id = secrets.token_hex(8)
    expires = now + timedelta(seconds=60)
    await ledger.reserve(
        NewJob(job_id, user, node_id, MODEL, RESERVED, now, expires, 100, 100, 0, 100_000)
    )
    await ledger.record_countersignature(ClientClaim(job_id, user, 7, 700), now)
    return job_id


def receipt(job_id: str, node_id: str, outcome: Outcome = Outcome.COMPLETED) -> NodeClaim:
    return NodeClaim(job_id, node_id, outcome, prompt_tokens=0, completion_tokens=7, duration_ms=1)


async def test_crossed_settlements_neither_deadlock_nor_double_pay(ledgers) -> None:
    # u1 runs jobs on u2's node and u2 on u1's: each settlement credits both accounts,
    # in opposite roles, at the same time, on two engines.
    one, two = ledgers
    now = datetime.now(UTC) - timedelta(seconds=5)
    u1, u2 = key(), key()
    for user in (u1, u2):
        await one.ensure_user_with_grant(user, now)
    await bind_node(one, "node-of-u2", u2)
    await bind_node(one, "node-of-u1", u1)
    jobs = []
    for _ in range(15):
        jobs.append((await open_job(one, u1, "node-of-u2", now), "node-of-u2"))
        jobs.append((await open_job(one, u2, "node-of-u1", now), "node-of-u1"))

    later = datetime.now(UTC)
    results = await asyncio.gather(
        *(
            ledger.record_receipt(receipt(job_id, node_id), later)
            for job_id, node_id in jobs
            for ledger in (one, two)
        )
    )

    assert sum(not r.already_settled for r in results) == len(jobs)
    assert all(r.charged_millicredits == 700 for r in results)
    assert await one.balance(u1) == (STARTER, 0)  # paid 15 × 700, earned 15 × 700
    report = await two.audit()
    assert report.ok, report


async def test_sweepers_and_receipts_race_without_losing_credits(ledgers) -> None:
    one, two = ledgers
    past = datetime.now(UTC) - timedelta(seconds=120)
    user, owner = key(), key()
    await one.ensure_user_with_grant(user, past)
    await bind_node(one, "n", owner)
    job_ids = [await open_job(one, user, "n", past) for _ in range(20)]
    now = datetime.now(UTC)

    swept_one, swept_two, *settled = await asyncio.gather(
        one.expire_stale(now),
        two.expire_stale(now),
        *(two.record_receipt(receipt(j, "n"), now) for j in job_ids[::2]),
    )

    expired = {s.job_id for s in swept_one + swept_two}
    paid = {s.job_id for s in settled if not s.already_settled}
    assert len(swept_one) + len(swept_two) == len(expired)  # no job swept twice
    assert expired | paid == set(job_ids) and not expired & paid
    assert (await one.balance(user))[1] == 0
    assert (await one.audit()).ok


async def test_ledger_entries_are_append_only_in_the_database(ledgers) -> None:
    one, _ = ledgers
    user = key()
    await one.ensure_user_with_grant(user, datetime.now(UTC))
    async with one._sessions() as session:
        for statement in (
            "UPDATE ledger_entries SET amount_millicredits = 1",
            "DELETE FROM ledger_entries",
        ):
            with pytest.raises(DBAPIError, match="append-only"):
                async with session.begin():
                    await session.execute(text(statement))
    assert len((await one.transactions(user)).entries) == 1


async def test_a_second_payout_for_one_job_is_refused_by_the_database(ledgers) -> None:
    one, _ = ledgers
    now = datetime.now(UTC)
    user, owner = key(), key()
    await one.ensure_user_with_grant(user, now)
    await bind_node(one, "n", owner)
    job_id = await open_job(one, user, "n", now)
    await one.record_receipt(receipt(job_id, "n", Outcome.FAILED), now)

    async with one._sessions() as session:
        with pytest.raises(IntegrityError):
            async with session.begin():
                await session.execute(
                    text(
                        "INSERT INTO ledger_entries (created_at, account, kind,"
                        " amount_millicredits, job_id, balance_after_millicredits)"
                        " VALUES (:now, :user, 'refund', 10000, :job, 0)"
                    ),
                    {"now": now, "user": user, "job": job_id},
                )
    assert (await one.audit()).ok
