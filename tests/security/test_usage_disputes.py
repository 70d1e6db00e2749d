"""The client countersigns what it received; a node that claims more gets a dispute."""

from __future__ import annotations

import time

import grpc
import pytest
from sqlalchemy import select, update

from tests.conftest import signed_receipt
from troop_client import Message, TroopClient
from troop_common.errors import TroopError
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.db.models import Job, nodes_table
from troop_coordinator.ledger.settling import AGREE_STEP
from troop_coordinator.usage import UsageBook

MODEL = "smollm2-135m-instruct"


def receipt(worker, grant, user, *, tokens: int, duration_ms: int) -> pb.SubmitReceiptRequest:
    return signed_receipt(
        worker.identity.key,
        grant.job_id,
        grant.node_id,
        user.identity,
        prompt_tokens=3,
        completion_tokens=tokens,
        duration_ms=duration_ms,
    )


async def test_an_honest_job_agrees(mesh, eventually) -> None:
    sessions = mesh.coordinator.ledger.sessions
    book = UsageBook(sessions)
    async with sessions.begin() as session:  # earlier disputes cost every node standing
        await session.execute(update(nodes_table).values(reputation=0.5))
    async with TroopClient(mesh.address, Identity.generate()) as troop:
        answer = await troop.complete([Message("user", "count my words please")], model=MODEL)
        await troop.drain_reports(5)

    async def settled() -> Job | None:
        async with sessions() as session:
            row = (
                await session.execute(select(Job).where(Job.job_id == answer.job_id))
            ).scalar_one()
            return row if row.usage_reported_at is not None and row.settled_at else None

    job = await eventually(settled)
    # Both sides claimed what was delivered, the two were compared and agreed: no dispute,
    # and the serving node (only it) won standing back.
    assert job.node_completion_tokens == job.client_completion_tokens
    assert job.client_completion_tokens == answer.usage.completion_tokens > 0
    assert await book.disputes_of(job.node_id) == []
    for worker in mesh.workers:
        want = 0.5 + AGREE_STEP if worker.node_id == job.node_id else 0.5
        assert await book.reputation(worker.node_id) == pytest.approx(want)


async def test_an_inflated_receipt_is_a_dispute_either_order(mesh) -> None:
    user = mesh.user()
    await user.join()
    book = UsageBook(mesh.coordinator.ledger.sessions)
    # Client first, then the node's inflated receipt.
    grant = await user.authorize(MODEL)
    worker = mesh.worker_for(grant.node_id)
    reply = await user.report_usage(grant.job_id, completion_tokens=5, stream_ms=400)
    assert (reply.compared, reply.disputed) == (False, False)
    settled = await mesh.user().submit_receipt(
        receipt(worker, grant, user, tokens=250, duration_ms=60_000)
    )
    assert settled.kind == pb.SETTLEMENT_KIND_CHARGED  # settlement stays immediate
    disputes = await book.disputes_of(worker.node_id)
    assert [d["job_id"] for d in disputes] == [grant.job_id]
    assert "250 completion tokens" in disputes[0]["reason"]
    first = await book.reputation(worker.node_id)
    assert first is not None and first < 1.0

    # The node's receipt first, then the client's report.
    grant2 = await user.authorize(MODEL)
    worker2 = mesh.worker_for(grant2.node_id)
    await mesh.user().submit_receipt(receipt(worker2, grant2, user, tokens=90, duration_ms=90_000))
    reply = await user.report_usage(grant2.job_id, completion_tokens=9, stream_ms=1_000)
    assert (reply.compared, reply.disputed) == (True, True)
    # A second report changes nothing, and nobody reports another user's job.
    again = await user.report_usage(grant2.job_id, completion_tokens=900, stream_ms=900_000)
    assert again.already_reported
    with pytest.raises(TroopError) as denied:
        await mesh.user().report_usage(grant2.job_id, completion_tokens=0, stream_ms=0)
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED


async def test_discovery_prefers_the_reputable_node(mesh, eventually) -> None:
    user = mesh.user()
    await user.join()
    book = UsageBook(mesh.coordinator.ledger.sessions)
    cheat = mesh.workers[0]
    # Two disputes against the cheat (each a job given to it, claimed far beyond the report).
    disputed = 0
    while disputed < 2:
        grant = await user.authorize(MODEL)
        worker = mesh.worker_for(grant.node_id)
        if worker is not cheat:
            await mesh.user().submit_receipt(receipt(worker, grant, user, tokens=1, duration_ms=1))
            await user.report_usage(grant.job_id, completion_tokens=1, stream_ms=10)
            continue
        await user.report_usage(grant.job_id, completion_tokens=1, stream_ms=10)
        await mesh.user().submit_receipt(
            receipt(cheat, grant, user, tokens=200, duration_ms=50_000)
        )
        disputed += 1
    assert (await book.reputation(cheat.node_id) or 1.0) < 0.7

    async def listed_with_reputation() -> bool:
        # The registry learns the new reputation from the cheat's next heartbeat.
        live = await mesh.coordinator.registry.live_nodes(time.time(), MODEL)
        return any(n.node_id == cheat.node_id and n.reputation < 0.7 for n in live)

    await eventually(listed_with_reputation, timeout_s=20)
    picks = [(await user.authorize(MODEL)).node_id for _ in range(6)]
    assert cheat.node_id not in picks
