"""Held earnings: a settled job's pay kept from its node's owner while a failed check
holds the node (docs/adr/0053), then released as the job's EARN entry or returned to
its user as a REFUND entry. Each row is settled once: the conditional UPDATE on
`settled_at IS NULL` is the claim, as `open -> settled` is for jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from troop_coordinator.db.models import held_earnings_table as held
from troop_coordinator.db.models import nodes_table as nodes

RELEASED = "released"
REFUNDED = "refunded"


@dataclass(frozen=True)
class HeldEarning:
    job_id: str
    node_id: str
    owner_public_key: str
    user_public_key: str
    amount_millicredits: int
    held_at: datetime


def _row(row: Any) -> HeldEarning:
    return HeldEarning(
        job_id=str(row.job_id),
        node_id=str(row.node_id),
        owner_public_key=str(row.owner_public_key),
        user_public_key=str(row.user_public_key),
        amount_millicredits=int(row.amount_millicredits),
        held_at=row.held_at,
    )


def _releasable(now: datetime) -> Any:
    """Its node's hold is over and its key is not barred."""
    return and_(
        nodes.c.barred.is_(False),
        or_(nodes.c.held_until.is_(None), nodes.c.held_until <= now),
    )


class HeldEarningsRepository:
    def __init__(self, session: AsyncSession | AsyncConnection) -> None:
        self.session = session

    async def hold(
        self, *, job_id: str, node_id: str, owner: str, user: str, amount: int, now: datetime
    ) -> None:
        await self.session.execute(
            held.insert().values(
                job_id=job_id,
                node_id=node_id,
                owner_public_key=owner,
                user_public_key=user,
                amount_millicredits=amount,
                held_at=now,
            )
        )

    async def due(self, now: datetime, limit: int) -> list[str]:
        """Held rows to settle now: their node's hold is over, or its key barred."""
        statement = (
            select(held.c.job_id)
            .select_from(held.join(nodes, nodes.c.node_id == held.c.node_id))
            .where(
                held.c.settled_at.is_(None),
                or_(nodes.c.barred.is_(True), _releasable(now)),
            )
            .order_by(held.c.held_at)
            .limit(limit)
        )
        return [str(r) for r in (await self.session.execute(statement)).scalars().all()]

    async def of_nodes(self, node_ids: list[str]) -> list[str]:
        """The still-held rows of these nodes."""
        statement = select(held.c.job_id).where(
            held.c.node_id.in_(node_ids), held.c.settled_at.is_(None)
        )
        return [str(r) for r in (await self.session.execute(statement)).scalars().all()]

    async def claim(self, job_id: str, now: datetime) -> tuple[HeldEarning, str] | None:
        """Settle one held row as its node's state says: (the row, RELEASED) if its hold is
        over and its key not barred, (the row, REFUNDED) if barred; None if it is still
        held, or was settled meanwhile (nothing changed)."""
        statement = (
            select(nodes.c.barred)
            .select_from(held.join(nodes, nodes.c.node_id == held.c.node_id))
            .where(held.c.job_id == job_id, held.c.settled_at.is_(None))
        )
        barred = (await self.session.execute(statement)).scalar_one_or_none()
        if barred is None:
            return None
        outcome = REFUNDED if barred else RELEASED
        condition = (
            select(func.count())
            .select_from(nodes)
            .where(
                nodes.c.node_id == held.c.node_id,
                nodes.c.barred.is_(True) if barred else _releasable(now),
            )
            .scalar_subquery()
        )
        claimed = (
            await self.session.execute(
                update(held)
                .where(held.c.job_id == job_id, held.c.settled_at.is_(None), condition > 0)
                .values(settled_at=now, outcome=outcome)
                .returning(*held.c)
            )
        ).first()
        return None if claimed is None else (_row(claimed), outcome)

    async def held_total(self) -> int:
        """Millicredits held and not yet released or returned (the audit's third term)."""
        statement = select(func.coalesce(func.sum(held.c.amount_millicredits), 0)).where(
            held.c.settled_at.is_(None)
        )
        return int((await self.session.execute(statement)).scalar_one())
