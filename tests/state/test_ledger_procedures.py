"""The PostgreSQL ledger functions (migrations 0007, 0009) and the Python flows SQLite runs
agree.

On PostgreSQL each money-moving call is one stored function; on SQLite the same flow
runs as Python. These tests hold the two to the same answers: the settlement rule
over a grid of inputs, and every flow (both sides' claims in either order, disputes,
failures, late claims, sweeps, a node that never sent its receipt, a node with no row,
a proof withdrawn, reservations refused as not joined, over the cap or short of
credits) played on both backends with the same keys and clocks, comparing what a user
and an operator see: settlements, balances, entries, jobs, disputes and the nodes'
standing. Downgrading 0009 puts 0007's functions back.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select

from troop_common.errors import TroopError
from troop_coordinator.db import migrate
from troop_coordinator.db.engine import create_engine, session_factory
from troop_coordinator.db.models import (
    disputes_table,
    entries_table,
    jobs_table,
    nodes_table,
    users_table,
)
from troop_coordinator.ledger import ClientClaim, Ledger, NewJob, NodeClaim, Outcome
from troop_coordinator.ledger.settlement import countersigned_terms, far_below_proof, terms_for
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.registry import LiveNode

MODEL = "smollm2-135m-instruct"
SLACK = 2
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
USER = "7" * 64
STRANGER = "9" * 64  # never joined
LOW_OWNER, HIGH_OWNER = "0" * 64, "f" * 64  # credited before / after the user


async def test_the_settlement_rule_is_the_same_in_python_and_sql(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    await migrate.upgrade(engine)
    await engine.dispose()
    connection = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        grid = itertools.product(
            (0, 1, 500, 10**6),  # reserved
            ((0, 0), (1, 1), (3, 7), (250, 1000)),  # prompt and completion price per 1k
            (None, 0, 9, 4096),  # node's prompt tokens
            (0, 1, 5, 100),  # node's completion tokens
            (None, 0, 3, 5, 8, 100),  # client's completion tokens (None: no report)
        )
        for reserved, (p_price, c_price), prompt, node, client in grid:
            job = SimpleNamespace(
                reserved_millicredits=reserved,
                prompt_price_per_1k=p_price,
                completion_price_per_1k=c_price,
                node_prompt_tokens=prompt,
                node_completion_tokens=node,
                client_completion_tokens=client,
                usage_reported_at=None if client is None else T0,
            )
            expected = terms_for(job, token_slack=SLACK)
            row = await connection.fetchrow(
                "SELECT * FROM troop_ledger_terms($1, $2, $3, $4, $5, $6, $7)",
                reserved, p_price, c_price, prompt, node, client, SLACK,
            )  # fmt: skip
            assert (row["charged"], row["dispute"]) == (expected.charged, expected.dispute), job

        # A job with no receipt, on the client's count alone: troop_ledger_settle_countersigned
        # charges the rule's terms for a node that claimed that count and no prompt.
        alone = itertools.product(
            (0, 1, 500, 10**6), ((0, 0), (1, 1), (3, 7), (250, 1000)), (1, 3, 100, 4096)
        )
        for reserved, (p_price, c_price), client in alone:
            job = SimpleNamespace(
                reserved_millicredits=reserved,
                prompt_price_per_1k=p_price,
                completion_price_per_1k=c_price,
                client_completion_tokens=client,
            )
            charged = await connection.fetchval(
                "SELECT charged FROM troop_ledger_terms($1, $2, $3, 0, $4, $4, 0)",
                reserved, p_price, c_price, client,
            )  # fmt: skip
            assert charged == countersigned_terms(job).charged, job

        speeds = itertools.product(
            (None, 0, 15, 16, 400),  # countersigned tokens (None: no report)
            (0, 1, 999, 4000),  # stream ms
            (0, 1, 52, 4000),  # completion price per 1k
            (0.5, 1.0, 1.01, 40.0),  # multiplier
        )
        for tokens, stream_ms, price, multiplier in speeds:
            job = SimpleNamespace(
                usage_reported_at=None if tokens is None else T0,
                client_completion_tokens=tokens,
                client_stream_ms=stream_ms,
                completion_price_per_1k=price,
            )
            slow = await connection.fetchval(
                "SELECT troop_ledger_far_below_proof($1, $2, $3, $4, $5, 16, 0.5)",
                tokens is not None, tokens, stream_ms, price, multiplier,
            )  # fmt: skip
            assert slow == far_below_proof(job, multiplier), job
    finally:
        await connection.close()


# -- every flow, on both backends --------------------------------------------------------

Step = Callable[[Ledger, str], Awaitable[Any]]


def job_for(job_id: str, node_id: str) -> NewJob:
    return NewJob(
        job_id, USER, node_id, MODEL, 20_000, T0, T0 + timedelta(minutes=5),
        100, 100, 2_000, 100_000,
    )  # fmt: skip


def countersign(tokens: int, stream_ms: int = 100) -> Step:
    return lambda ledger, job_id: ledger.record_countersignature(
        ClientClaim(job_id, USER, tokens, stream_ms), T0 + timedelta(seconds=2)
    )


def receipt(tokens: int, node_id: str = "low", failed: bool = False) -> Step:
    outcome = Outcome.FAILED if failed else Outcome.COMPLETED
    claim = lambda job_id: NodeClaim(job_id, node_id, outcome, 40, tokens, 900)  # noqa: E731
    return lambda ledger, job_id: ledger.record_receipt(claim(job_id), T0 + timedelta(seconds=3))


def sweep_overdue(ledger: Ledger, _job_id: str) -> Awaitable[Any]:
    return ledger.settle_overdue(T0 + timedelta(hours=1))


def sweep_stale(ledger: Ledger, _job_id: str) -> Awaitable[Any]:
    return ledger.expire_stale(T0 + timedelta(hours=1))


def sweep_overdue_early(ledger: Ledger, _job_id: str) -> Awaitable[Any]:
    """Before any countersign deadline of these scenarios (claims at T0 + 2-3 s, 60 s)."""
    return ledger.settle_overdue(T0 + timedelta(seconds=30))


# (node the job runs on, steps); "ghost" never heartbeated (no row, no owner to pay),
# "fast" proved a multiplier of 40 and runs its jobs far below it.
SCENARIOS: list[tuple[str, list[Step]]] = [
    ("low", [countersign(7), receipt(7)]),
    ("high", [receipt(7, "high"), countersign(7)]),
    ("low", [receipt(10), countersign(3)]),  # a dispute
    ("high", [countersign(3), receipt(10, "high")]),  # a dispute, the other way round
    ("low", [countersign(0), receipt(6)]),  # nothing delivered, then a late receipt
    ("low", [receipt(6, failed=True), countersign(2)]),  # failed, then a late report
    ("low", [receipt(5), receipt(9), countersign(5), countersign(4)]),  # second claims
    ("high", [receipt(4, "high"), sweep_overdue]),  # the receipt alone, at the deadline
    ("low", [sweep_stale]),  # nobody spoke: expired, the node marked down
    ("low", [countersign(4), sweep_stale]),  # only the client spoke: on its count, at expiry
    # The node killed mid-stream (no receipt): not before the deadline, then on the client's
    # count; then a late receipt, compared (a dispute) and moving nothing.
    ("high", [countersign(6), sweep_overdue_early, sweep_overdue]),
    ("low", [countersign(6), sweep_overdue, receipt(9)]),
    ("ghost", [countersign(6), sweep_overdue]),  # no receipt, and nobody to pay
    ("ghost", [countersign(5), receipt(5, "ghost")]),  # charged 0: nobody to pay
    ("low", [receipt(5, "high"), countersign(5, 0), receipt(5)]),  # wrong node, then right
    *[("fast", [countersign(64, 60_000), receipt(64, "fast")]) for _ in range(5)],
]


async def play(database_url: str) -> tuple[list[Any], dict[str, Any]]:
    """Every scenario on a fresh database; what each step returned or raised, and the
    ledger's tables afterwards."""
    engine = create_engine(database_url)
    try:
        await migrate.upgrade(engine)
        ledger = Ledger(session_factory(engine), starter_millicredits=10**7, token_slack=SLACK)
        await ledger.ensure_user_with_grant(USER, T0)
        nodes = NodeDirectory(ledger.sessions)
        for node_id, owner in (("low", LOW_OWNER), ("high", HIGH_OWNER), ("fast", LOW_OWNER)):
            live = LiveNode(node_id, node_id.ljust(64, "0"), f"{node_id}:1", (MODEL,))
            await nodes.record_heartbeat(live, owner, T0)
        await nodes.set_multiplier("fast", 40.0)
        outcomes: list[Any] = []
        for number, (node_id, steps) in enumerate(SCENARIOS):
            job_id = f"job-{number:02d}"
            await ledger.reserve(job_for(job_id, node_id))
            for step in steps:
                try:
                    outcomes.append(await step(ledger, job_id))
                except TroopError as exc:
                    outcomes.append((type(exc).__name__, str(exc)))
        # Reservations refused, each for its own reason, writing nothing: a key that never
        # joined, the cap on open jobs (with the first of their expiries), credits short.
        for number in range(2):
            later = T0 + timedelta(minutes=5 + number)
            await ledger.reserve(
                replace(job_for(f"held-{number}", "low"), expires_at=later), max_open_jobs=2
            )
        refused = [
            (replace(job_for("refused-0", "low"), user_public_key=STRANGER), 2),
            (job_for("refused-1", "low"), 2),
            (replace(job_for("refused-2", "low"), reserved_millicredits=10**9), 3),
        ]
        for job, cap in refused:
            try:
                await ledger.reserve(job, max_open_jobs=cap)
                outcomes.append("reserved")
            except TroopError as exc:
                outcomes.append((type(exc).__name__, str(exc), dict(vars(exc))))
        assert (await ledger.audit()).ok
        async with ledger.sessions() as session:

            async def rows(statement: Any) -> list[dict[str, Any]]:
                return [dict(r._mapping) for r in (await session.execute(statement)).all()]

            tables = {
                "users": await rows(select(users_table).order_by(users_table.c.public_key)),
                "entries": await rows(select(entries_table).order_by(entries_table.c.id)),
                "jobs": await rows(select(jobs_table).order_by(jobs_table.c.job_id)),
                "disputes": await rows(select(disputes_table).order_by(disputes_table.c.job_id)),
                "nodes": await rows(
                    select(
                        nodes_table.c.node_id,
                        nodes_table.c.reputation,
                        nodes_table.c.slow_jobs,
                        nodes_table.c.multiplier,
                        nodes_table.c.proven,
                    ).order_by(nodes_table.c.node_id)
                ),
            }
        return outcomes, tables
    finally:
        await engine.dispose()


