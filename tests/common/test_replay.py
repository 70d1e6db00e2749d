"""Replay sets: an id is accepted once until it expires, in-process and in Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from troop_common.redis_replay import RedisReplaySet
from troop_common.replay import MemoryReplaySet


@pytest.fixture(params=["memory", "redis"])
def replay_set(request: pytest.FixtureRequest):
    if request.param == "memory":
        return MemoryReplaySet()
    return RedisReplaySet(
        request.getfixturevalue("redis_client"), request.getfixturevalue("redis_prefix")
    )


async def test_an_id_is_accepted_once(replay_set) -> None:
    expires = time.time() + 60
    assert await replay_set.add("job-1", expires)
    assert not await replay_set.add("job-1", expires)
    assert await replay_set.add("job-2", expires)


async def test_concurrent_adds_of_one_id_accept_exactly_one(replay_set) -> None:
    expires = time.time() + 60
    results = await asyncio.gather(*(replay_set.add("same", expires) for _ in range(50)))
    assert sum(results) == 1


async def test_an_expired_id_is_forgotten(replay_set, eventually) -> None:
    assert await replay_set.add("short", time.time() + 0.2)
    await eventually(lambda: replay_set.add("short", time.time() + 60), timeout_s=5)
