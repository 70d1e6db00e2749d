"""The durable half of node identity: node id ↔ node key binding, owner, multiplier.

The first heartbeat of a node id binds it to the asserting key for good; every
later heartbeat must come from that key. Binding is one INSERT .. ON CONFLICT
DO NOTHING plus one UPDATE guarded by the key, so two replicas (or two
impostors racing) cannot both bind a node id. A new binding must pass node
admission (open, an allowlist of node keys, or a one-time invite) and the
bound on node ids per node key, so one key cannot invent hundreds of nodes.
The endpoint the coordinator proved answers with the node's key
(`troop_coordinator.reachability`) is kept here too: replicas share it.

Heartbeats do not touch the database once a node is known (docs/adr/0035): a
coordinator remembers each node's binding, facts (owner, endpoint, models, hardware)
and standing, and answers a beat that changes no fact from memory. The row is written
at binding and when a fact changes (so its `last_seen` and `load` are those of that
beat; liveness and load live in the registry). The standing of each remembered node is
re-read about every `standing_refresh_s` (jittered), in batches, off the beat's path.
This coordinator's own changes to a node's standing (a proof, an endpoint proven,
`forget` after a receipt settles) show on the node's next beat, which reads the standing
(a read by primary key, not a write) before answering; changes made elsewhere
(another replica, a settlement on the countersignature or by the sweep) within about
`standing_refresh_s`. Money never reads this memory: the ledger reads the row.

The SQL is `troop_coordinator.repositories.nodes`, run through the coordinator's one
transaction helper (`troop_coordinator.db.transactions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from troop_common.admission import hash_invite
from troop_common.errors import NotFound, PermissionDenied
from troop_coordinator.db.transactions import Database
from troop_coordinator.registry import LiveNode
from troop_coordinator.repositories.invites import InviteRepository
from troop_coordinator.repositories.nodes import NodeFacts, NodeRepository, NodeStanding

__all__ = ["NODE_ADMISSION_MODES", "NodeAdmission", "NodeDirectory", "NodeStanding"]

NODE_ADMISSION_MODES = ("open", "allowlist", "invite")
# How often a remembered node's standing is read again (each node's period is drawn
# from 0.5-1.5 times this, so rows are not all read at once after a restart).
STANDING_REFRESH_S = 60.0
# Standings due are read together: at most this long after the first falls due, this
# many ids a query.
REFRESH_BATCH_S = 0.5
REFRESH_BATCH_SIZE = 500
# Nodes remembered at most: the least recently refreshed are forgotten first.
MAX_REMEMBERED_NODES = 200_000

log = logging.getLogger("troop.coordinator.nodes")


class _BoundMeanwhile(Exception):
    """Another transaction bound the node id first."""


@dataclass(frozen=True)
class NodeAdmission:
    """Who may bind a new node id: anyone, the keys listed, or holders of an invite."""

    mode: str = "open"
    allowlist: frozenset[str] = frozenset()
    max_nodes_per_key: int = 4


@dataclass(frozen=True)
class _Remembered:
    """What a heartbeat needs of a node's row, and until when it may go without it."""

    node_public_key: str
    facts: tuple[Any, ...]  # owner, endpoint, models, hardware: what the row holds
    standing: NodeStanding
    until: float  # clock() after which its standing is read again (off the beat's path)
    changed: bool = False  # the standing changed here: the next beat reads it first


