"""Heartbeats and discovery off the database (docs/adr/0035): a known node's beats are
answered from memory, discovery reads a ranked index, replicas' mirrors follow Redis."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import select

from troop_common.coordinator_client import CoordinatorClient
from troop_coordinator.app import Coordinator
from troop_coordinator.db import migrate
from troop_coordinator.db.engine import create_engine, session_factory
from troop_coordinator.db.models import nodes_table as nodes
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.redis_registry import RedisNodeRegistry
from troop_coordinator.registry import (
    LiveNode,
    MemoryNodeRegistry,
    NodeHardware,
    NodeLoad,
    NodeRegistry,
    rank,
)
from troop_coordinator.settings import CoordinatorSettings

from . import conftest as state

MODEL = state.MODEL
OTHER = "llama-3-8b"
TTL_S = 60.0


def live(i: int, now: float, **changes: object) -> LiveNode:
    node = LiveNode(
        node_id=f"n-{i:03d}",
        node_public_key="ab" * 32,
        endpoint=f"10.0.0.{i % 250}:7000",
        models=(MODEL,) if i % 3 else (MODEL, OTHER),
        load=NodeLoad(active_jobs=i % 4, max_concurrent_jobs=4),
        hardware=NodeHardware(device="cpu", cpu_count=2, memory_bytes=1 << 30),
        last_seen=now,
    )
    return replace(node, **changes)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "redis"])
def registries(request: pytest.FixtureRequest):
    """A factory of registries; on Redis they share the test's Redis and prefix, like
    replicas, each with its own mirror."""
    if request.param == "memory":
        shared = MemoryNodeRegistry(TTL_S, random.Random(3))
        return lambda: shared
    client = request.getfixturevalue("redis_client")
    prefix = request.getfixturevalue("redis_prefix")
    return lambda: RedisNodeRegistry(client, TTL_S, prefix=prefix, refresh_s=0.05)


async def _listed(registry: NodeRegistry, model: str) -> list[LiveNode]:
    page, total = await registry.ranked(time.time(), model, 0, 1000)
    assert total == len(page)
    return page


async def test_discovery_lists_and_picks_by_rank_as_heartbeats_change_nodes(registries) -> None:
    registry = registries()
    draw = random.Random(11)
    now = time.time()
    known: dict[str, LiveNode] = {}
    for step in range(300):
        i = draw.randrange(40)
        node = live(
            i,
            now + step * 0.001,
            load=NodeLoad(active_jobs=draw.randrange(5), max_concurrent_jobs=4),
            reputation=draw.choice([1.0, 1.0, 0.8]),
            multiplier=draw.choice([1.0, 2.0]),
            models=draw.choice([(MODEL,), (OTHER,), (MODEL, OTHER)]),
        )
        await registry.heartbeat(node)
        known[node.node_id] = node
        if step % 50 == 49:
            for model in (MODEL, OTHER, ""):
                expected = sorted(
                    (n for n in known.values() if not model or model in n.models),
                    key=lambda n: (rank(n), n.node_id),
                )
                assert await _listed(registry, model) == expected
                # A page is a slice of the same order.
                page, total = await registry.ranked(time.time(), model, 5, 7)
                assert page == expected[5:12] and total == len(expected)
                excluded = {expected[0].node_id, expected[-1].node_id}
                picked = await registry.pick(model or MODEL, time.time(), excluded)
                candidates = [n for n in known.values() if (model or MODEL) in n.models]
                best = min(rank(n) for n in candidates if n.node_id not in excluded)
                assert picked is not None and picked.node_id not in excluded
                assert rank(picked) == best


async def test_a_pick_among_many_equally_good_nodes_is_drawn_from_all_of_them(
    registries,
) -> None:
    registry = registries()
    now = time.time()
    for i in range(200):  # all idle, all alike: one tie of 200
        await registry.heartbeat(live(i, now, models=(MODEL,), load=NodeLoad()))
    excluded = {f"n-{i:03d}" for i in range(8)}
    picked = {(await registry.pick(MODEL, time.time(), excluded)).node_id for _ in range(60)}
    assert len(picked) > 10 and not picked & excluded


async def test_a_silent_node_leaves_the_ranked_list(registries) -> None:
    registry = registries()
    now = time.time()
    await registry.heartbeat(live(1, now - TTL_S - 1))
    await registry.heartbeat(live(2, now))
    assert [n.node_id for n in await _listed(registry, MODEL)] == ["n-002"]
    assert (await registry.pick(MODEL, now)).node_id == "n-002"


async def test_a_replica_sees_another_replicas_changes(redis_client, redis_prefix, eventually):
    a = RedisNodeRegistry(redis_client, TTL_S, prefix=redis_prefix, refresh_s=0.05)
    b = RedisNodeRegistry(redis_client, TTL_S, prefix=redis_prefix, refresh_s=0.05)
    now = time.time()
    await a.heartbeat(live(1, now, models=(MODEL,)))
    assert [n.node_id for n in await _listed(b, MODEL)] == ["n-001"]  # b's first look

    await a.heartbeat(live(1, now + 1, models=(OTHER,), load=NodeLoad(queue_depth=3)))
    await a.set_multiplier("n-001", 2.5)

    async def followed() -> bool:
        listed = await _listed(b, OTHER)
        return bool(listed) and listed[0].multiplier == 2.5 and not await _listed(b, MODEL)

    await eventually(followed, timeout_s=5)
    [node] = await _listed(b, OTHER)
    assert node.load.queue_depth == 3 and node.last_seen == now + 1


async def test_replicas_forget_what_redis_lost(redis_client, redis_prefix, eventually) -> None:
    a = RedisNodeRegistry(redis_client, TTL_S, prefix=redis_prefix, refresh_s=0.05)
    b = RedisNodeRegistry(redis_client, TTL_S, prefix=redis_prefix, refresh_s=0.05)
    now = time.time()
    for i in (1, 2):
        await a.heartbeat(live(i, now))
    assert len(await _listed(b, MODEL)) == 2
    # Redis restarted without its data: nothing of the registry is left.
    await redis_client.delete(*[k async for k in redis_client.scan_iter(f"{redis_prefix}*")])
    await a.heartbeat(live(2, now + 1))  # only one node has beaten since

    async def only_the_new_beat() -> bool:
        return [n.node_id for n in await _listed(b, MODEL)] == ["n-002"]

    await eventually(only_the_new_beat, timeout_s=5)


# -- the database is off the heartbeat path ------------------------------------------


@pytest.fixture
async def coordinator(
    database_url: str, tmp_path: Path, ticket_key_pem: bytes
) -> AsyncIterator[Coordinator]:
    settings = CoordinatorSettings(
        port=0,
        data_dir=state.make_data_dir(tmp_path / "coordinator", ticket_key_pem),
        database_url=database_url,
        verify_node_endpoints=False,  # the node is an identity, no worker behind it
        shutdown_grace_s=0.2,
    )
    async with Coordinator(settings) as running:
        yield running


class DatabaseLock:
    """Holds a write lock on the node rows from another connection, as a long migration
    or a stuck transaction would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pg: asyncpg.Connection | None = None
        self._sqlite: sqlite3.Connection | None = None

    async def __aenter__(self) -> DatabaseLock:
        if self.url.startswith("sqlite"):
            self._sqlite = sqlite3.connect(self.url.split(":///", 1)[1], isolation_level=None)
            self._sqlite.execute("BEGIN EXCLUSIVE")
        else:
            self._pg = await asyncpg.connect(self.url.replace("+asyncpg", ""))
            await self._pg.execute("BEGIN")
            await self._pg.execute("LOCK TABLE nodes IN ACCESS EXCLUSIVE MODE")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.execute("ROLLBACK")
            await self._pg.close()


