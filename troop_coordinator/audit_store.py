"""The tamper-evident audit table: append security events as a hash chain, and verify it.

hash(n) = sha256(hash(n-1) + "\\n" + canonical JSON of event n), from a genesis
of 64 zeros. Appends take the `audit_head` row lock (UPDATE … RETURNING), so
replicas append one at a time and the chain has no forks; verification walks
the chain in order and names the first row whose hash does not follow.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from troop_coordinator.db.models import AuditEvent, AuditHead

GENESIS = "0" * 64


def chain_hash(prev_hash: str, event: dict[str, Any]) -> str:
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    events: int
    broken_at: int | None  # seq of the first row that does not follow, None if intact
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


class AuditStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def append(self, event: dict[str, Any]) -> int:
        """Append one event; its sequence number."""
        async with self._sessions.begin() as session:
            seq, prev_hash = (
                await session.execute(
                    update(AuditHead)
                    .where(AuditHead.id == 1)
                    .values(seq=AuditHead.seq + 1)
                    .returning(AuditHead.seq, AuditHead.last_hash)
                )
            ).one()
            digest = chain_hash(prev_hash, event)
            session.add(
                AuditEvent(
                    seq=seq,
                    created_at=datetime.now(UTC),
                    event=event,
                    prev_hash=prev_hash,
                    hash=digest,
                )
            )
            await session.execute(
                update(AuditHead).where(AuditHead.id == 1).values(last_hash=digest)
            )
            return int(seq)

    async def events(self, limit: int = 100) -> list[AuditEvent]:
        async with self._sessions() as session:
            rows = await session.scalars(select(AuditEvent).order_by(AuditEvent.seq).limit(limit))
            return list(rows)

    async def verify(self) -> ChainReport:
        """Walk the whole chain; the first broken link, if any."""
        expected_prev, expected_seq, count = GENESIS, 1, 0
        async with self._sessions() as session:
            head = (await session.execute(select(AuditHead))).scalar_one()
            rows = await session.scalars(select(AuditEvent).order_by(AuditEvent.seq))
            for row in rows:
                count += 1
                if row.seq != expected_seq:
                    return ChainReport(count, row.seq, f"expected event {expected_seq}")
                if row.prev_hash != expected_prev:
                    return ChainReport(count, row.seq, "does not follow the previous event")
                if chain_hash(row.prev_hash, row.event) != row.hash:
                    return ChainReport(count, row.seq, "its content does not match its hash")
                expected_prev, expected_seq = row.hash, expected_seq + 1
        if head.seq != count or head.last_hash != expected_prev:
            return ChainReport(count, count + 1, "events are missing from the end of the chain")
        return ChainReport(count, None)
