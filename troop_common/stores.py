"""Shared pieces for services that keep state in Redis when it is configured.

- `connect_redis(url)`: a client that fails fast (short socket timeouts) so a
  missing Redis turns into a quick UNAVAILABLE, not a hung call.
- `FailOpenRateLimiter`: rate limits degrade open when Redis is away (a warning
  is logged, at most once per interval); replay sets fail closed
  (`troop_common.redis_replay`). Why: docs/adr/0012.
- `RedisHealthMonitor`: pings Redis in the background and reports changes, so
  a server can mark a health sub-service NOT_SERVING and log it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from troop_common.ratelimit import Decision, RateLimiter

log = logging.getLogger("troop.stores")

REDIS_TIMEOUT_S = 1.0
# Connections one process holds at most; a command beyond waits for a free one (up to
# the timeout) instead of failing: redis-py's default pool raises "Too many
# connections" at its 101st concurrent command, which surfaced as UNAVAILABLE under load.
REDIS_MAX_CONNECTIONS = 64


def connect_redis(url: str, *, timeout_s: float = REDIS_TIMEOUT_S) -> Redis:
    """A Redis client for `url` that gives up within about `timeout_s`; at most
    `REDIS_MAX_CONNECTIONS` connections, a command beyond them waits for one."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes them


class FailOpenRateLimiter:
    """Wraps a RateLimiter whose backend may fail: allow the request and warn."""

    def __init__(self, inner: RateLimiter, *, warn_every_s: float = 30.0) -> None:
        self._inner = inner
        self._warn_every_s = warn_every_s
        self._last_warning = float("-inf")

    async def acquire(self, key: str, limit: int, period_s: float) -> Decision:
        try:
            return await self._inner.acquire(key, limit, period_s)
        except RedisError as exc:
            now = time.monotonic()
            if now - self._last_warning >= self._warn_every_s:
                self._last_warning = now
                log.warning("rate limits are not enforced: Redis unavailable (%s)", exc)
            return Decision(True, remaining=0)


class RedisHealthMonitor:
    """Pings Redis every `interval_s`; calls `on_change(healthy)` on start and on each change."""

    def __init__(
        self,
        redis: Redis,
        on_change: Callable[[bool], Awaitable[None]],
        *,
        interval_s: float = 2.0,
    ) -> None:
        self._redis = redis
        self._on_change = on_change
        self.interval_s = interval_s
        self.healthy: bool | None = None
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> bool:
        """Ping once, report a change; True if Redis answered."""
        try:
            healthy = bool(await self._redis.ping())
            error = ""
        except (RedisError, OSError) as exc:
            healthy, error = False, str(exc)
        if healthy != self.healthy:
            if healthy:
                log.info("Redis is reachable: shared liveness, replay sets and limits are on")
            else:
                log.warning(
                    "Redis unavailable (%s): discovery and replay protection refuse calls, "
                    "rate limits are not enforced; the ledger is unaffected",
                    error,
                )
            self.healthy = healthy
            await self._on_change(healthy)
        return healthy

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._run(), name="redis-health")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # a failing callback must not end the monitor
                log.exception("Redis health check failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
