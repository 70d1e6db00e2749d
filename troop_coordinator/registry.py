"""Node discovery: who is alive, what they serve, how busy they are.

`NodeRegistry` is the seam: the in-process `MemoryNodeRegistry` serves the
embedded default and a single coordinator; `RedisNodeRegistry`
(`troop_coordinator.redis_registry`, keys with a TTL) serves replicas.
Liveness and load live here; identity binding, owner and multiplier live in
the database (`troop_coordinator.nodes`), since money
depends on them.

Both read discovery from a `NodeIndex` in memory: the live nodes kept in rank
order per model, updated as heartbeats arrive, so a page of ListNodes or
Authorize's choice never looks at every node (docs/adr/0035).
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_left, bisect_right, insort
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Protocol

from troop_coordinator.node_checks import NodeChecks


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
    tls: bool = False  # the node serves TLS at `endpoint` (declared, then proven)
    # What verifiers found (docs/adr/0053): a barred node is never listed, and a model
    # it failed is not routed to it (unless pinned) until its deadline.
    checks: NodeChecks = field(default_factory=NodeChecks)

    def listed_under(self) -> tuple[str, ...]:
        """The lists it is in: "" (every node) and each model it serves and did not fail a
        check for, as of its last beat; none when barred."""
        if self.checks.barred:
            return ()
        failed = self.checks.failed(self.last_seen)
        return ("", *dict.fromkeys(m for m in self.models if m not in failed))


class NodeRegistry(Protocol):
    async def heartbeat(self, node: LiveNode) -> None:
        """Record that `node` is alive now (`node.last_seen`), replacing what was known."""
        ...

    async def live_nodes(self, now: float, model: str = "") -> list[LiveNode]:
        """Nodes seen within the TTL, serving `model` when given, by node id."""
        ...

    async def ranked(
        self, now: float, model: str, offset: int, size: int
    ) -> tuple[list[LiveNode], int]:
        """`size` of the live nodes serving `model` (all when empty) from `offset`, in
        rank order (`rank`, then node id); and how many there are in all."""
        ...

    async def pick(self, model: str, now: float, exclude: Collection[str] = ()) -> LiveNode | None:
        """The best live node serving `model` (`choose`), none of `exclude`; or None."""
        ...

    async def set_multiplier(self, node_id: str, multiplier: float) -> None:
        """Show a newly proven multiplier without waiting for the next heartbeat."""
        ...

    async def set_checks(self, node_id: str, checks: NodeChecks) -> None:
        """Show a node's new verification record (a verdict landed) at once."""
        ...

    async def node(self, node_id: str, now: float) -> LiveNode | None:
        """The live node `node_id`, listed or not (a pinned Authorize); or None."""
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


# A node's place in the index: its rank, then its id (unique, so the order is total).
_Place = tuple[float, float, str]
# Below this many equally ranked nodes a choice lists them; above, it draws positions.
_LIST_TIES_BELOW = 64


def _place(node: LiveNode) -> _Place:
    first, second = rank(node)
    return first, second, node.node_id


def _rank_of(place: _Place) -> tuple[float, float]:
    return place[0], place[1]


