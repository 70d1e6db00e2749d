"""SubmitReceipt and expiry: settled exactly once, by the right node, credits conserved."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest

from troop_common.errors import InsufficientCredits, TroopError
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.app import Coordinator
from troop_coordinator.ledger import NewJob, Outcome
from troop_coordinator.ledger.service import compute_charge

if TYPE_CHECKING:
    from conftest import Launch, Network

MODEL = "smollm2-135m-instruct"


async def test_completed_job_pays_owner_and_releases_rest(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL)
    await asyncio.sleep(0.05)  # let the coordinator observe some running time

    settled = await user.submit_receipt(node.receipt(job.job_id, duration_ms=20))

    assert settled.kind == pb.SETTLEMENT_KIND_CHARGED
    assert settled.charged_millicredits == 20  # 20 ms at multiplier 1.0
    assert settled.charged_millicredits + settled.released_millicredits == 300_000
    assert not settled.already_settled
    owner = network.client(node.owner)
    assert (await owner.get_balance()).balance_millicredits == 20
    balance = await user.get_balance()
    assert balance.balance_millicredits == 3_600_000 - 20
    assert balance.reserved_millicredits == 0
    assert (await coordinator.ledger.audit()).ok


async def test_charge_is_capped_by_what_the_coordinator_observed(network: Network) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL)

    started = time.monotonic()
    settled = await user.submit_receipt(node.receipt(job.job_id, duration_ms=250_000))
    elapsed_ms = (time.monotonic() - started) * 1000 + 1000  # generous: job opened earlier

    assert settled.charged_millicredits < elapsed_ms
    assert settled.charged_millicredits < 250_000


def test_charge_formula() -> None:
    assert (
        compute_charge(reserved=300_000, duration_ms=2000, observed_ms=10_000, multiplier=1.5)
        == 3000
    )
    assert (
        compute_charge(reserved=300_000, duration_ms=2000, observed_ms=500, multiplier=2.0) == 1000
    )
    assert compute_charge(reserved=1000, duration_ms=9000, observed_ms=9000, multiplier=1.0) == 1000
    assert compute_charge(reserved=1000, duration_ms=0, observed_ms=-5, multiplier=1.0) == 0


async def test_second_receipt_changes_nothing(coordinator: Coordinator, network: Network) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL)
    first = await user.submit_receipt(node.receipt(job.job_id, duration_ms=5))
    balance = await user.get_balance()
    history = await user.list_transactions()

    again = await user.submit_receipt(node.receipt(job.job_id, duration_ms=90_000))
    failed = await user.submit_receipt(node.receipt(job.job_id, outcome=pb.JOB_OUTCOME_FAILED))

    for repeat in (again, failed):
        assert repeat.already_settled
        assert repeat.kind == first.kind
        assert repeat.charged_millicredits == first.charged_millicredits
        assert repeat.released_millicredits == first.released_millicredits
    assert await user.get_balance() == balance
    assert await user.list_transactions() == history
    assert (await coordinator.ledger.audit()).ok


async def test_concurrent_receipts_settle_once(coordinator: Coordinator, network: Network) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL)

    results = await asyncio.gather(
        *(user.submit_receipt(node.receipt(job.job_id, duration_ms=5)) for _ in range(8))
    )

    assert sum(not r.already_settled for r in results) == 1
    owner = network.client(node.owner)
    assert (await owner.get_balance()).balance_millicredits == results[0].charged_millicredits
    assert (await coordinator.ledger.audit()).ok


async def test_receipt_signed_by_another_key_is_unauthenticated(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL)
    history = await user.list_transactions()

    with pytest.raises(TroopError) as caught:
        await user.submit_receipt(node.receipt(job.job_id, signer=Identity.generate()))

    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert await user.list_transactions() == history
    assert (await user.get_balance()).reserved_millicredits == 300_000


async def test_receipt_from_a_node_the_ticket_did_not_name_is_denied(network: Network) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL)
    intruder = await network.node(models=["other-model"])

    with pytest.raises(TroopError) as caught:
        await user.submit_receipt(intruder.receipt(job.job_id))

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert (await user.get_balance()).reserved_millicredits == 300_000
    assert node.node_id != intruder.node_id


async def test_receipt_for_unknown_job_is_not_found(network: Network) -> None:
    node = await network.node()
    with pytest.raises(TroopError) as caught:
        await node.client.submit_receipt(node.receipt("no-such-job"))
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


async def test_failed_job_is_refunded(coordinator: Coordinator, network: Network) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL)

    settled = await user.submit_receipt(node.receipt(job.job_id, outcome=pb.JOB_OUTCOME_FAILED))

    assert settled.kind == pb.SETTLEMENT_KIND_REFUNDED
    assert settled.charged_millicredits == 0
    assert settled.released_millicredits == 300_000
    balance = await user.get_balance()
    assert (balance.balance_millicredits, balance.reserved_millicredits) == (3_600_000, 0)
    newest = (await user.list_transactions()).transactions[0]
    assert newest.kind == pb.TRANSACTION_KIND_REFUND and newest.job_id == job.job_id


async def test_credits_conserved_after_completed_failed_and_open_jobs(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    users = [network.user() for _ in range(3)]
    done = await users[0].authorize(MODEL)
    failed = await users[1].authorize(MODEL)
    await users[2].authorize(MODEL)  # left open
    await asyncio.sleep(0.02)
    await users[0].submit_receipt(node.receipt(done.job_id, duration_ms=15))
    await users[1].submit_receipt(node.receipt(failed.job_id, outcome=pb.JOB_OUTCOME_FAILED))

    balances = [await u.get_balance() for u in users]
    owner = await network.client(node.owner).get_balance()
    minted = 3 * 3_600_000
    held = sum(b.reserved_millicredits for b in balances)
    spendable = sum(b.balance_millicredits for b in balances) + owner.balance_millicredits
    assert minted == spendable + held
    assert held == 300_000
    report = await coordinator.ledger.audit()
    assert report.ok, report
    assert report.minted_millicredits == minted
    assert report.open_reservations_millicredits == held


async def test_settle_uses_node_multiplier(coordinator: Coordinator, network: Network) -> None:
    node = await network.node()
    await coordinator.nodes.set_multiplier(node.node_id, 1.5)
    user = network.user()
    job = await user.authorize(MODEL)
    later = datetime.now(UTC) + timedelta(seconds=10)

    settled = await coordinator.ledger.settle(
        job.job_id, node.node_id, Outcome.COMPLETED, 2000, later
    )

    assert settled.charged_millicredits == 3000
    assert (await network.client(node.owner).get_balance()).balance_millicredits == 3000
    assert (await coordinator.ledger.audit()).ok


async def test_expire_stale_returns_reservations_once(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL)
    future = datetime.now(UTC) + timedelta(seconds=301)

    first, second = await asyncio.gather(
        coordinator.ledger.expire_stale(future), coordinator.ledger.expire_stale(future)
    )

    assert [s.job_id for s in first + second] == [job.job_id]
    balance = await user.get_balance()
    assert (balance.balance_millicredits, balance.reserved_millicredits) == (3_600_000, 0)
    late = await user.submit_receipt(node.receipt(job.job_id))
    assert late.already_settled and late.kind == pb.SETTLEMENT_KIND_EXPIRED
    assert (await coordinator.ledger.audit()).ok


async def test_a_receipt_within_the_grace_period_still_settles(launch: Launch) -> None:
    coordinator, net = await launch(settle_grace_s=300)
    node = await net.node()
    user = net.user()
    job = await user.authorize(MODEL)
    after_ticket_expiry = datetime.now(UTC) + timedelta(seconds=301)

    assert await coordinator.ledger.expire_stale(after_ticket_expiry) == []
    settled = await user.submit_receipt(node.receipt(job.job_id))
    assert not settled.already_settled and settled.kind == pb.SETTLEMENT_KIND_CHARGED


async def test_sweeper_returns_expired_reservation(launch: Launch) -> None:
    _, net = await launch(ticket_ttl_s=1, sweep_interval_s=0.1)
    await net.node()
    user = net.user()
    await user.authorize(MODEL)

    deadline = time.monotonic() + 10
    while (await user.get_balance()).reserved_millicredits:
        assert time.monotonic() < deadline, "the sweeper never returned the reservation"
        await asyncio.sleep(0.1)

    assert (await user.get_balance()).balance_millicredits == 3_600_000


async def test_reserve_is_atomic_across_replicas(launch: Launch) -> None:
    # Two coordinators on one database, like replicas; 10 concurrent jobs, credit for 3.
    one, net_one = await launch(starter_credits=1000, reservation_credits=300)
    _, net_two = await launch(starter_credits=1000, reservation_credits=300)
    await net_one.node()
    await net_two.node(node_id="replica-two-node")
    identity = Identity.generate()
    clients = [net_one.client(identity), net_two.client(identity)]
    await one.ledger.ensure_user_with_grant(identity.public_key_hex, datetime.now(UTC))

    outcomes = await asyncio.gather(
        *(clients[i % 2].authorize(MODEL) for i in range(10)), return_exceptions=True
    )

    granted = [o for o in outcomes if isinstance(o, pb.AuthorizeResponse)]
    assert len(granted) == 3, outcomes
    assert all(isinstance(o, InsufficientCredits) for o in outcomes if o not in granted)
    balance = await clients[0].get_balance()
    assert balance.balance_millicredits == 100_000
    assert balance.reserved_millicredits == 900_000
    assert (await one.ledger.audit()).ok


async def test_reserve_writes_nothing_when_short(coordinator: Coordinator) -> None:
    now = datetime.now(UTC)
    key = Identity.generate().public_key_hex
    await coordinator.ledger.ensure_user_with_grant(key, now)
    job = NewJob("j1", key, "n", MODEL, 10**12, now, now + timedelta(seconds=60))
    with pytest.raises(TroopError):
        await coordinator.ledger.reserve(job)
    assert await coordinator.ledger.balance(key) == (3_600_000, 0)
    assert len((await coordinator.ledger.transactions(key)).entries) == 1