async def test_a_known_nodes_heartbeats_go_on_while_the_database_is_locked(
    coordinator: Coordinator, database_url: str
) -> None:
    node = state.new_node()
    client = CoordinatorClient(coordinator.address, node.identity)
    observer = CoordinatorClient(coordinator.address)
    try:
        await node.heartbeat(client)  # binds the node id: a database write
        async with DatabaseLock(database_url):
            for depth in (1, 2, 3):
                reply = await asyncio.wait_for(
                    client.heartbeat(node.heartbeat_request(queue_depth=depth)), timeout=5
                )
                assert reply.multiplier == 1.0
            listed = await asyncio.wait_for(observer.list_nodes(), timeout=5)
        assert [(n.node_id, n.load.queue_depth) for n in listed.nodes] == [(node.node_id, 3)]
    finally:
        await client.close()
        await observer.close()


async def test_a_heartbeat_that_changes_a_fact_is_written(coordinator: Coordinator) -> None:
    node = state.new_node()
    client = CoordinatorClient(coordinator.address, node.identity)
    try:
        await node.heartbeat(client)
        moved = node.heartbeat_request()
        moved.endpoint = "127.0.0.1:50100"
        await client.heartbeat(moved)
        async with coordinator.nodes._sessions() as session:  # what another replica reads
            endpoint = (
                await session.execute(
                    select(nodes.c.endpoint).where(nodes.c.node_id == node.node_id)
                )
            ).scalar_one()
        assert endpoint == "127.0.0.1:50100"
        listed = (await client.list_nodes()).nodes
        assert [n.endpoint for n in listed] == ["127.0.0.1:50100"]
    finally:
        await client.close()


async def test_a_standing_changed_elsewhere_reaches_heartbeats_within_the_refresh(
    database_url: str, eventually
) -> None:
    engine = create_engine(database_url)
    await migrate.upgrade(engine)
    sessions = session_factory(engine)
    # Two replicas' directories on one database; this one refreshes every ~0.2 s.
    here = NodeDirectory(sessions, standing_refresh_s=0.2)
    elsewhere = NodeDirectory(sessions)
    node = live(1, time.time(), node_public_key="cd" * 32)
    owner = "ef" * 32
    try:
        assert (await here.record_heartbeat(node, owner, datetime.now(UTC))).multiplier == 1.0
        await elsewhere.set_multiplier(node.node_id, 3.0)

        async def seen() -> bool:
            standing = await here.record_heartbeat(node, owner, datetime.now(UTC))
            return standing.multiplier == 3.0

        await eventually(seen, timeout_s=5)
        await here.set_multiplier(node.node_id, 5.0)  # its own change: on the next beat
        assert (await here.record_heartbeat(node, owner, datetime.now(UTC))).multiplier == 5.0
    finally:
        await here.close()
        await engine.dispose()
