"""Two coordinator processes on one PostgreSQL and one Redis: money stays right.

400 authorize -> settle/fail cycles fired at both replicas at once, every
receipt delivered to both at the same moment. Afterwards: no balance below
zero, no job settled twice, and the audit invariant holds.
"""

from __future__ import annotations

import asyncio
import io
import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text

from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import InsufficientCredits
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.admin import audit_ledger
from troop_coordinator.db.engine import create_engine
from troop_coordinator.settings import CoordinatorSettings

if TYPE_CHECKING:
    from conftest import Process

from . import conftest as state

USERS = 40
CYCLES_PER_USER = 10
IN_FLIGHT = 24
STARTER_CREDITS = 1000  # room for 3 open reservations of 300: some authorizes must be refused


async def test_two_replicas_settle_each_job_once_and_conserve_credits(
    postgres_url: str,
    redis_url: str,
    redis_prefix: str,
    redis_client,
    tmp_path: Path,
    ticket_key_pem: bytes,
    processes,
) -> None:
    data_dir = state.make_data_dir(tmp_path / "shared", ticket_key_pem)
    env = {
        "TROOP_DATABASE_URL": postgres_url,
        "TROOP_REDIS_URL": redis_url,
        "TROOP_REDIS_PREFIX": redis_prefix,
        "TROOP_DATA_DIR": str(data_dir),
        "TROOP_STARTER_CREDITS": str(STARTER_CREDITS),
        "TROOP_VERIFY_NODE_ENDPOINTS": "0",  # the node is an identity, no worker behind it
        # It heartbeats once: liveness is not under test, and a loaded machine must not
        # let it expire mid-run.
        "TROOP_NODE_TTL_SECONDS": "3600",
        "TROOP_SWEEP_INTERVAL_SECONDS": "0.5",  # both sweepers run all along: nothing expires
    }
    replicas: list[Process] = list(
        await asyncio.gather(
            state.start_coordinator(processes, env, tmp_path / "a.log"),
            state.start_coordinator(processes, env, tmp_path / "b.log"),
        )
    )
    node = state.new_node("shared-node")
    node_clients = [CoordinatorClient(r.address, node.identity) for r in replicas]
    users = [Identity.generate() for _ in range(USERS)]
    user_clients = [[CoordinatorClient(r.address, u) for r in replicas] for u in users]
    try:
        # The node heartbeats to replica A only: replica B must still be able to pick it.
        await node.heartbeat(node_clients[0])
        assert [n.node_id for n in (await user_clients[0][1].list_nodes()).nodes] == [node.node_id]
        await node.heartbeat(node_clients[1])

        rng = random.Random(7)
        gate = asyncio.Semaphore(IN_FLIGHT)
        outcomes: Counter[str] = Counter()

        async def cycle(user: int, n: int) -> None:
            async with gate:
                pair = user_clients[user]
                via = pair[(user + n) % 2]
                try:
                    job = await via.authorize(state.MODEL)
                except InsufficientCredits:
                    outcomes["refused"] += 1
                    return
                failed = rng.random() < 0.3
                # The client countersigns first (as the SDK does when its stream ends).
                await via.report_usage(job.job_id, completion_tokens=5, stream_ms=10)
                receipt = node.receipt(
                    job.job_id,
                    via.identity,
                    outcome=pb.JOB_OUTCOME_FAILED if failed else pb.JOB_OUTCOME_COMPLETED,
                    duration_ms=rng.randint(1, 40),
                )
                first, second = await asyncio.gather(
                    pair[0].submit_receipt(receipt), pair[1].submit_receipt(receipt)
                )
                assert [first.already_settled, second.already_settled].count(False) == 1
                assert first.kind == second.kind
                assert first.charged_millicredits == second.charged_millicredits
                outcomes["failed" if failed else "completed"] += 1

        await asyncio.gather(*(cycle(u, n) for n in range(CYCLES_PER_USER) for u in range(USERS)))

        assert sum(outcomes.values()) == USERS * CYCLES_PER_USER
        assert outcomes["completed"] > 100 and outcomes["failed"] > 30, outcomes
        for pair in user_clients:
            balance = await pair[1].get_balance()
            assert balance.balance_millicredits >= 0
            assert balance.reserved_millicredits == 0
        assert await redis_client.exists(f"{redis_prefix}node:{node.node_id}")
    finally:
        for client in [*node_clients, *(c for pair in user_clients for c in pair)]:
            await client.close()

    await _assert_settled_once_and_conserved(postgres_url, USERS * CYCLES_PER_USER, outcomes)
    for replica in replicas:
        replica.kill(state.signal.SIGTERM)
        assert await replica.wait() == 0, replica.output()
        assert "Traceback" not in replica.output()


async def _assert_settled_once_and_conserved(url: str, cycles: int, outcomes: Counter) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text(
                        "SELECT job_id, kind, count(*) FROM ledger_entries"
                        " WHERE job_id IS NOT NULL GROUP BY job_id, kind"
                    )
                )
            ).all()
            result = await connection.execute(text("SELECT status, count(*) FROM jobs GROUP BY 1"))
            statuses = {status: count for status, count in result.all()}
            lowest = (
                await connection.execute(text("SELECT min(balance_millicredits) FROM users"))
            ).scalar_one()
    finally:
        await engine.dispose()
    per_job: dict[str, Counter[str]] = {}
    for job_id, kind, count in rows:
        per_job.setdefault(job_id, Counter())[kind] += count
    assert len(per_job) == cycles - outcomes["refused"]
    for job_id, kinds in per_job.items():
        assert kinds["reserve"] == 1, (job_id, kinds)
        assert kinds["earn"] <= 1, (job_id, kinds)
        assert kinds["release"] + kinds["refund"] <= 1, (job_id, kinds)
        assert not (kinds["earn"] and kinds["refund"]), (job_id, kinds)
    assert statuses.get("open", 0) == 0 and statuses.get("expired", 0) == 0, statuses
    assert statuses.get("refunded", 0) == outcomes["failed"]
    assert statuses.get("charged", 0) == outcomes["completed"]
    assert lowest >= 0

    report = io.StringIO()
    code = await audit_ledger(CoordinatorSettings(database_url=url), out=report)
    assert code == 0, report.getvalue()
    assert "ledger OK" in report.getvalue()
