"""GCRA limits, in-process and on a real Redis shared by two 'replicas'."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from troop_common.ratelimit import MemoryRateLimiter, RedisRateLimiter


@pytest.fixture(params=["memory", "redis"])
def limiter_factory(request: pytest.FixtureRequest):
    if request.param == "memory":
        shared = MemoryRateLimiter()
        return lambda: shared
    client: Redis = request.getfixturevalue("redis_client")
    prefix: str = request.getfixturevalue("redis_prefix")
    return lambda: RedisRateLimiter(client, prefix)


async def test_the_call_after_the_limit_is_refused_with_a_retry_after(limiter_factory) -> None:
    limiter = limiter_factory()
    decisions = [await limiter.acquire("ip:1.2.3.4", 100, 3600) for _ in range(101)]
    assert all(d.allowed for d in decisions[:100])
    refused = decisions[100]
    assert not refused.allowed
    # One slot frees every period/limit = 36 s.
    assert 30 < refused.retry_after_s <= 36.5
    # Other keys are not affected.
    assert (await limiter.acquire("ip:5.6.7.8", 100, 3600)).allowed


async def test_two_replicas_sharing_redis_enforce_one_limit(redis_client, redis_prefix) -> None:
    first = RedisRateLimiter(redis_client, redis_prefix)
    second = RedisRateLimiter(redis_client, redis_prefix)
    results = []
    for i in range(30):
        results.append(await (first if i % 2 else second).acquire("user:abc", 20, 3600))
    assert sum(d.allowed for d in results) == 20


async def test_a_flood_of_concurrent_calls_allows_exactly_the_limit(limiter_factory) -> None:
    limiters = [limiter_factory() for _ in range(2)]

    async def client(n: int) -> int:
        allowed = 0
        for i in range(40):
            decision = await limiters[(n + i) % 2].acquire("flood", 100, 3600)
            allowed += decision.allowed
        return allowed

    counts = await asyncio.gather(*(client(n) for n in range(50)))  # 2,000 calls
    assert sum(counts) == 100
