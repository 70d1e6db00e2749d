"""NodeRegistry behaviour, the same on the in-process registry and on Redis."""

from __future__ import annotations

import random
import socket
import time
from dataclasses import replace

import pytest

from troop_common.errors import Unavailable
from troop_common.stores import connect_redis
from troop_coordinator.redis_registry import RedisNodeRegistry
from troop_coordinator.registry import LiveNode, MemoryNodeRegistry, NodeHardware, NodeLoad

MODEL = "smollm2-135m-instruct"
TTL_S = 15.0


def live(node_id: str, now: float, models: tuple[str, ...] = (MODEL,), **load: int) -> LiveNode:
    return LiveNode(
        node_id=node_id,
        node_public_key="ab" * 32,
        endpoint=f"10.0.0.1:{5000 + len(node_id)}",
        models=models,
        load=NodeLoad(**load),
        hardware=NodeHardware(device="cpu", cpu_count=2, memory_bytes=1 << 30),
        last_seen=now,
    )


@pytest.fixture(params=["memory", "redis"])
def make_registry(request: pytest.FixtureRequest):
    """A factory of registries; on Redis every one shares the test's Redis and prefix,
    like replicas do."""
    if request.param == "memory":
        shared = MemoryNodeRegistry(TTL_S, random.Random(1))
        return lambda ttl_s=TTL_S: shared if ttl_s == TTL_S else MemoryNodeRegistry(ttl_s)
    client = request.getfixturevalue("redis_client")
    prefix = request.getfixturevalue("redis_prefix")
    return lambda ttl_s=TTL_S: RedisNodeRegistry(client, ttl_s, prefix=prefix)


async def test_heartbeat_makes_a_node_live_with_what_it_reported(make_registry) -> None:
    registry = make_registry()
    now = time.time()
    node = live("node-a", now, models=(MODEL, "llama"), active_jobs=1, max_concurrent_jobs=4)
    await registry.heartbeat(node)

    assert await registry.live_nodes(now) == [node]
    assert await registry.live_nodes(now, "llama") == [node]
    assert await registry.live_nodes(now, "other") == []


async def test_a_silent_node_disappears_after_the_ttl(make_registry) -> None:
    registry = make_registry()
    now = time.time()
    await registry.heartbeat(live("quiet", now - 20))
    await registry.heartbeat(live("chatty", now))

    assert [n.node_id for n in await registry.live_nodes(now)] == ["chatty"]
    assert (await registry.pick(MODEL, now)).node_id == "chatty"


async def test_pick_prefers_the_least_loaded(make_registry) -> None:
    registry = make_registry()
    now = time.time()
    await registry.heartbeat(live("busy", now, active_jobs=3, max_concurrent_jobs=4))
    await registry.heartbeat(live("idle", now, active_jobs=0, max_concurrent_jobs=4))
    await registry.heartbeat(live("other-model", now, models=("llama",)))

    for _ in range(5):
        assert (await registry.pick(MODEL, now)).node_id == "idle"
    assert await registry.pick("nobody-serves-this", now) is None


async def test_a_later_heartbeat_replaces_models_and_load(make_registry) -> None:
    registry = make_registry()
    now = time.time()
    await registry.heartbeat(live("n", now, models=(MODEL,)))
    await registry.heartbeat(live("n", now + 1, models=("llama",), queue_depth=2))

    assert await registry.live_nodes(now + 1, MODEL) == []
    [node] = await registry.live_nodes(now + 1, "llama")
    assert node.load.queue_depth == 2 and node.last_seen == now + 1


async def test_set_multiplier_shows_at_once_and_never_resurrects(make_registry) -> None:
    registry = make_registry()
    now = time.time()
    await registry.heartbeat(live("n", now))
    await registry.set_multiplier("n", 2.5)
    await registry.set_multiplier("never-seen", 3.0)

    assert [(n.node_id, n.multiplier) for n in await registry.live_nodes(now)] == [("n", 2.5)]
    await registry.heartbeat(replace(live("n", now + 1), multiplier=2.5))
    assert (await registry.live_nodes(now + 1))[0].multiplier == 2.5


