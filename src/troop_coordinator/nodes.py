"""The durable half of node identity: node id ↔ node key binding, owner, multiplier.

The first heartbeat of a node id binds it to the asserting key for good; every
later heartbeat must come from that key. Binding is one INSERT .. ON CONFLICT
DO NOTHING plus one UPDATE guarded by the key, so two replicas (or two
impostors racing) cannot both bind a node id.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from troop_common.errors import NotFound, PermissionDenied
from troop_coordinator.db.engine import dialect_insert
from troop_coordinator.db.models import nodes_table as nodes
from troop_coordinator.registry import LiveNode


class NodeDirectory:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record_heartbeat(
        self, node: LiveNode, owner: str, now: datetime
    ) -> tuple[float, float]:
        """Bind on first sight, refresh after; the node's (multiplier, reputation).
        PermissionDenied if the node id is bound to another key."""
        values = {
            "owner_public_key": owner,
            "endpoint": node.endpoint,
            "models": list(node.models),
            "load": asdict(node.load),
            "hardware": asdict(node.hardware),
            "last_seen": now,
        }
        async with self._sessions.begin() as session:
            await session.execute(
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
            terms = (
                await session.execute(
                    update(nodes)
                    .where(
                        nodes.c.node_id == node.node_id,
                        nodes.c.node_public_key == node.node_public_key,
                    )
                    .values(**values)
                    .returning(nodes.c.multiplier, nodes.c.reputation)
                )
            ).first()
        if terms is None:
            raise PermissionDenied(f"node id {node.node_id} is bound to another node key")
        return float(terms[0]), float(terms[1])

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
