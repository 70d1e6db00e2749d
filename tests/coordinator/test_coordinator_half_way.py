"""A fault half-way through a ledger transaction leaves the ledger as it was.

The fault is INJECTED (a repository write patched to raise after others in the same
transaction succeeded): nothing real fails on demand between two SQL statements. The
servers, the database (both backends) and the clients are real.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from troop_common.errors import TroopError
from troop_coordinator.app import Coordinator
from troop_coordinator.ledger.repository import LedgerRepository

if TYPE_CHECKING:
    from conftest import Network

MODEL = "smollm2-135m-instruct"


def fail_on_append_number(monkeypatch: pytest.MonkeyPatch, n: int) -> list[int]:
    """Make the n-th ledger entry written from now on raise, mid-transaction."""
    calls: list[int] = []
    real = LedgerRepository.append

    async def append(self: LedgerRepository, **entry: Any) -> None:
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError("injected fault between two writes")
        await real(self, **entry)

    monkeypatch.setattr(LedgerRepository, "append", append)
    return calls


async def snapshot(coordinator: Coordinator, *clients: Any) -> tuple[object, ...]:
    report = await coordinator.ledger.audit()
    balances = [await c.get_balance() for c in clients]
    entries = [len((await c.list_transactions()).transactions) for c in clients]
    return report, balances, entries


async def test_a_fault_mid_reservation_reserves_nothing(
    coordinator: Coordinator, network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    await network.node()
    user = network.user()
    await user.join()
    before = await snapshot(coordinator, user)

    # The debit and the job row are written; the RESERVE entry fails.
    fail_on_append_number(monkeypatch, 1)
    with pytest.raises(TroopError):
        await user.authorize(MODEL)
    monkeypatch.undo()

    assert await snapshot(coordinator, user) == before
    assert (await user.authorize(MODEL)).reserved_millicredits > 0  # and it recovers


async def test_a_fault_mid_settlement_settles_nothing_and_the_receipt_can_be_resent(
    coordinator: Coordinator, network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = await network.node()
    user = network.user()
    owner = network.client(node.owner)
    job = await user.authorize(MODEL)
    await user.report_usage(job.job_id, completion_tokens=5, stream_ms=100)
    receipt = node.receipt(job, user, duration_ms=2000)
    before = await snapshot(coordinator, user, owner)

    # The node's claim is recorded, the job closed and the owner credited; the second
    # entry (the release) fails: the claim goes too (one transaction).
    fail_on_append_number(monkeypatch, 2)
    with pytest.raises(TroopError):
        await node.client.submit_receipt(receipt)
    monkeypatch.undo()

    assert await snapshot(coordinator, user, owner) == before  # still open, nobody paid
    assert (await coordinator.ledger.settle_overdue(datetime.now(UTC) + timedelta(days=1))) == []
    settled = await node.client.submit_receipt(receipt)  # the worker's retry
    assert settled.charged_millicredits > 0 and not settled.already_settled
    assert (await owner.get_balance()).balance_millicredits == settled.charged_millicredits
    assert (await coordinator.ledger.audit()).ok