@pytest.fixture
async def both(sqlite_url: str, postgres_url: str) -> AsyncIterator[tuple[str, str]]:
    yield sqlite_url, postgres_url


async def test_every_flow_ends_the_same_on_sqlite_and_postgresql(both) -> None:
    sqlite_url, postgres_url = both
    on_sqlite = await play(sqlite_url)
    on_postgres = await play(postgres_url)

    assert on_postgres[0] == on_sqlite[0]  # every settlement, and every refusal
    for table in on_sqlite[1]:
        assert on_postgres[1][table] == on_sqlite[1][table], table
    # The scenarios reach what they are about (on both, as they are equal).
    statuses = {job["status"] for job in on_sqlite[1]["jobs"]}
    assert statuses == {"charged", "refunded", "expired", "open"}  # open: the two held
    assert len(on_sqlite[1]["disputes"]) >= 4
    # Without a receipt: the client's count at the completion price (100 per token), no
    # prompt tokens, to the owner; the ghost's owner is nobody.
    unreceipted = {
        (job["node_id"], job["client_completion_tokens"], job["charged_millicredits"])
        for job in on_sqlite[1]["jobs"]
        if job["status"] == "charged" and job["node_duration_ms"] is None
    }
    assert unreceipted == {("low", 4, 400), ("high", 6, 600), ("ghost", 6, 0)}
    refusals = [o[:2] for o in on_sqlite[0][-3:]]
    assert refusals == [
        ("NotJoined", "join first"),
        ("TooManyOpenJobs", "too many open jobs: 2 of at most 2 per user"),
        ("InsufficientCredits", refusals[2][1]),
    ]
    assert on_sqlite[0][-2][2]["first_expiry"] == T0 + timedelta(minutes=5)
    fast = next(n for n in on_sqlite[1]["nodes"] if n["node_id"] == "fast")
    assert (fast["multiplier"], fast["proven"]) == (1.0, False)  # the proof was withdrawn


