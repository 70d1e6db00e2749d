"""The durable half of node identity: node id ↔ node key binding, owner, multiplier.

The first heartbeat of a node id binds it to the asserting key for good; every
later heartbeat must come from that key. Binding is one INSERT .. ON CONFLICT
DO NOTHING plus one UPDATE guarded by the key, so two replicas (or two
impostors racing) cannot both bind a node id. A new binding must pass node
admission (open, an allowlist of node keys, or a one-time invite) and the
bound on node ids per node key, so one key cannot invent hundreds of nodes.
The endpoint the coordinator proved answers with the node's key
(`troop_coordinator.reachability`) is kept here too: replicas share it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from troop_common.admission import hash_invite
from troop_common.errors import NotFound, PermissionDenied
from troop_coordinator.db.engine import dialect_insert
from troop_coordinator.db.models import invites_table as invites
from troop_coordinator.db.models import nodes_table as nodes
from troop_coordinator.registry import LiveNode

NODE_ADMISSION_MODES = ("open", "allowlist", "invite")


class _BoundMeanwhile(Exception):
    """Another transaction bound the node id first."""


@dataclass(frozen=True)
class NodeAdmission:
    """Who may bind a new node id: anyone, the keys listed, or holders of an invite."""

    mode: str = "open"
    allowlist: frozenset[str] = frozenset()
    max_nodes_per_key: int = 4


@dataclass(frozen=True)
class NodeStanding:
    """What a heartbeat learns back: the node's multiplier, reputation, proven endpoint."""

    multiplier: float
    reputation: float
    proven_endpoint: str | None


class NodeDirectory:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        admission: NodeAdmission | None = None,
    ) -> None:
        self._sessions = sessions
        self.admission = admission or NodeAdmission()

    async def record_heartbeat(
        self, node: LiveNode, owner: str, now: datetime, invite_code: str = ""
    ) -> NodeStanding:
        """Bind on first sight (admission permitting), refresh after; the node's standing.
        PermissionDenied if the node id is bound to another key, or a new binding is not
        admitted."""
        values = {
            "owner_public_key": owner,
            "endpoint": node.endpoint,
            "models": list(node.models),
            "load": asdict(node.load),
            "hardware": asdict(node.hardware),
            "last_seen": now,
        }
        try:
            async with self._sessions.begin() as session:
                terms = await self._refresh(session, node, values)
                if terms is None:
                    await self._admit(session, node, now, invite_code)
                    created = await session.execute(
                        dialect_insert(session, nodes)
                        .values(
                            node_id=node.node_id,
                            node_public_key=node.node_public_key,
                            multiplier=1.0,
                            proven=False,
                            created_at=now,
                            **values,
                        )
                        .on_conflict_do_nothing(index_elements=["node_id"])
                    )
                    if cast(CursorResult[Any], created).rowcount != 1:
                        raise _BoundMeanwhile  # roll back: the invite stays unspent
                    terms = await self._refresh(session, node, values)
        except _BoundMeanwhile:
            async with self._sessions.begin() as session:
                terms = await self._refresh(session, node, values)
        if terms is None:
            raise PermissionDenied(f"node id {node.node_id} is bound to another node key")
        return NodeStanding(float(terms[0]), float(terms[1]), terms[2])

    @staticmethod
    async def _refresh(session: AsyncSession, node: LiveNode, values: dict[str, Any]) -> Any:
        statement = (
            update(nodes)
            .where(
                nodes.c.node_id == node.node_id,
                nodes.c.node_public_key == node.node_public_key,
            )
            .values(**values)
            .returning(nodes.c.multiplier, nodes.c.reputation, nodes.c.proven_endpoint)
        )
        return (await session.execute(statement)).first()

    async def _admit(
        self, session: AsyncSession, node: LiveNode, now: datetime, invite_code: str
    ) -> None:
        """PermissionDenied unless a new node id may be bound to this key."""
        admission = self.admission
        held = (
            await session.execute(
                select(func.count()).where(nodes.c.node_public_key == node.node_public_key)
            )
        ).scalar_one()
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
            claimed = await session.execute(
                update(invites)
                .where(
                    invites.c.code_hash == hash_invite(invite_code),
                    invites.c.used_at.is_(None),
                )
                .values(used_at=now, used_by=node.node_public_key)
            )
            if not invite_code or cast(CursorResult[Any], claimed).rowcount != 1:
                raise PermissionDenied(
                    "this coordinator admits nodes by invite: heartbeat with an unused "
                    "invite_code from `troop admin invite`"
                )

    async def set_proven_endpoint(self, node_id: str, node_key: str, endpoint: str) -> None:
        """Record that `endpoint` answered with `node_key`; any other node that claimed the
        endpoint loses it (one endpoint, one node key)."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(nodes)
                .where(nodes.c.proven_endpoint == endpoint, nodes.c.node_id != node_id)
                .values(proven_endpoint=None)
            )
            await session.execute(
                update(nodes)
                .where(nodes.c.node_id == node_id, nodes.c.node_public_key == node_key)
                .values(proven_endpoint=endpoint)
            )

    async def bound_key(self, node_id: str) -> str | None:
        """The node key a node id is bound to, or None if it never heartbeated."""
        async with self._sessions() as session:
            return (
                await session.execute(
                    select(nodes.c.node_public_key).where(nodes.c.node_id == node_id)
                )
            ).scalar_one_or_none()

    async def require_bound_to(self, node_id: str, public_key: str) -> None:
        """NotFound for a node that never heartbeated; PermissionDenied for another key."""
        bound = await self.bound_key(node_id)
        if bound is None:
            raise NotFound(f"node {node_id} has never sent a heartbeat")
        if bound != public_key:
            raise PermissionDenied(f"node id {node_id} is bound to another node key")

    async def set_multiplier(self, node_id: str, multiplier: float) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(nodes)
                .where(nodes.c.node_id == node_id)
                .values(multiplier=multiplier, proven=True)
            )
