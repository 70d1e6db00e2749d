"""Redis goes away: money stays correct, discovery and replay refuse with UNAVAILABLE,
the health sub-service says NOT_SERVING, and it all comes back with Redis."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.conftest import free_port, require
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import TroopError
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_common.replay import MemoryReplaySet
from troop_coordinator.app import REDIS_HEALTH_SERVICE, Coordinator
from troop_coordinator.settings import CoordinatorSettings

from . import conftest as state

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class OwnRedis:
    """A redis-server of this test's own, so it can be stopped and started again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def own_redis(redis_url: str):
    # With CI=true a missing binary fails the test instead of skipping it.
    require("Redis", shutil.which("redis-server") is not None, "redis-server is not on PATH")
    server = OwnRedis(free_port())
    server.start()
    yield server
    server.stop()


def _settings(tmp_path: Path, pem: bytes, database_url: str, redis_url: str):
    return CoordinatorSettings(
        port=0,
        data_dir=state.make_data_dir(tmp_path / "coordinator", pem),
        database_url=database_url,
        redis_url=redis_url,
        redis_check_interval_s=0.1,
        verify_node_endpoints=False,  # the node is an identity, no worker behind it
        shutdown_grace_s=0.2,
    )


async def test_losing_redis_loses_no_money_and_health_says_so(
    postgres_url: str, own_redis: OwnRedis, tmp_path: Path, ticket_key_pem: bytes, eventually
) -> None:
    settings = _settings(tmp_path, ticket_key_pem, postgres_url, own_redis.url)
    node = state.new_node()
    async with Coordinator(settings) as coordinator:
        address = coordinator.address
        node_client = CoordinatorClient(address, node.identity)
        user = CoordinatorClient(address, Identity.generate())
        try:
            await eventually(lambda: _status(address, SERVING), timeout_s=10)
            await node.heartbeat(node_client)
            job = await user.authorize(state.MODEL)
            await user.report_usage(job.job_id, completion_tokens=5, stream_ms=10)

            own_redis.stop()
            await eventually(lambda: _status(address, NOT_SERVING), timeout_s=10)
            assert await state.health_status(address) == SERVING  # the service itself
            with pytest.raises(TroopError) as caught:
                await user.authorize(state.MODEL)
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            # Receipts need no Redis: the job still settles, exactly once.
            settled = await user.submit_receipt(node.receipt(job.job_id, user.identity))
            assert settled.kind == pb.SETTLEMENT_KIND_CHARGED and not settled.already_settled
            assert (await coordinator.ledger.audit()).ok
            assert (await coordinator.ledger.balance(user.identity.public_key_hex))[1] == 0

            own_redis.start()
            await eventually(lambda: _status(address, SERVING), timeout_s=10)
            await eventually(lambda: _heartbeats(node, node_client), timeout_s=10)
            assert (await user.authorize(state.MODEL)).node_id == node.node_id
        finally:
            await node_client.close()
            await user.close()


async def test_discovery_down_is_unavailable_and_reserves_nothing(
    database_url: str, tmp_path: Path, ticket_key_pem: bytes
) -> None:
    # Replays kept in-process, so the registry is the part that fails here.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = _settings(tmp_path, ticket_key_pem, database_url, dead)
    async with Coordinator(settings, replays=MemoryReplaySet()) as coordinator:
        user = CoordinatorClient(coordinator.address, Identity.generate())
        try:
            with pytest.raises(TroopError) as caught:
                await user.authorize(state.MODEL)
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            assert "discovery unavailable" in caught.value.message
            assert (await user.get_balance()).reserved_millicredits == 0
            assert (
                await state.health_status(coordinator.address, REDIS_HEALTH_SERVICE) == NOT_SERVING
            )
        finally:
            await user.close()
        assert (await coordinator.ledger.audit()).ok


async def _status(address: str, wanted: int) -> bool:
    return await state.health_status(address, REDIS_HEALTH_SERVICE) == wanted


async def _heartbeats(node: state.TestNode, client: CoordinatorClient) -> bool:
    try:
        await node.heartbeat(client)
    except TroopError:
        return False
    return True


async def test_a_burst_beyond_the_connection_pool_waits_instead_of_failing(
    redis_url, redis_prefix
) -> None:
    # 150 commands at once, each holding its connection a moment: with redis-py's default
    # pool the 101st raised "Too many connections" (an UNAVAILABLE for its caller).
    from troop_common.stores import REDIS_MAX_CONNECTIONS, connect_redis

    client = connect_redis(redis_url)
    try:
        burst = 150
        assert burst > 100 > REDIS_MAX_CONNECTIONS
        results = await asyncio.gather(
            *(client.blpop(f"{redis_prefix}empty-{i}", timeout=0.1) for i in range(burst)),
            return_exceptions=True,
        )
    finally:
        await client.aclose()
    assert [r for r in results if isinstance(r, Exception)] == []
