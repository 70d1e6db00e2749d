"""Invites: one-time admission codes (users' and nodes'), kept as their SHA-256 only."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, update
from sqlalchemy.ext.asyncio import AsyncSession

from troop_coordinator.db.models import invites_table as invites


class InviteRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert(self, code_hash: str, now: datetime) -> None:
        await self.session.execute(invites.insert().values(code_hash=code_hash, created_at=now))

    async def claim(self, code_hash: str, public_key: str, now: datetime) -> bool:
        """Spend an unused invite for `public_key`; False if unknown or used (nothing changed)."""
        statement = (
            update(invites)
            .where(invites.c.code_hash == code_hash, invites.c.used_at.is_(None))
            .values(used_at=now, used_by=public_key)
        )
        return cast(CursorResult[Any], await self.session.execute(statement)).rowcount == 1
