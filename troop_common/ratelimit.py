"""Rate limits: GCRA (the generic cell rate algorithm), in-process or exact across replicas.

`limit` requests per `period_s`, allowing a burst of the whole limit. Each key
keeps one number, its theoretical arrival time (TAT). A request is allowed when
`max(TAT, now) + interval - now <= period`; the refusal's retry-after is how far
past that bound it would land. The Redis implementation runs the same rule as
one Lua script, on Redis's own clock, so every replica shares one exact limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0
    remaining: int = 0


class RateLimiter(Protocol):
    async def acquire(self, key: str, limit: int, period_s: float) -> Decision: ...


def _gcra(tat_us: int, now_us: int, limit: int, period_us: int) -> tuple[Decision, int]:
    interval = period_us / limit
    new_tat = max(tat_us, now_us) + interval
    over = new_tat - now_us - period_us
    if over > 0:
        return Decision(False, retry_after_s=over / 1e6), tat_us
    remaining = int((period_us - (new_tat - now_us)) // interval)
    return Decision(True, remaining=remaining), int(new_tat)


class MemoryRateLimiter:
    """One process's limits (the embedded default)."""

    def __init__(self) -> None:
        self._tat: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def acquire(self, key: str, limit: int, period_s: float) -> Decision:
        async with self._lock:
            now = int(time.time() * 1e6)
            decision, tat = _gcra(self._tat.get(key, 0), now, limit, int(period_s * 1e6))
            self._tat[key] = tat
            return decision


_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local interval = period / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local over = new_tat - now - period
if over > 0 then
  return {0, tostring(over), 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(period / 1000) + 1000)
return {1, '0', math.floor((period - (new_tat - now)) / interval)}
"""


class RedisRateLimiter:
    """Limits shared by every replica using the same Redis and prefix."""

    def __init__(self, redis: Redis, prefix: str = "troop:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_GCRA_LUA)

    async def acquire(self, key: str, limit: int, period_s: float) -> Decision:
        allowed, over, remaining = await self._script(
            keys=[f"{self._prefix}rl:{key}"], args=[limit, int(period_s * 1e6)]
        )
        if int(allowed):
            return Decision(True, remaining=int(remaining))
        return Decision(False, retry_after_s=float(over) / 1e6)


class TrustedProxies:
    """Which peers may name the client in `x-forwarded-for`, and which address that is.

    Built from addresses or CIDR blocks (the local Envoy: loopback). From any other peer
    the header is ignored; from a trusted one the right-most entry is taken: the one the
    proxy itself added (Envoy with `use_remote_address` writes the address it trusts),
    never the left-most, which the client wrote.
    """

    def __init__(self, proxies: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(p.strip(), strict=False) for p in proxies)

    def trusts(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def client_ip(self, peer: str, forwarded: str | None) -> str:
        """The client's address: `peer`, or from a trusted peer the last XFF entry."""
        if forwarded and self.trusts(peer):
            last = forwarded.split(",")[-1].strip()
            try:
                return str(ipaddress.ip_address(last))
            except ValueError:
                return peer  # not an address: the proxy did not write it
        return peer
