"""A replay set in Redis: one `SET key 1 NX EXAT expiry` per id, atomic across replicas."""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis


class RedisReplaySet:
    def __init__(self, redis: Redis, prefix: str = "troop:", namespace: str = "replay") -> None:
        self._redis = redis
        self._prefix = f"{prefix}{namespace}:"

    async def add(self, key: str, expires_at: float) -> bool:
        ttl_ms = max(1, math.ceil((expires_at - time.time()) * 1000))
        return bool(await self._redis.set(f"{self._prefix}{key}", b"1", nx=True, px=ttl_ms))