class NodeDirectory:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        admission: NodeAdmission | None = None,
        *,
        standing_refresh_s: float = STANDING_REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = Database(sessions)
        self.admission = admission or NodeAdmission()
        self.standing_refresh_s = standing_refresh_s
        self._clock = clock
        self._known: dict[str, _Remembered] = {}  # least recently refreshed first
        # How often each node was forgotten: a read that raced a change keeps nothing.
        self._forgotten: dict[str, int] = {}
        self._due: set[str] = set()  # remembered nodes whose standing is to be read
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def record_heartbeat(
        self, node: LiveNode, owner: str, now: datetime, invite_code: str = ""
    ) -> NodeStanding:
        """Bind on first sight (admission permitting), refresh after; the node's standing.
        PermissionDenied if the node id is bound to another key, or a new binding is not
        admitted. A beat that changes no fact is answered from memory (module docstring)."""
        facts = (owner, node.endpoint, node.models, node.hardware)
        known = self._known.get(node.node_id)
        if known is not None:
            if known.node_public_key != node.node_public_key:  # a binding is for good
                raise PermissionDenied(f"node id {node.node_id} is bound to another node key")
            if known.facts == facts and not known.changed:
                if self._clock() >= known.until:
                    self._refresh_soon(node.node_id)
                return known.standing
        forgotten = self._forgotten.get(node.node_id, 0)
        standing = None
        if known is not None and known.facts == facts:  # a read, not a write
            read = (await self._read_standings([node.node_id])).get(node.node_id)
            if read is not None and read[0] == node.node_public_key:
                standing = read[1]
        if standing is None:
            standing = await self._write(node, owner, now, invite_code)
        if self._forgotten.get(node.node_id, 0) == forgotten:  # else what we read is stale
            self._remember(_Remembered(node.node_public_key, facts, standing, 0.0), node.node_id)
        return standing

    def _remember(self, entry: _Remembered, node_id: str) -> None:
        self._known.pop(node_id, None)
        until = self._clock() + self.standing_refresh_s * (0.5 + random.random())
        self._known[node_id] = replace(entry, until=until, changed=False)
        while len(self._known) > MAX_REMEMBERED_NODES:
            del self._known[next(iter(self._known))]

    def forget(self, node_id: str) -> None:
        """The node's standing may have changed: its next beat reads it from the row."""
        known = self._known.get(node_id)
        if known is not None:
            self._known[node_id] = replace(known, changed=True)
        if len(self._forgotten) >= MAX_REMEMBERED_NODES:
            self._forgotten.clear()
        self._forgotten[node_id] = self._forgotten.get(node_id, 0) + 1

    @property
    def _sessions(self) -> async_sessionmaker[AsyncSession]:  # older tests' name; see `db`
        return self.db.sessions

    async def _read_standings(self, ids: list[str]) -> dict[str, tuple[str, NodeStanding]]:
        """node id -> (bound key, standing) of those of `ids` that have a row."""
        return await self.db.read(lambda c: NodeRepository(c).standings(ids))

    def _refresh_soon(self, node_id: str) -> None:
        self._due.add(node_id)
        if self._refresh_timer is None and self._refresher is None:
            loop = asyncio.get_running_loop()
            self._refresh_timer = loop.call_later(REFRESH_BATCH_S, self._start_refresh)

    def _start_refresh(self) -> None:
        self._refresh_timer = None
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_due())

    async def _refresh_due(self) -> None:
        """Read the standings due, a batch a query, into what is remembered."""
        try:
            while self._due:
                ids = [self._due.pop() for _ in range(min(REFRESH_BATCH_SIZE, len(self._due)))]
                before = {i: (self._known.get(i), self._forgotten.get(i, 0)) for i in ids}
                read = await self._read_standings(ids)
                for node_id, (key, standing) in read.items():
                    entry, forgotten = before[node_id]
                    if (
                        entry is None
                        or self._known.get(node_id) is not entry
                        or self._forgotten.get(node_id, 0) != forgotten
                        or key != entry.node_public_key
                    ):
                        continue  # changed meanwhile: that change's own read stands
                    self._remember(replace(entry, standing=standing), node_id)
        except Exception as exc:  # the next beats ask again; the beat itself never waits
            log.warning("reading node standings failed: %s", exc)
        finally:
            self._refresher = None

    async def close(self) -> None:
        """Stop reading standings (before the engine is disposed of)."""
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
            self._refresh_timer = None
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def _write(
        self, node: LiveNode, owner: str, now: datetime, invite_code: str
    ) -> NodeStanding:
        facts = NodeFacts(
            owner_public_key=owner,
            endpoint=node.endpoint,
            models=list(node.models),
            load=asdict(node.load),
            hardware=asdict(node.hardware),
            last_seen=now,
        )

        async def refresh(session: AsyncSession) -> NodeStanding | None:
            return await NodeRepository(session).update_facts(
                node.node_id, node.node_public_key, facts
            )

        async def bind_or_refresh(session: AsyncSession) -> NodeStanding | None:
            repo = NodeRepository(session)
            standing = await repo.update_facts(node.node_id, node.node_public_key, facts)
            if standing is not None:
                return standing
            await self._admit(session, node, now, invite_code)
            if not await repo.bind(node.node_id, node.node_public_key, facts, now):
                raise _BoundMeanwhile  # roll back: the invite stays unspent
            return await repo.update_facts(node.node_id, node.node_public_key, facts)

        try:
            standing = await self.db.transaction(bind_or_refresh)
        except _BoundMeanwhile:
            standing = await self.db.transaction(refresh)
        if standing is None:
            raise PermissionDenied(f"node id {node.node_id} is bound to another node key")
        return standing

    async def _admit(
        self, session: AsyncSession, node: LiveNode, now: datetime, invite_code: str
    ) -> None:
        """PermissionDenied unless a new node id may be bound to this key."""
        admission = self.admission
        if await NodeRepository(session).key_barred(node.node_public_key):
            raise PermissionDenied(
                "this node key is barred: it failed too many verification checks (docs/adr/0053)"
            )
        held = await NodeRepository(session).count_bound_to(node.node_public_key)
        if held >= admission.max_nodes_per_key:
            raise PermissionDenied(
                f"this node key already holds {held} node ids, the most one key may "
                "(TROOP_MAX_NODES_PER_KEY): reuse one"
            )
        if admission.mode == "allowlist" and node.node_public_key not in admission.allowlist:
            raise PermissionDenied(
                "this coordinator admits listed node keys only (TROOP_NODE_ALLOWLIST)"
            )
        if admission.mode == "invite":
            claimed = await InviteRepository(session).claim(
                hash_invite(invite_code), node.node_public_key, now
            )
            if not invite_code or not claimed:
                raise PermissionDenied(
                    "this coordinator admits nodes by invite: heartbeat with an unused "
                    "invite_code from `troop admin invite`"
                )

    async def set_proven_endpoint(
        self, node_id: str, node_key: str, endpoint: str, tls: bool
    ) -> None:
        """Record that `endpoint`, dialled with TLS or not (`tls`), answered with `node_key`;
        any other node that claimed the endpoint loses it (one endpoint, one node key)."""
        await self.db.transaction(
            lambda s: NodeRepository(s).set_proven_endpoint(node_id, node_key, endpoint, tls)
        )
        # Rare (a node's first beats, or a new endpoint): a look at every node is fine.
        losers = [k for k, v in self._known.items() if v.standing.proven_endpoint == endpoint]
        for changed in [node_id, *losers]:
            self.forget(changed)

    async def bound_key(self, node_id: str) -> str | None:
        """The node key a node id is bound to, or None if it never heartbeated."""
        return await self.db.read(lambda c: NodeRepository(c).bound_key(node_id))

    async def require_bound_to(self, node_id: str, public_key: str) -> None:
        """NotFound for a node that never heartbeated; PermissionDenied for another key."""
        bound = await self.bound_key(node_id)
        if bound is None:
            raise NotFound(f"node {node_id} has never sent a heartbeat")
        if bound != public_key:
            raise PermissionDenied(f"node id {node_id} is bound to another node key")

    async def set_multiplier(self, node_id: str, multiplier: float) -> None:
        await self.db.transaction(lambda s: NodeRepository(s).set_multiplier(node_id, multiplier))
        self.forget(node_id)
