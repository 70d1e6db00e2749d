"""Disputes: a job whose node and user disagreed beyond the slack, recorded once on both."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from troop_coordinator.db.engine import dialect_insert
from troop_coordinator.db.models import disputes_table as disputes
from troop_coordinator.ledger.types import JobRecord

MAX_REASON = 200


@dataclass(frozen=True)
class DisputeRecord:
    job_id: str
    node_id: str
    user_public_key: str | None
    created_at: datetime
    reason: str
    node_completion_tokens: int
    client_completion_tokens: int
    node_duration_ms: int
    client_stream_ms: int


class DisputeRepository:
    def __init__(self, session: AsyncSession | AsyncConnection) -> None:
        self.session = session

    async def insert(self, job: JobRecord, reason: str, now: datetime) -> bool:
        """Record a disagreement on the job's node and user, once; True if new."""
        statement = (
            dialect_insert(self.session, disputes)
            .values(
                job_id=job.job_id,
                node_id=job.node_id,
                user_public_key=job.user_public_key,
                created_at=now,
                reason=reason[:MAX_REASON],
                node_completion_tokens=job.node_completion_tokens,
                client_completion_tokens=job.client_completion_tokens,
                node_duration_ms=job.node_duration_ms,
                client_stream_ms=job.client_stream_ms,
            )
            .on_conflict_do_nothing(index_elements=["job_id"])
        )
        return cast(CursorResult[Any], await self.session.execute(statement)).rowcount == 1

    async def exists(self, job_id: str) -> bool:
        statement = select(disputes.c.job_id).where(disputes.c.job_id == job_id)
        return (await self.session.execute(statement)).first() is not None

    async def of_node(self, node_id: str) -> list[DisputeRecord]:
        return await self._where(disputes.c.node_id == node_id)

    async def of_user(self, public_key: str) -> list[DisputeRecord]:
        return await self._where(disputes.c.user_public_key == public_key)

    async def _where(self, condition: Any) -> list[DisputeRecord]:
        rows = await self.session.execute(
            disputes.select().where(condition).order_by(disputes.c.created_at, disputes.c.job_id)
        )
        return [DisputeRecord(**r._mapping) for r in rows]

    async def leaders(
        self, party: Literal["node", "user"], limit: int = 5
    ) -> list[tuple[str, int]]:
        """The parties (node ids or user keys) with the most disputes, most first."""
        column = disputes.c.node_id if party == "node" else disputes.c.user_public_key
        count = func.count().label("n")
        statement = (
            select(column, count)
            .where(column.is_not(None))
            .group_by(column)
            .order_by(count.desc(), column)
            .limit(limit)
        )
        return [(str(r[0]), int(r[1])) for r in (await self.session.execute(statement)).all()]
