"""A replay set in Redis: one `SET key 1 NX PX ttl` per id, atomic across replicas.

Fails closed: when Redis cannot answer, `add` raises `Unavailable` rather
than guessing, so a captured ticket or assertion is never accepted twice just
because Redis was away (docs/adr/0012).
"""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from troop_common.errors import Unavailable


class RedisReplaySet:
    def __init__(self, redis: Redis, prefix: str = "troop:", namespace: str = "replay") -> None:
        self._redis = redis
        self._prefix = f"{prefix}{namespace}:"

    async def add(self, key: str, expires_at: float) -> bool:
        ttl_ms = max(1, math.ceil((expires_at - time.time()) * 1000))
        try:
            return bool(await self._redis.set(f"{self._prefix}{key}", b"1", nx=True, px=ttl_ms))
        except RedisError as exc:
            raise Unavailable(f"replay protection unavailable: {exc}") from exc
