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

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from troop_coordinator.db.transactions import Database
from troop_coordinator.repositories.audit_chain import (
    AuditChainRepository,
    AuditRecord,
    ChainHead,
)

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
        self.db = Database(sessions)

    async def append(self, event: dict[str, Any]) -> int:
        """Append one event; its sequence number."""
        return await self.db.transaction(lambda session: _append(session, event))

    async def events(self, limit: int = 100) -> list[AuditRecord]:
        return await self.db.read(lambda c: AuditChainRepository(c).events(limit))

    async def verify(self) -> ChainReport:
        """Walk the whole chain; the first broken link, if any."""
        head, records = await self.db.snapshot(_head_and_events)
        expected_prev, expected_seq, count = GENESIS, 1, 0
        for row in records:
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


async def _append(session: AsyncSession, event: dict[str, Any]) -> int:
    chain = AuditChainRepository(session)
    head = await chain.advance()
    digest = chain_hash(head.last_hash, event)
    await chain.append(
        AuditRecord(
            seq=head.seq,
            created_at=datetime.now(UTC),
            event=event,
            prev_hash=head.last_hash,
            hash=digest,
        )
    )
    return head.seq


async def _head_and_events(session: AsyncSession) -> tuple[ChainHead, list[AuditRecord]]:
    chain = AuditChainRepository(session)
    return await chain.head(), await chain.events()
