"""Nodes: the node id ↔ node key binding, the facts a heartbeat reports, and the standing
(multiplier, reputation, proven endpoint) that proofs and settlements move.

Every write is guarded by the statement itself (the key in the WHERE clause, an
INSERT .. ON CONFLICT DO NOTHING), so two replicas cannot both bind a node id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from troop_coordinator.db.engine import dialect_insert, dialect_name
from troop_coordinator.db.models import nodes_table as nodes
from troop_coordinator.node_checks import NodeChecks


@dataclass(frozen=True)
class NodeStanding:
    """What a heartbeat learns back: the node's multiplier, reputation, proven endpoint
    and whether that endpoint was proven over TLS."""

    multiplier: float
    reputation: float
    proven_endpoint: str | None
    proven_tls: bool = False
    checks: NodeChecks = field(default_factory=NodeChecks)

    def proves(self, endpoint: str, tls: bool) -> bool:
        """Whether `endpoint`, in the mode (`tls`) the node declares, is the one proven."""
        return self.proven_endpoint == endpoint and self.proven_tls == tls


@dataclass(frozen=True)
class NodeFacts:
    """What a node's heartbeat says of it, as its row keeps it (a new column is a field)."""

    owner_public_key: str
    endpoint: str
    models: list[str]
    load: dict[str, Any]
    hardware: dict[str, Any]
    last_seen: datetime


@dataclass(frozen=True)
class NodeTerms:
    """Who a node pays out to, the speed it proved (1.0: unproven), and until when a
    failed check holds its pay (or for good: `barred`)."""

    owner_public_key: str
    multiplier: float
    held_until: datetime | None = None
    barred: bool = False

    def holds(self, now: datetime) -> bool:
        """Whether a job settled at `now` pays into `held_earnings` instead of the owner."""
        return self.barred or (self.held_until is not None and self.held_until > now)


_STANDING = (
    nodes.c.multiplier,
    nodes.c.reputation,
    nodes.c.proven_endpoint,
    nodes.c.proven_tls,
    nodes.c.checks_passed,
    nodes.c.checks_failed,
    nodes.c.last_checked,
    nodes.c.held_until,
    nodes.c.failed_models,
    nodes.c.barred,
)


