"""Settlements survive a coordinator outage and a worker restart: a real worker finishes jobs
while the coordinator is down, is stopped and started again, and once the coordinator is
back every job settles, exactly once, from the receipts the worker kept on disk."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc

from tests.conftest import free_port, ticket_metadata
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity, load_ed25519_private
from troop_common.proto import coordinator_pb2 as pb
from troop_common.proto import inference_pb2, inference_pb2_grpc

from . import conftest as state

JOBS = 3


async def _stream(job: pb.AuthorizeResponse, user: Identity) -> str:
    async with grpc.aio.insecure_channel(job.endpoint) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        call = stub.ChatCompletion(
            inference_pb2.ChatCompletionRequest(
                model=state.MODEL, messages=[{"role": "user", "content": "count to five"}]
            ),
            metadata=ticket_metadata(job.ticket, user, job.job_id, job.node_id),
        )
        return "".join([chunk.delta async for chunk in call])


async def test_every_job_settles_once_after_a_coordinator_outage_and_a_worker_restart(
    network: state.Network, tmp_path: Path, eventually
) -> None:
    port = free_port()
    coordinator = await network.coordinator("c1.log", port=port)
    worker = network.fake_worker(coordinator.address, "worker", "w1.log")
    user = Identity.generate()
    client = CoordinatorClient(coordinator.address, user)
    try:

        async def listed() -> bool:
            assert worker.popen.poll() is None, worker.output()
            return bool((await client.list_nodes(state.MODEL)).nodes)

        await eventually(listed, timeout_s=60)
        await client.join()
        started_with = (await client.get_balance()).balance_millicredits
        jobs = [await client.authorize(state.MODEL) for _ in range(JOBS)]

        # The coordinator goes away; the worker serves the tickets it already holds.
        coordinator.kill(signal.SIGKILL)
        await coordinator.wait()
        answers = [await _stream(job, user) for job in jobs]
        assert all(answers)

        # The worker stops (its receipts cannot go anywhere) and starts again, still alone.
        worker.kill(signal.SIGTERM)
        assert await worker.wait(30) == 0
        outbox = tmp_path / "worker" / "receipts-outbox"
        assert len(list(outbox.glob("*.msg"))) == JOBS  # kept, one per job
        worker = network.fake_worker(coordinator.address, "worker", "w2.log")  # the same node

        # The coordinator comes back on the same address and database.
        coordinator = await network.coordinator("c2.log", port=port)
        for job, answer in zip(jobs, answers, strict=True):
            await client.report_usage(job.job_id, len(answer.encode()) + 1, 100)

        async def settled() -> bool:
            states = [(await client.get_job(job.job_id)).state for job in jobs]
            return all(s == pb.JOB_STATE_CHARGED for s in states)

        await eventually(settled, timeout_s=60)
        assert list(outbox.glob("*.msg")) == []  # answered: nothing left to send

        charged = [(await client.get_job(job.job_id)).charged_millicredits for job in jobs]
        assert all(amount > 0 for amount in charged)
        history = (await client.list_transactions(page_size=100)).transactions
        charges = [t for t in history if t.job_id in {j.job_id for j in jobs}]
        # Each job: one reservation and one settlement, no second charge from a resent receipt.
        assert sorted(t.job_id for t in charges) == sorted(2 * [j.job_id for j in jobs])
        balance = await client.get_balance()
        assert balance.reserved_millicredits == 0
        assert balance.balance_millicredits == started_with - sum(charged)
        # What the user paid, the worker's owner earned: once.
        owner = Identity(load_ed25519_private(tmp_path / "worker" / "owner.key"))
        async with CoordinatorClient(coordinator.address, owner) as owner_client:
            earned = (await owner_client.get_balance()).balance_millicredits
        assert earned == sum(charged)
    finally:
        await client.close()
