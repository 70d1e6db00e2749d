"""Node discovery: who is alive, what they serve, how busy they are.

`NodeRegistry` is the seam: the in-process `MemoryNodeRegistry` serves the
embedded default and a single coordinator; `RedisNodeRegistry`
(`troop_coordinator.redis_registry`, keys with a TTL) serves replicas.
Liveness and load live here; identity binding, owner and multiplier live in
the database (`troop_coordinator.nodes`), since money
depends on them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Protocol


@dataclass(frozen=True)
class NodeLoad:
    active_jobs: int = 0
    queue_depth: int = 0
    max_concurrent_jobs: int = 0

    @property
    def score(self) -> float:
        """Lower is less loaded: work in hand per slot (a node reporting no slots counts 1)."""
        return (self.active_jobs + self.queue_depth) / max(1, self.max_concurrent_jobs)


@dataclass(frozen=True)
class NodeHardware:
    device: str = ""
    cpu_count: int = 0
    memory_bytes: int = 0


@dataclass(frozen=True)
class LiveNode:
    node_id: str
    node_public_key: str
    endpoint: str
    models: tuple[str, ...]
    load: NodeLoad = field(default_factory=NodeLoad)
    hardware: NodeHardware = field(default_factory=NodeHardware)
    multiplier: float = 1.0
    last_seen: float = 0.0  # unix seconds
    reputation: float = 1.0  # 1.0 = no disputes (troop_coordinator.usage)


class NodeRegistry(Protocol):
    async def heartbeat(self, node: LiveNode) -> None:
        """Record that `node` is alive now (`node.last_seen`), replacing what was known."""
        ...

    async def live_nodes(self, now: float, model: str = "") -> list[LiveNode]:
        """Nodes seen within the TTL, serving `model` when given, by node id."""
        ...

    async def pick(self, model: str, now: float, exclude: Collection[str] = ()) -> LiveNode | None:
        """The best live node serving `model` (`choose`), none of `exclude`; or None."""
        ...

    async def set_multiplier(self, node_id: str, multiplier: float) -> None:
        """Show a newly proven multiplier without waiting for the next heartbeat."""
        ...


# How much a lost point of reputation weighs against load: a node with one dispute
# (reputation 0.8) ranks like an equal node with 0.8 more jobs per slot in hand.
REPUTATION_WEIGHT = 4.0


def rank(node: LiveNode) -> tuple[float, float]:
    """Lower is better: load per slot plus a penalty for lost reputation; among nodes
    equal on that, the faster proven one (a higher multiplier) first."""
    penalty = REPUTATION_WEIGHT * (1.0 - max(0.0, min(1.0, node.reputation)))
    return node.load.score + penalty, -node.multiplier


def choose(
    nodes: list[LiveNode], rng: random.Random, exclude: Collection[str] = ()
) -> LiveNode | None:
    """The best-ranked of `nodes` that are not in `exclude` (least loaded, most
    reputable, fastest proven), ties broken at random; None if there are none."""
    candidates = [n for n in nodes if n.node_id not in exclude]
    if not candidates:
        return None
    best = min(rank(n) for n in candidates)
    return rng.choice([n for n in candidates if rank(n) == best])


class MemoryNodeRegistry:
    """NodeRegistry in a dict; entries older than the TTL are invisible and pruned."""

    def __init__(self, ttl_s: float, rng: random.Random | None = None) -> None:
        self.ttl_s = ttl_s
        self._nodes: dict[str, LiveNode] = {}
        self._lock = asyncio.Lock()
        self._rng = rng or random.Random()

    async def heartbeat(self, node: LiveNode) -> None:
        async with self._lock:
            self._nodes[node.node_id] = node

    async def live_nodes(self, now: float, model: str = "") -> list[LiveNode]:
        async with self._lock:
            cutoff = now - self.ttl_s
            for node_id in [k for k, v in self._nodes.items() if v.last_seen < cutoff]:
                del self._nodes[node_id]
            nodes = [n for n in self._nodes.values() if not model or model in n.models]
        return sorted(nodes, key=lambda n: n.node_id)

    async def pick(self, model: str, now: float, exclude: Collection[str] = ()) -> LiveNode | None:
        return choose(await self.live_nodes(now, model), self._rng, exclude)

    async def set_multiplier(self, node_id: str, multiplier: float) -> None:
        async with self._lock:
            node = self._nodes.get(node_id)
            if node is not None:
                self._nodes[node_id] = replace(node, multiplier=multiplier)
