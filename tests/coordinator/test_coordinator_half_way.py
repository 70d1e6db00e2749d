"""A fault half-way through a ledger transaction leaves the ledger as it was.

The fault is INJECTED, in the database: a trigger refuses one kind of ledger entry, so
the writes before it in the same transaction (on PostgreSQL: in the same stored
function call, docs/adr/0034) have succeeded when it fires. Nothing real fails on
demand between two SQL statements. The servers, the database (both backends) and the
clients are real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text

from troop_common.errors import TroopError
from troop_coordinator.app import Coordinator

if TYPE_CHECKING:
    from conftest import Network

MODEL = "smollm2-135m-instruct"

_PG_FAULT = """
CREATE FUNCTION troop_test_injected_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'injected fault between two writes';
END
$$
"""


@asynccontextmanager
async def fail_on_entry(coordinator: Coordinator, kind: str) -> AsyncIterator[None]:
    """While inside, writing a ledger entry of `kind` raises, mid-transaction."""
    engine = coordinator.engine
    postgres = engine.dialect.name == "postgresql"
    create = (
        [
            _PG_FAULT,
            "CREATE TRIGGER troop_test_fault BEFORE INSERT ON ledger_entries FOR EACH ROW"
            f" WHEN (NEW.kind = '{kind}') EXECUTE FUNCTION troop_test_injected_fault()",
        ]
        if postgres
        else [
            "CREATE TRIGGER troop_test_fault BEFORE INSERT ON ledger_entries"
            f" WHEN NEW.kind = '{kind}' BEGIN"
            " SELECT RAISE(ABORT, 'injected fault between two writes'); END"
        ]
    )
    drop = (
        [
            "DROP TRIGGER troop_test_fault ON ledger_entries",
            "DROP FUNCTION troop_test_injected_fault()",
        ]
        if postgres
        else ["DROP TRIGGER troop_test_fault"]
    )

    async def run(statements: list[str]) -> None:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))

    await run(create)
    try:
        yield
    finally:
        await run(drop)


async def snapshot(coordinator: Coordinator, *clients: Any) -> tuple[object, ...]:
    report = await coordinator.ledger.audit()
    balances = [await c.get_balance() for c in clients]
    entries = [len((await c.list_transactions()).transactions) for c in clients]
    return report, balances, entries


async def test_a_fault_mid_reservation_reserves_nothing(
    coordinator: Coordinator, network: Network
) -> None:
    await network.node()
    user = network.user()
    await user.join()
    before = await snapshot(coordinator, user)

    # The debit and the job row are written; the RESERVE entry fails.
    async with fail_on_entry(coordinator, "reserve"):
        with pytest.raises(TroopError):
            await user.authorize(MODEL)

    assert await snapshot(coordinator, user) == before
    assert (await user.authorize(MODEL)).reserved_millicredits > 0  # and it recovers


async def test_a_fault_mid_settlement_settles_nothing_and_the_receipt_can_be_resent(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    owner = network.client(node.owner)
    job = await user.authorize(MODEL)
    await user.report_usage(job.job_id, completion_tokens=5, stream_ms=100)
    receipt = node.receipt(job, user, duration_ms=2000)
    before = await snapshot(coordinator, user, owner)

    # The node's claim is recorded, the job closed and the balances being credited; the
    # RELEASE entry fails: the claim and the owner's pay go too (one transaction).
    async with fail_on_entry(coordinator, "release"):
        with pytest.raises(TroopError):
            await node.client.submit_receipt(receipt)

    assert await snapshot(coordinator, user, owner) == before  # still open, nobody paid
    assert not (await user.get_job(job.job_id)).receipt_received  # the claim went too
    settled = await node.client.submit_receipt(receipt)  # the worker's retry
    assert settled.charged_millicredits > 0 and not settled.already_settled
    assert (await owner.get_balance()).balance_millicredits == settled.charged_millicredits
    assert (await coordinator.ledger.audit()).ok
