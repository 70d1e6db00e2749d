"""A worker killed mid-stream never sends its receipt. What its job costs is what the client
vouches it received (docs/adr/0048): with no countersignature the reservation comes back once
the ticket has expired and the settle grace has passed, not before; with the client's
countersignature of N tokens the node's owner is paid N tokens' price at the countersign
deadline, and the user charged exactly that."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import grpc

from tests.conftest import ticket_metadata
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_common.proto import inference_pb2, inference_pb2_grpc
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings

from . import conftest as state

TICKET_TTL_S = 2
GRACE_S = 1.0


@dataclass
class KilledJob:
    coordinator: Coordinator
    user: CoordinatorClient
    owner: str  # the worker's owner's public key
    job: pb.AuthorizeResponse
    received_bytes: int  # what reached the client before the worker died


@asynccontextmanager
async def killed_mid_stream(
    settings: CoordinatorSettings, tmp_path: Path, processes, eventually, chunks: int
) -> AsyncIterator[KilledJob]:
    """A coordinator, a worker serving one job that is SIGKILLed after `chunks` chunks."""
    async with Coordinator(settings) as coordinator:
        owner = Identity.generate().public_key_hex
        worker = processes(
            "troop_worker",
            {
                "TROOP_COORDINATOR": coordinator.address,
                "TROOP_WORKER_ENGINE": "fake",
                "TROOP_WORKER_PORT": "0",
                "TROOP_WORKER_DATA_DIR": str(tmp_path / "worker"),
                "TROOP_WORKER_HEARTBEAT_S": "1",
                "TROOP_WORKER_OWNER": owner,
            },
            tmp_path / "worker.log",
        )
        identity = Identity.generate()
        user = CoordinatorClient(coordinator.address, identity)
        try:
            await eventually(
                lambda: _has_nodes(user) if worker.popen.poll() is None else _died(worker),
                timeout_s=30,
            )
            job = await user.authorize(state.MODEL)
            received = 0
            async with grpc.aio.insecure_channel(job.endpoint) as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                call = stub.ChatCompletion(
                    inference_pb2.ChatCompletionRequest(
                        model=state.MODEL,
                        messages=[{"role": "user", "content": "word " * 400}],
                    ),
                    metadata=ticket_metadata(job.ticket, identity, job.job_id, job.node_id),
                )
                for _ in range(chunks):
                    chunk = await call.read()
                    assert chunk.delta  # streaming, no usage yet
                    received += len(chunk.delta.encode())
                worker.kill(signal.SIGKILL)
                assert await worker.wait() == -signal.SIGKILL
                call.cancel()

            held = await user.get_balance()
            assert held.reserved_millicredits == job.reserved_millicredits
            yield KilledJob(coordinator, user, owner, job, received)
        finally:
            await user.close()
        assert (await coordinator.ledger.audit()).ok
        assert await coordinator.ledger.expire_stale(datetime.now(UTC)) == []


def coordinator_settings(
    postgres_url: str, redis_url: str, redis_prefix: str, tmp_path: Path, ticket_key_pem: bytes
) -> CoordinatorSettings:
    return CoordinatorSettings(
        port=0,
        data_dir=state.make_data_dir(tmp_path / "coordinator", ticket_key_pem),
        database_url=postgres_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        heartbeat_interval_s=1,
        node_ttl_s=3.0,
        ticket_ttl_s=TICKET_TTL_S,
        settle_grace_s=GRACE_S,
        sweep_interval_s=0.2,
        shutdown_grace_s=0.5,
    )


async def test_reservation_returns_after_ticket_expiry_and_grace_when_worker_dies(
    postgres_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    ticket_key_pem: bytes,
    processes,
    eventually,
) -> None:
    # The client never countersigns: nobody vouches for anything delivered.
    settings = coordinator_settings(postgres_url, redis_url, redis_prefix, tmp_path, ticket_key_pem)
    async with killed_mid_stream(settings, tmp_path, processes, eventually, chunks=1) as killed:
        user, job = killed.user, killed.job
        ticket_expires = job.expires_at.ToDatetime(UTC).timestamp()

        await eventually(_returned(user), timeout_s=TICKET_TTL_S + GRACE_S + 10)
        returned = time.time()
        # Not before the ticket expired and the grace passed.
        assert returned >= ticket_expires + GRACE_S
        balance = await user.get_balance()
        assert balance.balance_millicredits == settings.starter_millicredits
        newest = (await user.list_transactions()).transactions[0]
        assert (
            newest.job_id == job.job_id and newest.amount_millicredits == job.reserved_millicredits
        )
        assert (await user.get_job(job.job_id)).state == pb.JOB_STATE_EXPIRED


async def test_a_killed_worker_is_paid_for_what_its_client_countersigns(
    postgres_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    ticket_key_pem: bytes,
    processes,
    eventually,
) -> None:
    settings = replace(
        coordinator_settings(postgres_url, redis_url, redis_prefix, tmp_path, ticket_key_pem),
        ticket_ttl_s=300,  # the job must settle long before its ticket expires
        settle_grace_s=300.0,
        countersign_s=0.5,
    )
    async with killed_mid_stream(settings, tmp_path, processes, eventually, chunks=5) as killed:
        user, job = killed.user, killed.job
        vouched = killed.received_bytes + 1  # cut before any usage (docs/protocol.md)
        report = await user.report_usage(job.job_id, completion_tokens=vouched, stream_ms=200)
        assert report.kind == pb.SETTLEMENT_KIND_PENDING

        async def charged() -> bool:
            return (await user.get_job(job.job_id)).state == pb.JOB_STATE_CHARGED

        await eventually(charged, timeout_s=15)
        price = job.price.completion_millicredits_per_1k_tokens
        charge = min(job.reserved_millicredits, (vouched * price + 500) // 1000)
        assert charge > 0
        assert (await user.get_job(job.job_id)).charged_millicredits == charge
        balance = await user.get_balance()
        assert (balance.balance_millicredits, balance.reserved_millicredits) == (
            settings.starter_millicredits - charge,
            0,
        )
        assert await killed.coordinator.ledger.balance(killed.owner) == (charge, 0)


async def _has_nodes(user: CoordinatorClient) -> bool:
    return bool((await user.list_nodes(state.MODEL)).nodes)


def _died(worker: state.Process) -> bool:
    raise AssertionError(f"the worker exited:\n{worker.output()}")


def _returned(user: CoordinatorClient):
    async def check() -> bool:
        return (await user.get_balance()).reserved_millicredits == 0

    return check