class NodeIndex:
    """Live nodes in rank order, per model and in all, kept sorted as heartbeats arrive.

    A heartbeat costs a binary search and a list insertion per model the node serves
    (O(log n) comparisons, and a memmove); a page is a slice; the best node is the head
    of its model's list, ties drawn at random by position. Silent nodes leave through
    a heap of last_seen times (`prune`). No awaits inside: one event loop, no lock.
    """

    def __init__(self) -> None:
        self._nodes: dict[str, LiveNode] = {}
        self._places: dict[str, _Place] = {}
        self._lists: dict[str, tuple[str, ...]] = {}  # the lists each node is in
        self._ranked: dict[str, list[_Place]] = {"": []}
        self._expiry: list[tuple[float, str]] = []  # (last_seen, node_id), a min-heap

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, node_id: str) -> LiveNode | None:
        return self._nodes.get(node_id)

    def put(self, node: LiveNode) -> None:
        """Add `node`, or replace what was known of it."""
        old = self._nodes.get(node.node_id)
        self._nodes[node.node_id] = node
        if old is None or old.last_seen != node.last_seen:
            heapq.heappush(self._expiry, (node.last_seen, node.node_id))
            if len(self._expiry) > 2 * len(self._nodes) + 1024:
                self._expiry = [(n.last_seen, n.node_id) for n in self._nodes.values()]
                heapq.heapify(self._expiry)
        place, lists = _place(node), node.listed_under()
        if old is not None:
            if place == self._places[node.node_id] and self._lists[node.node_id] == lists:
                return
            self._unlist(self._places[node.node_id], self._lists[node.node_id])
        self._places[node.node_id] = place
        self._lists[node.node_id] = lists
        for model in lists:
            insort(self._ranked.setdefault(model, []), place)

    def remove(self, node_id: str) -> None:
        node = self._nodes.pop(node_id, None)
        if node is not None:
            self._unlist(self._places.pop(node_id), self._lists.pop(node_id))

    def _unlist(self, place: _Place, lists: tuple[str, ...]) -> None:
        for model in lists:
            places = self._ranked[model]
            del places[bisect_left(places, place)]
            if model and not places:
                del self._ranked[model]

    def clear(self) -> None:
        self._nodes.clear()
        self._places.clear()
        self._lists.clear()
        self._ranked = {"": []}
        self._expiry = []

    def prune(self, cutoff: float) -> list[str]:
        """Drop the nodes last seen before `cutoff`; their ids."""
        heap, gone = self._expiry, []
        while heap and heap[0][0] < cutoff:
            _, node_id = heapq.heappop(heap)
            node = self._nodes.get(node_id)
            if node is not None and node.last_seen < cutoff:
                self.remove(node_id)
                gone.append(node_id)
        return gone

    def by_id(self, model: str = "") -> list[LiveNode]:
        """The nodes serving `model` (all when empty), by node id."""
        nodes = [self._nodes[p[2]] for p in self._ranked.get(model, ())]
        return sorted(nodes, key=lambda n: n.node_id)

    def ranked(self, model: str, offset: int, size: int) -> tuple[list[LiveNode], int]:
        places = self._ranked.get(model, [])
        return [self._nodes[p[2]] for p in places[offset : offset + size]], len(places)

    def best(
        self, model: str, rng: random.Random, exclude: Collection[str] = ()
    ) -> LiveNode | None:
        """What `choose` picks among the nodes serving `model`, without looking at all."""
        places = self._ranked.get(model)
        if not places:
            return None
        start = 0
        while start < len(places) and places[start][2] in exclude:
            start += 1
        if start == len(places):
            return None
        end = bisect_right(places, _rank_of(places[start]), lo=start, key=_rank_of)
        if end - start < _LIST_TIES_BELOW + len(exclude):
            tied = [p for p in places[start:end] if p[2] not in exclude]
            return self._nodes[rng.choice(tied)[2]]
        while True:  # most of the tied are not excluded: a few draws at most
            place = places[rng.randrange(start, end)]
            if place[2] not in exclude:
                return self._nodes[place[2]]


class MemoryNodeRegistry:
    """NodeRegistry in a NodeIndex; entries older than the TTL are invisible and pruned."""

    def __init__(self, ttl_s: float, rng: random.Random | None = None) -> None:
        self.ttl_s = ttl_s
        self._index = NodeIndex()
        self._rng = rng or random.Random()

    async def heartbeat(self, node: LiveNode) -> None:
        known = self._index.get(node.node_id)
        if known is not None and known.checks.version > node.checks.version:
            node = replace(node, checks=known.checks)  # a later verdict's record stays
        self._index.put(node)

    async def live_nodes(self, now: float, model: str = "") -> list[LiveNode]:
        self._index.prune(now - self.ttl_s)
        return self._index.by_id(model)

    async def ranked(
        self, now: float, model: str, offset: int, size: int
    ) -> tuple[list[LiveNode], int]:
        self._index.prune(now - self.ttl_s)
        return self._index.ranked(model, offset, size)

    async def pick(self, model: str, now: float, exclude: Collection[str] = ()) -> LiveNode | None:
        self._index.prune(now - self.ttl_s)
        return self._index.best(model, self._rng, exclude)

    async def set_multiplier(self, node_id: str, multiplier: float) -> None:
        node = self._index.get(node_id)
        if node is not None:
            self._index.put(replace(node, multiplier=multiplier))

    async def set_checks(self, node_id: str, checks: NodeChecks) -> None:
        node = self._index.get(node_id)
        if node is not None:
            self._index.put(replace(node, checks=checks))

    async def node(self, node_id: str, now: float) -> LiveNode | None:
        self._index.prune(now - self.ttl_s)
        return self._index.get(node_id)
