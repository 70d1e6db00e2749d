"""Backends that come back: PostgreSQL, Redis and the coordinator restarted under load.

Each backend is a private instance (tests/state/private_backends.py) so it can be
stopped without touching the shared ones. While a backend is away its calls answer
UNAVAILABLE (never INTERNAL, never past their deadline); once it is back the
coordinator serves again by itself, and the ledger is whole (docs/adr/0050).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

from grpc_health.v1 import health_pb2
from redis.asyncio import Redis
from sqlalchemy import text

from tests.conftest import free_port
from troop_client import Message, TroopClient
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import TroopError
from troop_common.keys import Identity
from troop_common.resilience import NO_RETRY, CircuitBreaker
from troop_coordinator.admin import audit_ledger
from troop_coordinator.app import REDIS_HEALTH_SERVICE
from troop_coordinator.db.engine import create_engine
from troop_coordinator.settings import CoordinatorSettings

from . import conftest as state
from .load import Load
from .private_backends import PrivatePostgres, PrivateRedis

USERS = 6
STARTER_CREDITS = 100_000
HEARTBEAT_INTERVAL_S = 0.2
NODE_TTL_S = 2
PREFIX = "troop-restart:"
# What Redis away means to a caller (docs/adr/0012): UNAVAILABLE, and until the node's
# next heartbeat after Redis is back, no node known for the model.
DEGRADED = ("UNAVAILABLE", "NO_NODE_AVAILABLE")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _env(tmp_path: Path, pem: bytes, database_url: str, redis_url: str) -> dict[str, str]:
    return {
        "TROOP_DATABASE_URL": database_url,
        "TROOP_REDIS_URL": redis_url,
        "TROOP_DATA_DIR": str(state.make_data_dir(tmp_path / "coordinator", pem)),
        "TROOP_STARTER_CREDITS": str(STARTER_CREDITS),
        "TROOP_VERIFY_NODE_ENDPOINTS": "0",  # the node is an identity, no worker behind it
        "TROOP_NODE_TTL_SECONDS": "3600",  # it heartbeats once: liveness is not under test
        "TROOP_REDIS_CHECK_SECONDS": "0.2",
        # Limited (in Redis, so the Redis test sees them fail open), never reached here.
        "TROOP_RATE_LIMITS": "Authorize=1000000/3600@user",
    }


async def test_postgres_restarted_under_load_is_unavailable_then_serves_again(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    tmp_path: Path,
    ticket_key_pem: bytes,
    processes,
    eventually,
) -> None:
    env = _env(tmp_path, ticket_key_pem, private_postgres.url, private_redis.url)
    coordinator = await state.start_coordinator(processes, env, tmp_path / "coordinator.log")
    node = state.new_node()
    async with CoordinatorClient(coordinator.address, node.identity) as node_client:
        await node.heartbeat(node_client)
    load = Load(coordinator.address, node, [Identity.generate() for _ in range(USERS)])
    load.start()
    try:
        await eventually(lambda: load.succeeded >= 20, timeout_s=30)

        await asyncio.to_thread(private_postgres.stop)
        failed_before, succeeded_before = load.failed, load.succeeded
        await eventually(lambda: load.failed >= failed_before + 3 * USERS, timeout_s=30)
        assert load.succeeded <= succeeded_before + USERS  # at most the cycles in flight
        assert load.unexpected() == {}, coordinator.output()

        await asyncio.to_thread(private_postgres.start)
        back = load.succeeded
        await eventually(lambda: load.succeeded >= back + 3 * USERS, timeout_s=30)
    finally:
        await load.stop()
    assert load.unexpected() == {}, coordinator.output()
    assert "Traceback" not in coordinator.output()
    await _assert_whole(private_postgres.url, load.users)


async def _assert_whole(database_url: str, users: list[Identity]) -> None:
    """The audit passes and each user's credits are all accounted for: what is left, what
    open jobs hold and what settled jobs charged add up to the starter grant."""
    report = io.StringIO()
    assert await audit_ledger(CoordinatorSettings(database_url=database_url), out=report) == 0, (
        report.getvalue()
    )
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            for user in users:
                key = user.public_key_hex
                balance = (
                    await connection.execute(
                        text("SELECT balance_millicredits FROM users WHERE public_key = :k"),
                        {"k": key},
                    )
                ).scalar_one()
                held = (
                    await connection.execute(
                        text(
                            "SELECT coalesce(sum(CASE WHEN status = 'open'"
                            " THEN reserved_millicredits ELSE charged_millicredits END), 0)"
                            " FROM jobs WHERE user_public_key = :k"
                        ),
                        {"k": key},
                    )
                ).scalar_one()
                assert balance + held == STARTER_CREDITS * 1000, (key, balance, held)
    finally:
        await engine.dispose()


async def test_redis_restarted_under_load_degrades_then_recovers_by_itself(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    tmp_path: Path,
    ticket_key_pem: bytes,
    processes,
    eventually,
) -> None:
    env = _env(tmp_path, ticket_key_pem, private_postgres.url, private_redis.url)
    coordinator = await state.start_coordinator(processes, env, tmp_path / "coordinator.log")
    node = state.new_node()
    load = Load(coordinator.address, node, [Identity.generate() for _ in range(USERS)])
    async with CoordinatorClient(coordinator.address, node.identity, retry=NO_RETRY) as beats:
        await node.heartbeat(beats)
        heartbeats = asyncio.create_task(_heartbeat_forever(node, beats))
        try:
            await eventually(lambda: _redis_health(coordinator.address, SERVING), timeout_s=10)
            load.start()
            await eventually(lambda: load.succeeded >= 20, timeout_s=30)

            # Redis killed: everything it held (the node registry, replay sets, rate-limit
            # counters) is gone. Discovery and replay protection refuse with UNAVAILABLE,
            # the health sub-service says so; the service itself and the ledger stay up.
            await asyncio.to_thread(private_redis.stop)
            await eventually(lambda: _redis_health(coordinator.address, NOT_SERVING), 10)
            assert await state.health_status(coordinator.address) == SERVING
            failed_before = load.failed
            await eventually(lambda: load.failed >= failed_before + 3 * USERS, timeout_s=30)
            assert load.unexpected(DEGRADED) == {}, coordinator.output()

            # Back, empty: the node's own heartbeats put it in the registry again, and the
            # load carries on without the coordinator being touched.
            await asyncio.to_thread(private_redis.start)
            await eventually(lambda: _redis_health(coordinator.address, SERVING), 10)
            back = load.succeeded
            await eventually(lambda: load.succeeded >= back + 3 * USERS, timeout_s=30)
        finally:
            heartbeats.cancel()
            await load.stop()
    assert load.unexpected(DEGRADED) == {}, coordinator.output()
    assert "Traceback" not in coordinator.output()
    await _assert_whole(private_postgres.url, load.users)


async def _heartbeat_forever(node: state.TestNode, client: CoordinatorClient) -> None:
    """Beats like a worker's (a failed beat is simply followed by the next)."""
    while True:
        with contextlib.suppress(TroopError):
            await node.heartbeat(client)
        await asyncio.sleep(HEARTBEAT_INTERVAL_S)


