"""Both sides of a job: the node's signed receipt and the client's countersignature.

Each side's claim is written onto the job row by one conditional
`UPDATE .. RETURNING` (first claim per side wins). The row comes back with
the other side's claim if it was already committed — on PostgreSQL the UPDATE
waits on the row lock and re-reads the latest version — so exactly the
second of the two compares, even when they race on two replicas.

A node that claimed more completion tokens than the client received (beyond
`token_slack`), or a duration longer than the client's stream time by more
than 10% + `time_slack_ms`, gets a dispute (one per job) and its reputation
is multiplied by DISPUTE_FACTOR; an agreeing job earns it back slowly.
Settlement is not changed (it is immediate on the receipt, and capped by
what the coordinator observed); reputation steers discovery away.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from troop_common.errors import NotFound, PermissionDenied
from troop_coordinator.db.engine import dialect_insert, dialect_name
from troop_coordinator.db.models import disputes_table as disputes
from troop_coordinator.db.models import jobs_table as jobs
from troop_coordinator.db.models import nodes_table as nodes

DISPUTE_FACTOR = 0.8
AGREE_STEP = 0.02
TIME_SLACK_RATIO = 0.10


@dataclass(frozen=True)
class Verdict:
    compared: bool  # both claims were there
    disputed: bool
    already_reported: bool = False


def dispute_reason(row: Any, *, token_slack: int, time_slack_ms: int) -> str | None:
    """Why the node's claim on `row` exceeds the client's, or None when it does not."""
    node_tokens, client_tokens = int(row.node_completion_tokens), int(row.client_completion_tokens)
    node_ms, client_ms = int(row.node_duration_ms), int(row.client_stream_ms)
    reasons = []
    if node_tokens > client_tokens + token_slack:
        reasons.append(f"node claimed {node_tokens} completion tokens, client got {client_tokens}")
    if node_ms > client_ms * (1 + TIME_SLACK_RATIO) + time_slack_ms:
        reasons.append(f"node claimed {node_ms} ms, client streamed {client_ms} ms")
    return "; ".join(reasons) or None


class UsageBook:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        token_slack: int = 2,
        time_slack_ms: int = 2000,
    ) -> None:
        self._sessions = sessions
        self.token_slack = token_slack
        self.time_slack_ms = time_slack_ms

    async def record_node_claim(
        self, job_id: str, completion_tokens: int, duration_ms: int, now: datetime
    ) -> Verdict:
        """Keep the node's first receipt's claim; compare if the client reported first."""
        async with self._sessions.begin() as session:
            row = (
                await session.execute(
                    update(jobs)
                    .where(jobs.c.job_id == job_id, jobs.c.node_duration_ms.is_(None))
                    .values(node_completion_tokens=completion_tokens, node_duration_ms=duration_ms)
                    .returning(*jobs.c)
                )
            ).first()
            if row is None or row.usage_reported_at is None:
                return Verdict(compared=False, disputed=False)
            return await self._judge(session, row, now)

    async def record_client_claim(
        self, job_id: str, user: str, completion_tokens: int, stream_ms: int, now: datetime
    ) -> Verdict:
        """Keep the client's first report; compare if the node's receipt came first.
        NotFound for an unknown job, PermissionDenied for another user's."""
        async with self._sessions.begin() as session:
            owner = (
                await session.execute(
                    jobs.select()
                    .with_only_columns(jobs.c.user_public_key)
                    .where(jobs.c.job_id == job_id)
                )
            ).scalar_one_or_none()
            if owner is None:
                raise NotFound(f"no job {job_id}")
            if owner != user:
                raise PermissionDenied("a user can only report their own jobs")
            row = (
                await session.execute(
                    update(jobs)
                    .where(jobs.c.job_id == job_id, jobs.c.usage_reported_at.is_(None))
                    .values(
                        client_completion_tokens=completion_tokens,
                        client_stream_ms=stream_ms,
                        usage_reported_at=now,
                    )
                    .returning(*jobs.c)
                )
            ).first()
            if row is None:
                return Verdict(compared=False, disputed=False, already_reported=True)
            if row.node_duration_ms is None:
                return Verdict(compared=False, disputed=False)
            return await self._judge(session, row, now)

    async def _judge(self, session: AsyncSession, row: Any, now: datetime) -> Verdict:
        reason = dispute_reason(row, token_slack=self.token_slack, time_slack_ms=self.time_slack_ms)
        if reason is None:
            # The smaller of two values: MIN(a, b) in SQLite, LEAST(a, b) in PostgreSQL.
            smaller = func.min if dialect_name(session) == "sqlite" else func.least
            await session.execute(
                update(nodes)
                .where(nodes.c.node_id == row.node_id)
                .values(reputation=smaller(1.0, nodes.c.reputation + AGREE_STEP))
            )
            return Verdict(compared=True, disputed=False)
        created = await session.execute(
            dialect_insert(session, disputes)
            .values(
                job_id=row.job_id,
                node_id=row.node_id,
                created_at=now,
                reason=reason[:200],
                node_completion_tokens=row.node_completion_tokens,
                client_completion_tokens=row.client_completion_tokens,
                node_duration_ms=row.node_duration_ms,
                client_stream_ms=row.client_stream_ms,
            )
            .on_conflict_do_nothing(index_elements=["job_id"])
        )
        if cast(CursorResult[Any], created).rowcount == 1:
            await session.execute(
                update(nodes)
                .where(nodes.c.node_id == row.node_id)
                .values(reputation=nodes.c.reputation * DISPUTE_FACTOR)
            )
        return Verdict(compared=True, disputed=True)

    async def reputation(self, node_id: str) -> float | None:
        async with self._sessions() as session:
            value = (
                await session.execute(
                    nodes.select()
                    .with_only_columns(nodes.c.reputation)
                    .where(nodes.c.node_id == node_id)
                )
            ).scalar_one_or_none()
        return None if value is None else float(value)

    async def disputes_of(self, node_id: str) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            rows = await session.execute(disputes.select().where(disputes.c.node_id == node_id))
            return [dict(r._mapping) for r in rows]