def _seconds(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _checks(row: Any) -> NodeChecks:
    """The verification columns (checks_passed .. barred) as a NodeChecks."""
    passed, failed, last_checked, held_until, failed_models, barred = row
    return NodeChecks(
        checks_passed=int(passed or 0),
        checks_failed=int(failed or 0),
        last_checked=_seconds(last_checked),
        held_until=_seconds(held_until),
        failed_models=tuple(sorted((str(m), float(u)) for m, u in (failed_models or {}).items())),
        barred=bool(barred),
    )


def _standing(row: Any) -> NodeStanding:
    return NodeStanding(float(row[0]), float(row[1]), row[2], bool(row[3]), _checks(row[4:10]))


class NodeRepository:
    def __init__(self, session: AsyncSession | AsyncConnection) -> None:
        self.session = session

    async def standings(self, node_ids: list[str]) -> dict[str, tuple[str, NodeStanding]]:
        """node id -> (bound key, standing) of those of `node_ids` that have a row."""
        rows = await self.session.execute(
            select(nodes.c.node_id, nodes.c.node_public_key, *_STANDING).where(
                nodes.c.node_id.in_(node_ids)
            )
        )
        return {row[0]: (row[1], _standing(row[2:])) for row in rows}

    async def update_facts(
        self, node_id: str, node_key: str, facts: NodeFacts
    ) -> NodeStanding | None:
        """Write the facts of a node bound to `node_key`; its standing, or None (unbound,
        or bound to another key: nothing changed)."""
        statement = (
            update(nodes)
            .where(nodes.c.node_id == node_id, nodes.c.node_public_key == node_key)
            .values(**asdict(facts))
            .returning(*_STANDING)
        )
        row = (await self.session.execute(statement)).first()
        return None if row is None else _standing(row)

    async def bind(self, node_id: str, node_key: str, facts: NodeFacts, now: datetime) -> bool:
        """Bind a new node id to `node_key`; False if it was bound meanwhile (nothing changed)."""
        statement = (
            dialect_insert(self.session, nodes)
            .values(
                node_id=node_id,
                node_public_key=node_key,
                multiplier=1.0,
                proven=False,
                created_at=now,
                **asdict(facts),
            )
            .on_conflict_do_nothing(index_elements=["node_id"])
        )
        return cast(CursorResult[Any], await self.session.execute(statement)).rowcount == 1

    async def count_bound_to(self, node_key: str) -> int:
        statement = select(func.count()).where(nodes.c.node_public_key == node_key)
        return int((await self.session.execute(statement)).scalar_one())

    async def ids_bound_to(self, node_key: str) -> list[str]:
        statement = select(nodes.c.node_id).where(nodes.c.node_public_key == node_key)
        return sorted(str(r) for r in (await self.session.execute(statement)).scalars().all())

    async def bound_key(self, node_id: str) -> str | None:
        statement = select(nodes.c.node_public_key).where(nodes.c.node_id == node_id)
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def set_proven_endpoint(
        self, node_id: str, node_key: str, endpoint: str, tls: bool
    ) -> None:
        """`endpoint`, dialled with TLS or not (`tls`), is this node's; any other node that
        claimed it loses it."""
        await self.session.execute(
            update(nodes)
            .where(nodes.c.proven_endpoint == endpoint, nodes.c.node_id != node_id)
            .values(proven_endpoint=None, proven_tls=False)
        )
        await self.session.execute(
            update(nodes)
            .where(nodes.c.node_id == node_id, nodes.c.node_public_key == node_key)
            .values(proven_endpoint=endpoint, proven_tls=tls)
        )

    async def set_multiplier(self, node_id: str, multiplier: float) -> None:
        """A proof of hardware passed: the node earns at `multiplier`."""
        await self.session.execute(
            update(nodes)
            .where(nodes.c.node_id == node_id)
            .values(multiplier=multiplier, proven=True)
        )

    async def reputation(self, node_id: str) -> float | None:
        statement = select(nodes.c.reputation).where(nodes.c.node_id == node_id)
        value = (await self.session.execute(statement)).scalar_one_or_none()
        return None if value is None else float(value)

    async def terms(self, node_id: str) -> NodeTerms | None:
        statement = select(
            nodes.c.owner_public_key, nodes.c.multiplier, nodes.c.held_until, nodes.c.barred
        ).where(nodes.c.node_id == node_id)
        row = (await self.session.execute(statement)).first()
        if row is None:
            return None
        return NodeTerms(str(row[0]), float(row[1]), row[2], bool(row[3]))

    async def checks(self, node_id: str, *, lock: bool = False) -> NodeChecks | None:
        """The node's verification record, or None for a node with no row (`lock`: its
        row locked until the transaction ends, on PostgreSQL; SQLite has one writer)."""
        statement = select(*_STANDING[4:]).where(nodes.c.node_id == node_id)
        if lock:
            statement = statement.with_for_update()
        row = (await self.session.execute(statement)).first()
        return None if row is None else _checks(row)

    async def record_check(
        self, node_id: str, *, passed: bool, model: str, now: datetime, held_until: datetime
    ) -> NodeChecks:
        """Count one verdict on the node at `now`: a pass, or a failure that holds its pay
        until `held_until` and keeps `model` off it until then (a model's older deadline is
        replaced; models whose deadline passed are dropped). The record after it."""
        current = await self.checks(node_id, lock=True)
        assert current is not None, node_id
        if passed:
            values: dict[str, Any] = {"checks_passed": nodes.c.checks_passed + 1}
        else:
            failed = {m: u for m, u in current.failed_models if u > now.timestamp()}
            failed[model] = held_until.timestamp()
            values = {
                "checks_failed": nodes.c.checks_failed + 1,
                "held_until": held_until,
                "failed_models": failed,
            }
        await self.session.execute(
            update(nodes).where(nodes.c.node_id == node_id).values(last_checked=now, **values)
        )
        after = await self.checks(node_id)
        assert after is not None
        return after

    async def bar_key(self, node_key: str) -> list[str]:
        """Bar a node key: every node id bound to it. Their ids."""
        rows = await self.session.execute(
            update(nodes)
            .where(nodes.c.node_public_key == node_key)
            .values(barred=True)
            .returning(nodes.c.node_id)
        )
        return sorted(str(r) for r in rows.scalars().all())

    async def key_barred(self, node_key: str) -> bool:
        statement = select(func.count()).where(
            nodes.c.node_public_key == node_key, nodes.c.barred.is_(True)
        )
        return int((await self.session.execute(statement)).scalar_one()) > 0

    async def scale_reputation(self, node_id: str, factor: float) -> None:
        await self.session.execute(
            update(nodes)
            .where(nodes.c.node_id == node_id)
            .values(reputation=nodes.c.reputation * factor)
        )

    async def raise_reputation(self, node_id: str, step: float) -> None:
        """Add `step`, never above 1.0 (the dialect's smaller-of function)."""
        smaller = func.min if dialect_name(self.session) == "sqlite" else func.least
        await self.session.execute(
            update(nodes)
            .where(nodes.c.node_id == node_id)
            .values(reputation=smaller(1.0, nodes.c.reputation + step))
        )

    async def note_speed(self, node_id: str, *, slow: bool, withdraw_after: int) -> bool:
        """Count a countersigned job far below the node's proven speed (or reset the
        count); withdraw the proof at `withdraw_after` in a row. True if withdrawn."""
        if not slow:
            await self.session.execute(
                update(nodes).where(nodes.c.node_id == node_id).values(slow_jobs=0)
            )
            return False
        count = (
            await self.session.execute(
                update(nodes)
                .where(nodes.c.node_id == node_id)
                .values(slow_jobs=nodes.c.slow_jobs + 1)
                .returning(nodes.c.slow_jobs)
            )
        ).scalar_one_or_none()
        if count is None or count < withdraw_after:
            return False
        await self.session.execute(
            update(nodes)
            .where(nodes.c.node_id == node_id)
            .values(slow_jobs=0, multiplier=1.0, proven=False)
        )
        return True