async def test_downgrading_0009_puts_back_the_functions_of_0007(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    connection = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))

    async def functions() -> set[tuple[str, int, bool]]:
        """(name, argument count, settles on a countersignature) of the changed functions."""
        rows = await connection.fetch(
            "SELECT proname, pronargs, prosrc LIKE '%countersigned%' FROM pg_proc"
            " WHERE proname IN ('troop_ledger_record_countersignature',"
            " 'troop_ledger_settle_countersigned', 'troop_ledger_close_open')"
        )
        return {tuple(row) for row in rows}

    try:
        await migrate.upgrade(engine)
        assert await functions() == {
            ("troop_ledger_record_countersignature", 6, False),  # 0007's, for old replicas
            ("troop_ledger_record_countersignature", 7, False),
            ("troop_ledger_settle_countersigned", 3, False),
            ("troop_ledger_close_open", 3, True),
        }
        await migrate.downgrade(engine, "0008")
        assert await functions() == {
            ("troop_ledger_record_countersignature", 6, False),
            ("troop_ledger_close_open", 3, False),  # 0007's: no receipt means expired
        }
        await migrate.upgrade(engine)
        await migrate.downgrade(engine, "base")  # 0007's downgrade finds one of each name
        assert await functions() == set()
    finally:
        await connection.close()
        await engine.dispose()
