"""The audit chain's tables: `audit_head` (the next sequence number and the last hash,
whose row lock orders appends across replicas) and the append-only `audit_events`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from troop_coordinator.db.models import AuditEvent, AuditHead


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    created_at: datetime
    event: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainHead:
    seq: int  # the last event's sequence number (0: none yet)
    last_hash: str


_COLUMNS = (
    AuditEvent.seq,
    AuditEvent.created_at,
    AuditEvent.event,
    AuditEvent.prev_hash,
    AuditEvent.hash,
)


class AuditChainRepository:
    def __init__(self, session: AsyncSession | AsyncConnection) -> None:
        self.session = session

    async def advance(self) -> ChainHead:
        """Take the head's row lock and the next sequence number: (that number, the
        hash of the event before it)."""
        statement = (
            update(AuditHead)
            .where(AuditHead.id == 1)
            .values(seq=AuditHead.seq + 1)
            .returning(AuditHead.seq, AuditHead.last_hash)
        )
        seq, last_hash = (await self.session.execute(statement)).one()
        return ChainHead(int(seq), str(last_hash))

    async def append(self, record: AuditRecord) -> None:
        """Write the event and make its hash the head's."""
        await self.session.execute(
            insert(AuditEvent).values(
                seq=record.seq,
                created_at=record.created_at,
                event=record.event,
                prev_hash=record.prev_hash,
                hash=record.hash,
            )
        )
        await self.session.execute(
            update(AuditHead).where(AuditHead.id == 1).values(last_hash=record.hash)
        )

    async def head(self) -> ChainHead:
        seq, last_hash = (
            await self.session.execute(select(AuditHead.seq, AuditHead.last_hash))
        ).one()
        return ChainHead(int(seq), str(last_hash))

    async def events(self, limit: int | None = None) -> list[AuditRecord]:
        """Events in chain order, the first `limit` of them (all if None)."""
        statement = select(*_COLUMNS).order_by(AuditEvent.seq)
        if limit is not None:
            statement = statement.limit(limit)
        return [AuditRecord(*row) for row in await self.session.execute(statement)]