async def test_replicas_share_one_view(make_registry) -> None:
    replica_a, replica_b = make_registry(), make_registry()
    now = time.time()
    await replica_a.heartbeat(live("seen-by-a", now))

    picked = await replica_b.pick(MODEL, now)
    assert picked is not None and picked.node_id == "seen-by-a"


async def test_replicas_see_whether_a_node_serves_tls(make_registry) -> None:
    # The mode a node proved its endpoint in reaches every replica's mirror, so whichever
    # answers Authorize states it (AuthorizeResponse.tls).
    replica_a, replica_b = make_registry(), make_registry()
    now = time.time()
    await replica_a.heartbeat(replace(live("tls-node", now), tls=True))
    await replica_a.heartbeat(live("plain-node", now))

    seen = {n.node_id: n.tls for n in await replica_b.live_nodes(now)}
    assert seen == {"tls-node": True, "plain-node": False}


async def test_redis_expires_the_node_key_itself(redis_client, redis_prefix, eventually) -> None:
    registry = RedisNodeRegistry(redis_client, 0.3, prefix=redis_prefix)
    await registry.heartbeat(live("short", time.time()))
    assert await redis_client.exists(f"{redis_prefix}node:short")
    # Nobody deletes it: Redis's own TTL does.
    await eventually(_gone(redis_client, f"{redis_prefix}node:short"), timeout_s=5)
    assert await registry.live_nodes(time.time() - 0.2) == []


def _gone(client, key: str):
    async def check() -> bool:
        return not await client.exists(key)

    return check


async def test_redis_down_is_unavailable_not_an_internal_error() -> None:
    client = connect_redis(f"redis://127.0.0.1:{unused_port()}/0", timeout_s=0.5)
    registry = RedisNodeRegistry(client, TTL_S)
    try:
        for call in (
            registry.heartbeat(live("n", time.time())),
            registry.live_nodes(time.time()),
            registry.pick(MODEL, time.time()),
            registry.set_multiplier("n", 2.0),
        ):
            with pytest.raises(Unavailable, match="discovery unavailable"):
                await call
    finally:
        await client.aclose()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_verdicts_record_takes_the_node_off_that_model_at_once(make_registry) -> None:
    """docs/adr/0053: a failed model is not routed to the node (the node is still listed
    among all nodes, with its record); a barred node is in no list; a heartbeat carrying
    an older record (a replica that has not re-read the row) does not undo a verdict."""
    from troop_coordinator.node_checks import NodeChecks

    registry, other = make_registry(), make_registry()
    now = time.time()
    node = live("failed", now, models=(MODEL, "llama"))
    await registry.heartbeat(node)
    await registry.heartbeat(live("healthy", now, models=(MODEL,)))
    failed = NodeChecks(
        checks_failed=1, last_checked=now, held_until=now + 60, failed_models=((MODEL, now + 60),)
    )
    await registry.set_checks("failed", failed)

    for seen in (registry, other):
        assert [n.node_id for n in await seen.live_nodes(now, MODEL)] == ["healthy"]
        assert [n.node_id for n in await seen.live_nodes(now, "llama")] == ["failed"]
        everyone = {n.node_id: n for n in await seen.live_nodes(now)}
        assert everyone["failed"].checks == failed
        assert (await seen.pick(MODEL, now)).node_id == "healthy"
        assert (await seen.node("failed", now)).checks == failed  # pinned: still there

    await other.heartbeat(replace(node, last_seen=now + 1))  # with the record of before
    for seen in (registry, other):
        assert [n.node_id for n in await seen.live_nodes(now + 1, MODEL)] == ["healthy"]
        assert (await seen.node("failed", now + 1)).checks == failed

    # Its hold over, its next beat puts it back on the model.
    await registry.heartbeat(replace(node, last_seen=now + 61, checks=failed))
    assert "failed" in [n.node_id for n in await registry.live_nodes(now + 61, MODEL)]

    await registry.set_checks("failed", replace(failed, checks_failed=2, barred=True))
    for seen in (registry, other):
        assert "failed" not in [n.node_id for n in await seen.live_nodes(now + 61)]
        assert await seen.pick("llama", now + 61) is None
