"""A worker killed mid-stream never sends its receipt: the reservation comes back
once the ticket has expired and the settle grace has passed, not before."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc

from tests.conftest import ticket_metadata
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.proto import inference_pb2, inference_pb2_grpc
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings

from . import conftest as state

TICKET_TTL_S = 2
GRACE_S = 1.0


async def test_reservation_returns_after_ticket_expiry_and_grace_when_worker_dies(
    postgres_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    ticket_key_pem: bytes,
    processes,
    eventually,
) -> None:
    settings = CoordinatorSettings(
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
    async with Coordinator(settings) as coordinator:
        worker = processes(
            "troop_worker",
            {
                "TROOP_COORDINATOR": coordinator.address,
                "TROOP_WORKER_ENGINE": "fake",
                "TROOP_WORKER_PORT": "0",
                "TROOP_WORKER_DATA_DIR": str(tmp_path / "worker"),
                "TROOP_WORKER_HEARTBEAT_S": "1",
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
            ticket_expires = job.expires_at.ToDatetime(UTC).timestamp()
            async with grpc.aio.insecure_channel(job.endpoint) as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                call = stub.ChatCompletion(
                    inference_pb2.ChatCompletionRequest(
                        model=state.MODEL,
                        messages=[{"role": "user", "content": "word " * 400}],
                    ),
                    metadata=ticket_metadata(job.ticket, identity, job.job_id, job.node_id),
                )
                first = await call.read()
                assert first.delta  # streaming has begun
                worker.kill(signal.SIGKILL)
                assert await worker.wait() == -signal.SIGKILL
                call.cancel()

            held = await user.get_balance()
            assert held.reserved_millicredits == job.reserved_millicredits

            await eventually(_returned(user), timeout_s=TICKET_TTL_S + GRACE_S + 10)
            returned = time.time()
            # Not before the ticket expired and the grace passed.
            assert returned >= ticket_expires + GRACE_S
            balance = await user.get_balance()
            assert balance.balance_millicredits == settings.starter_millicredits
            newest = (await user.list_transactions()).transactions[0]
            assert (
                newest.job_id == job.job_id
                and newest.amount_millicredits == job.reserved_millicredits
            )
        finally:
            await user.close()
        assert (await coordinator.ledger.audit()).ok
        assert await coordinator.ledger.expire_stale(datetime.now(UTC)) == []


async def _has_nodes(user: CoordinatorClient) -> bool:
    return bool((await user.list_nodes(state.MODEL)).nodes)


def _died(worker: state.Process) -> bool:
    raise AssertionError(f"the worker exited:\n{worker.output()}")


def _returned(user: CoordinatorClient):
    async def check() -> bool:
        return (await user.get_balance()).reserved_millicredits == 0

    return check
