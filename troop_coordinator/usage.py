"""Reading both sides of jobs: disputes, reputation and who leads the disputes.

The claims themselves are written by the ledger in the transaction that
settles the job (troop_coordinator.ledger.settlement): the node's signed
receipt and the client's countersignature, each kept once, and a
disagreement beyond the slack recorded as one dispute naming both the node
and the user. Each dispute multiplies the node's reputation by 0.8; an
agreeing job adds 0.02 back (at most 1.0), and discovery prefers reputable
nodes. The audit (`troop admin audit-ledger`) lists who leads the disputes,
so a user who always under-reports is as visible as a node that over-claims.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from troop_coordinator.db.transactions import Database
from troop_coordinator.repositories.disputes import DisputeRepository
from troop_coordinator.repositories.nodes import NodeRepository


class UsageBook:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.db = Database(sessions)

    async def reputation(self, node_id: str) -> float | None:
        return await self.db.read(lambda c: NodeRepository(c).reputation(node_id))

    async def disputes_of(self, node_id: str) -> list[dict[str, Any]]:
        disputes = await self.db.read(lambda c: DisputeRepository(c).of_node(node_id))
        return [asdict(d) for d in disputes]

    async def disputes_of_user(self, public_key: str) -> list[dict[str, Any]]:
        disputes = await self.db.read(lambda c: DisputeRepository(c).of_user(public_key))
        return [asdict(d) for d in disputes]
