"""The challenge store, in-process and on the real Redis: each step once, atomically,
and on Redis shared by every replica (two ChallengeBooks on two connections)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from troop_common.errors import FailedPrecondition, NotFound, PermissionDenied, RateLimited
from troop_coordinator.challenge_store import MemoryChallengeStore
from troop_coordinator.proof import ChallengeBook, ProofShape
from troop_coordinator.redis_challenges import RedisChallengeStore
from troop_worker.hardware_proof import openings
from troop_worker.proof_compute import compute

SHAPE = ProofShape(rows=16, cols=8, calibration_inner=64, min_inner=32, max_inner=512)


def book(store, interval_s: float = 0.0) -> ChallengeBook:
    return ChallengeBook(store, shape=SHAPE, reference_ms=1500, ttl_s=60, interval_s=interval_s)


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest):
    """Two stores that share state: the same one in-process, two connections on Redis."""
    if request.param == "memory":
        store = MemoryChallengeStore()
        yield store, store
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    first, second = Redis.from_url(url), Redis.from_url(url)
    yield RedisChallengeStore(first, prefix), RedisChallengeStore(second, prefix)
    keys = [k async for k in first.scan_iter(match=f"{prefix}*")]
    if keys:
        await first.delete(*keys)
    await first.aclose()
    await second.aclose()


async def test_a_challenge_started_on_one_replica_is_committed_and_verified_on_another(
    stores,
) -> None:
    one, other = book(stores[0]), book(stores[1])
    offered = await one.offer("node-a")
    assert (offered.rows, offered.inner, offered.cols) == (16, 64, 8)
    seed = await one.start("node-a", offered.challenge_id)
    product = compute(seed, offered.rows, offered.inner, offered.cols, device="cpu")
    named = await other.commit("node-a", offered.challenge_id, product.tree.root, "fp32", 5)
    assert len(named.open_rows) == 16 and len(set(named.open_rows)) == 16
    result = await other.verify("node-a", offered.challenge_id, openings(product, named.open_rows))
    assert result.reported_ms == 5 and result.tier == "cpu"
    # The speed was recorded: the next challenge is sized from it, on either replica.
    assert await one.store.last_speed("node-a") == pytest.approx(result.tflops)
    with pytest.raises(FailedPrecondition):
        await one.verify("node-a", offered.challenge_id, openings(product, named.open_rows))


async def test_each_step_happens_once_even_when_asked_at_once(stores) -> None:
    one, other = book(stores[0]), book(stores[1])
    offered = await one.offer("node-b")
    starts = await asyncio.gather(
        *(b.start("node-b", offered.challenge_id) for b in (one, other) * 5),
        return_exceptions=True,
    )
    assert sum(isinstance(s, int) for s in starts) == 1
    assert all(isinstance(s, FailedPrecondition) for s in starts if not isinstance(s, int))
    commits = await asyncio.gather(
        *(b.commit("node-b", offered.challenge_id, b"r" * 32, "fp32", 1) for b in (one, other) * 5),
        return_exceptions=True,
    )
    assert sum(not isinstance(c, Exception) for c in commits) == 1


async def test_wrong_node_unknown_id_and_superseded_challenges(stores) -> None:
    one = book(stores[0])
    first = await one.offer("node-c")
    with pytest.raises(PermissionDenied):
        await one.start("node-d", first.challenge_id)
    with pytest.raises(NotFound):
        await one.start("node-c", "no-such-challenge")
    with pytest.raises(FailedPrecondition):
        await one.commit("node-c", first.challenge_id, b"r" * 32, "fp32", 1)  # not started
    await one.offer("node-c")  # a node has one open challenge: the new one supersedes
    with pytest.raises(NotFound):
        await one.start("node-c", first.challenge_id)


async def test_a_node_is_offered_one_challenge_per_interval(stores) -> None:
    one, other = book(stores[0], interval_s=3600), book(stores[1], interval_s=3600)
    answers = await asyncio.gather(
        *(b.offer("node-e") for b in (one, other) * 10), return_exceptions=True
    )
    refused = [a for a in answers if isinstance(a, RateLimited)]
    assert len(refused) == 19
    assert all(0 < r.retry_after_seconds <= 3600 for r in refused)
    await one.offer("node-f")  # another node is not held back
