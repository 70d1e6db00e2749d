"""Where the coordinator's non-ledger state lives, chosen once from settings.

One interface per concern, with an in-process implementation when no Redis
URL is set (the embedded default) and a Redis one when it is (replicas):

| concern | interface | in-process | Redis (when it is down) |
|---|---|---|---|
| liveness, load | `NodeRegistry` | `MemoryNodeRegistry` | `RedisNodeRegistry` (UNAVAILABLE) |
| assertion replay | `ReplaySet` | `MemoryReplaySet` | `RedisReplaySet` (fails closed) |
| rate-limit counters | `RateLimiter` | `MemoryRateLimiter` | `RedisRateLimiter` (fails open) |
| challenges | `ChallengeStore` | `MemoryChallengeStore` | `RedisChallengeStore` (UNAVAILABLE) |

The ledger is never here: it is in the database, so losing Redis loses no money.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from troop_common.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from troop_common.redis_replay import RedisReplaySet
from troop_common.replay import MemoryReplaySet, ReplaySet
from troop_common.stores import FailOpenRateLimiter, connect_redis
from troop_coordinator.challenge_store import ChallengeStore, MemoryChallengeStore
from troop_coordinator.redis_challenges import RedisChallengeStore
from troop_coordinator.redis_registry import RedisNodeRegistry
from troop_coordinator.registry import MemoryNodeRegistry, NodeRegistry
from troop_coordinator.settings import CoordinatorSettings


@dataclass
class Stores:
    registry: NodeRegistry
    replays: ReplaySet
    limiter: RateLimiter
    challenges: ChallengeStore
    redis: Redis | None = None  # the shared client, when Redis is configured

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def build_stores(settings: CoordinatorSettings) -> Stores:
    """Redis-backed stores when `settings.redis_url` is set, in-process ones otherwise.

    Connecting is lazy: a Redis that is down at start does not stop the
    coordinator (the ledger works; the health monitor reports it)."""
    if not settings.redis_url:
        return Stores(
            registry=MemoryNodeRegistry(settings.node_ttl_s),
            replays=MemoryReplaySet(),
            limiter=MemoryRateLimiter(),
            challenges=MemoryChallengeStore(),
        )
    redis = connect_redis(settings.redis_url)
    prefix = settings.redis_prefix
    return Stores(
        registry=RedisNodeRegistry(redis, settings.node_ttl_s, prefix=prefix),
        replays=RedisReplaySet(redis, prefix),
        limiter=FailOpenRateLimiter(RedisRateLimiter(redis, prefix)),
        challenges=RedisChallengeStore(redis, prefix),
        redis=redis,
    )
