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

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from troop_coordinator.db.models import disputes_table as disputes
from troop_coordinator.db.models import nodes_table as nodes


class UsageBook:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def reputation(self, node_id: str) -> float | None:
        async with self._sessions() as session:
            value = (
                await session.execute(select(nodes.c.reputation).where(nodes.c.node_id == node_id))
            ).scalar_one_or_none()
        return None if value is None else float(value)

    async def disputes_of(self, node_id: str) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            rows = await session.execute(disputes.select().where(disputes.c.node_id == node_id))
            return [dict(r._mapping) for r in rows]

    async def disputes_of_user(self, public_key: str) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            rows = await session.execute(
                disputes.select().where(disputes.c.user_public_key == public_key)
            )
            return [dict(r._mapping) for r in rows]


async def dispute_leaders(
    session: AsyncSession, column: Any, limit: int = 5
) -> list[tuple[str, int]]:
    """The parties (node ids or user keys) with the most disputes, most first."""
    count = func.count().label("n")
    statement = (
        select(column, count)
        .where(column.is_not(None))
        .group_by(column)
        .order_by(count.desc(), column)
        .limit(limit)
    )
    return [(str(r[0]), int(r[1])) for r in (await session.execute(statement)).all()]
