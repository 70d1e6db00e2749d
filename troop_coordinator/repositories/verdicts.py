"""Verdicts: a trusted verifier's signed finding on one job, kept once per job (ADR 53)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from troop_coordinator.db.engine import dialect_insert
from troop_coordinator.db.models import verdicts_table as verdicts


@dataclass(frozen=True)
class VerdictRow:
    job_id: str
    node_id: str
    model: str
    outcome: str  # "passed" or "failed"
    verifier_public_key: str
    verdict: bytes  # the serialized Verdict the verifier signed
    signature: bytes
    received_at: datetime


class VerdictRepository:
    def __init__(self, session: AsyncSession | AsyncConnection) -> None:
        self.session = session

    async def insert(self, row: VerdictRow) -> bool:
        """Keep the job's first verdict; False if it has one already (nothing changed)."""
        statement = (
            dialect_insert(self.session, verdicts)
            .values(**vars(row))
            .on_conflict_do_nothing(index_elements=["job_id"])
        )
        return cast(CursorResult[Any], await self.session.execute(statement)).rowcount == 1

    async def failures_since(self, node_ids: list[str], since: datetime) -> int:
        """Failed verdicts on any of `node_ids` received after `since`."""
        statement = select(func.count()).where(
            verdicts.c.node_id.in_(node_ids),
            verdicts.c.outcome == "failed",
            verdicts.c.received_at > since,
        )
        return int((await self.session.execute(statement)).scalar_one())
