"""Held pay (docs/adr/0053): releasing it once its node's hold ends, returning it if the
node key is barred.

While a failed check holds a node, a job it settles pays into `held_earnings` instead of
its owner's balance (`Settling._close`, and migration 0010's `troop_ledger_close`). The
sweep here settles each held row once, in its own transaction, on both backends (a rare
path: one Python transaction a row is enough): the job's one EARN entry to the owner
when the hold is over and the key is not barred, or a REFUND entry to the user who paid
it when the key is barred. The claim is the conditional UPDATE on the held row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import TypeVar

from troop_coordinator.db.models import EntryKind
from troop_coordinator.db.transactions import Database
from troop_coordinator.ledger.repository import LedgerRepository
from troop_coordinator.repositories.held_earnings import REFUNDED, RELEASED

T = TypeVar("T")

HELD_BATCH = 500


async def settle_held_row(repo: LedgerRepository, job_id: str, now: datetime) -> str | None:
    """Release (RELEASED) or return (REFUNDED) one held row as its node's state says, in
    the caller's transaction; None if it stays held or was settled meanwhile."""
    claimed = await repo.held.claim(job_id, now)
    if claimed is None:
        return None
    row, outcome = claimed
    if outcome == RELEASED:
        account, kind = row.owner_public_key, EntryKind.EARN
        await repo.insert_user_if_missing(account, now)
    else:
        account, kind = row.user_public_key, EntryKind.REFUND
    after = await repo.credit(account, row.amount_millicredits)
    await repo.append(
        account=account,
        kind=kind,
        amount=row.amount_millicredits,
        balance_after=after,
        now=now,
        job_id=row.job_id,
    )
    return outcome


class HeldPay:
    db: Database

    async def _in_transaction(self, work: Callable[[LedgerRepository], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def settle_held(self, now: datetime) -> dict[str, int]:
        """Release the held pay whose node's hold is over (EARN to the owner) and return
        that of barred node keys (REFUND to the user); {"released": n, "refunded": m}.
        Safe on many replicas: each row is claimed once."""
        job_ids = await self.db.read(
            lambda connection: LedgerRepository(connection).held.due(now, HELD_BATCH)
        )
        counts = {RELEASED: 0, REFUNDED: 0}
        for job_id in job_ids:
            outcome = await self._in_transaction(partial(settle_held_row, job_id=job_id, now=now))
            if outcome is not None:
                counts[outcome] += 1
        return counts