async def _redis_health(address: str, wanted: int) -> bool:
    return await state.health_status(address, REDIS_HEALTH_SERVICE) == wanted


async def test_coordinator_restarted_worker_reregisters_and_the_sdk_carries_on(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    tmp_path: Path,
    ticket_key_pem: bytes,
    processes,
    eventually,
) -> None:
    env = {
        **_env(tmp_path, ticket_key_pem, private_postgres.url, private_redis.url),
        "TROOP_NODE_TTL_SECONDS": str(NODE_TTL_S),
        "TROOP_HEARTBEAT_INTERVAL_SECONDS": "1",
        "TROOP_REDIS_PREFIX": PREFIX,
    }
    port = free_port()
    coordinator = await state.start_coordinator(processes, env, tmp_path / "first.log", port=port)
    worker = processes(
        "troop_worker",
        {
            "TROOP_COORDINATOR": coordinator.address,
            "TROOP_WORKER_ENGINE": "fake",
            "TROOP_WORKER_PORT": "0",
            "TROOP_WORKER_DATA_DIR": str(tmp_path / "worker"),
            "TROOP_WORKER_HEARTBEAT_S": "0.5",
            # Its heartbeat breaker opens while the coordinator is away; by default it
            # would wait a minute (ADR 49) before the beat that re-registers the node.
            "TROOP_BREAKER_COOLDOWN_SECONDS": "1",
        },
        tmp_path / "worker.log",
    )
    redis = Redis.from_url(private_redis.url)
    observer = CoordinatorClient(coordinator.address, retry=NO_RETRY)
    async with TroopClient(coordinator.address, Identity.generate()) as client:
        # A breaker that tries again after a second, so the test need not wait a minute.
        breaker = client.coordinator.breaker = CircuitBreaker("coordinator", 2, cooldown_s=1)
        try:
            await eventually(lambda: _listed(observer, worker), timeout_s=60)
            assert await _answers(client)

            coordinator.kill(state.signal.SIGTERM)
            assert await coordinator.wait() == 0, coordinator.output()
            # Down long enough for the node to be forgotten: it must register again.
            await eventually(lambda: _forgotten(redis), timeout_s=NODE_TTL_S + 10)
            await eventually(lambda: _refused(client, breaker), timeout_s=30)

            await state.start_coordinator(processes, env, tmp_path / "second.log", port=port)
            await eventually(lambda: _listed(observer, worker), timeout_s=30)
            await eventually(lambda: breaker.state == "half-open", timeout_s=10)
            assert await _answers(client)  # the breaker's trial call
            assert breaker.state == "closed"
        finally:
            await observer.close()
            await redis.aclose()


async def _listed(observer: CoordinatorClient, worker: state.Process) -> bool:
    assert worker.popen.poll() is None, worker.output()
    try:
        return bool((await observer.list_nodes(state.MODEL)).nodes)
    except TroopError:
        return False


async def _answers(client: TroopClient) -> bool:
    text = "".join([c.text async for c in client.chat([Message("user", "hello")])])
    return bool(text)


async def _refused(client: TroopClient, breaker: CircuitBreaker) -> bool:
    """True once the breaker opened over chats failing to reach the coordinator."""
    with contextlib.suppress(TroopError):
        await _answers(client)
    return breaker.state == "open"


async def _forgotten(redis: Redis) -> bool:
    return not await redis.keys(f"{PREFIX}node:*")
