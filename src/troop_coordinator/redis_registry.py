"""NodeRegistry on Redis: every replica sees one view of who is alive.

Layout, under the configured prefix (docs/adr/0011):

    {prefix}node:{node_id}     hash {doc: LiveNode as JSON, multiplier}, PX = node TTL
    {prefix}nodes              sorted set node_id -> last_seen (unix s)
    {prefix}model:{model}      sorted set node_id -> last_seen, per served model

A heartbeat rewrites the node's hash with a fresh TTL and bumps its scores, in
one MULTI. Liveness is the hash existing (Redis expires it; nobody deletes a
silent node) and its last_seen within the TTL; the sorted sets are indexes,
trimmed of entries older than the TTL on read. Redis failing raises
`Unavailable("discovery unavailable")`: the coordinator answers UNAVAILABLE,
and no ledger write has happened yet on any path that asks the registry.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Collection
from dataclasses import asdict, replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from troop_common.errors import Unavailable
from troop_coordinator.registry import LiveNode, NodeHardware, NodeLoad, choose

# Set the multiplier only on a node that is still alive (never resurrect a key
# without its TTL).
_SET_MULTIPLIER_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'multiplier', ARGV[1])
  return 1
end
return 0
"""


def _encode(node: LiveNode) -> str:
    return json.dumps(asdict(node), separators=(",", ":"))


def _decode(doc: bytes | str, multiplier: bytes | str | None) -> LiveNode:
    data: dict[str, Any] = json.loads(doc)
    node = LiveNode(
        node_id=data["node_id"],
        node_public_key=data["node_public_key"],
        endpoint=data["endpoint"],
        models=tuple(data["models"]),
        load=NodeLoad(**data["load"]),
        hardware=NodeHardware(**data["hardware"]),
        multiplier=float(data["multiplier"]),
        last_seen=float(data["last_seen"]),
        reputation=float(data.get("reputation", 1.0)),
    )
    if multiplier is not None:
        node = replace(node, multiplier=float(multiplier))
    return node


class RedisNodeRegistry:
    """NodeRegistry shared by every coordinator using the same Redis and prefix."""

    def __init__(
        self,
        redis: Redis,
        ttl_s: float,
        *,
        prefix: str = "troop:",
        rng: random.Random | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self._redis = redis
        self._prefix = prefix
        self._rng = rng or random.Random()
        self._set_multiplier = redis.register_script(_SET_MULTIPLIER_LUA)

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}node:{node_id}"

    def _index_key(self, model: str = "") -> str:
        return f"{self._prefix}model:{model}" if model else f"{self._prefix}nodes"

    async def heartbeat(self, node: LiveNode) -> None:
        ttl_ms = max(1, math.ceil(self.ttl_s * 1000))
        key = self._node_key(node.node_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping={"doc": _encode(node), "multiplier": node.multiplier})
                pipe.pexpire(key, ttl_ms)
                pipe.zadd(self._index_key(), {node.node_id: node.last_seen})
                for model in node.models:
                    pipe.zadd(self._index_key(model), {node.node_id: node.last_seen})
                await pipe.execute()
        except RedisError as exc:
            raise Unavailable(f"discovery unavailable: {exc}") from exc

    async def live_nodes(self, now: float, model: str = "") -> list[LiveNode]:
        cutoff = now - self.ttl_s
        index = self._index_key(model)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(index, "-inf", f"({cutoff}")
                pipe.zrangebyscore(index, cutoff, "+inf")
                _, ids = await pipe.execute()
            if not ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for node_id in ids:
                    pipe.hmget(self._node_key(_text(node_id)), "doc", "multiplier")
                found = await pipe.execute()
        except RedisError as exc:
            raise Unavailable(f"discovery unavailable: {exc}") from exc
        nodes = []
        for doc, multiplier in found:
            if doc is None:  # expired between the index read and now
                continue
            node = _decode(doc, multiplier)
            # The index may be older than the node's last heartbeat (models changed).
            if node.last_seen >= cutoff and (not model or model in node.models):
                nodes.append(node)
        return sorted(nodes, key=lambda n: n.node_id)

    async def pick(self, model: str, now: float, exclude: Collection[str] = ()) -> LiveNode | None:
        return choose(await self.live_nodes(now, model), self._rng, exclude)

    async def set_multiplier(self, node_id: str, multiplier: float) -> None:
        try:
            await self._set_multiplier(keys=[self._node_key(node_id)], args=[multiplier])
        except RedisError as exc:
            raise Unavailable(f"discovery unavailable: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
