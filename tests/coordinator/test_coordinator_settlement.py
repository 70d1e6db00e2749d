"""Settlement from both sides: charged for counted tokens at the catalog price, once.

The expected charges are computed here from the price the coordinator publishes
with each grant and the documented formula (docs/protocol.md), independently of
the coordinator's own code.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest

from troop_common.errors import InsufficientCredits, InvalidArgument, TroopError
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.app import Coordinator
from troop_coordinator.ledger import NewJob
from troop_coordinator.usage import UsageBook

if TYPE_CHECKING:
    from conftest import Launch, Network

MODEL = "smollm2-135m-instruct"
STARTER = 3_600_000


def expected_charge(grant: pb.AuthorizeResponse, prompt: int, completion: int) -> int:
    """The documented formula: tokens × price per 1k / 1000, rounded half up; the
    prompt is billed only when a completion token is."""
    if completion == 0:
        prompt = 0
    price = grant.price
    total = (
        prompt * price.prompt_millicredits_per_1k_tokens
        + completion * price.completion_millicredits_per_1k_tokens
    )
    return min(grant.reserved_millicredits, (total + 500) // 1000)


async def test_receipt_then_countersignature_charges_the_lower_count(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)

    pending = await user.submit_receipt(
        node.receipt(job, user, prompt_tokens=40, completion_tokens=30)
    )
    assert pending.kind == pb.SETTLEMENT_KIND_PENDING
    assert (await user.get_balance()).reserved_millicredits == job.reserved_millicredits

    report = await user.report_usage(job.job_id, completion_tokens=29, stream_ms=900)
    want = expected_charge(job, 40, 29)
    assert (report.kind, report.charged_millicredits) == (pb.SETTLEMENT_KIND_CHARGED, want)
    assert not report.disputed  # within the slack of 2 tokens
    assert (await network.client(node.owner).get_balance()).balance_millicredits == want
    balance = await user.get_balance()
    assert (balance.balance_millicredits, balance.reserved_millicredits) == (STARTER - want, 0)
    assert (await coordinator.ledger.audit()).ok


async def test_countersignature_first_settles_on_the_receipt(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    early = await user.report_usage(job.job_id, completion_tokens=12, stream_ms=500)
    assert early.kind == pb.SETTLEMENT_KIND_PENDING

    settled = await user.submit_receipt(
        node.receipt(job, user, prompt_tokens=33, completion_tokens=12)
    )

    assert settled.kind == pb.SETTLEMENT_KIND_CHARGED
    assert settled.charged_millicredits == expected_charge(job, 33, 12)
    assert settled.charged_millicredits + settled.released_millicredits == (
        job.reserved_millicredits
    )
    assert (await coordinator.ledger.audit()).ok


async def test_a_disagreement_is_a_dispute_on_node_and_user(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    await user.submit_receipt(node.receipt(job, user, prompt_tokens=20, completion_tokens=64))
    report = await user.report_usage(job.job_id, completion_tokens=3, stream_ms=100)

    assert report.disputed and report.charged_millicredits == expected_charge(job, 20, 3)
    book = UsageBook(coordinator.ledger.sessions)
    (on_node,) = await book.disputes_of(node.node_id)
    (on_user,) = await book.disputes_of_user(user.identity.public_key_hex)
    assert on_node["job_id"] == on_user["job_id"] == job.job_id
    assert (await book.reputation(node.node_id) or 1.0) < 1.0
    report_audit = await coordinator.ledger.audit()
    assert report_audit.ok
    assert report_audit.node_dispute_leaders == [(node.node_id, 1)]
    assert report_audit.user_dispute_leaders == [(user.identity.public_key_hex, 1)]


async def test_without_a_countersignature_the_receipt_settles_at_the_deadline(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    await user.submit_receipt(node.receipt(job, user, prompt_tokens=15, completion_tokens=9))

    assert await coordinator.ledger.settle_overdue(datetime.now(UTC)) == []
    later = datetime.now(UTC) + timedelta(seconds=coordinator.settings.countersign_s + 1)
    (settled,) = await coordinator.ledger.settle_overdue(later)

    assert settled.charged_millicredits == expected_charge(job, 15, 9)
    assert await coordinator.ledger.settle_overdue(later) == []
    late = await user.report_usage(job.job_id, completion_tokens=9, stream_ms=10)
    assert late.kind == pb.SETTLEMENT_KIND_CHARGED and not late.disputed
    assert (await coordinator.ledger.audit()).ok


async def test_nothing_delivered_costs_nothing_not_even_the_prompt(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    nothing = await user.report_usage(job.job_id, completion_tokens=0, stream_ms=40)
    # Nothing delivered: the reservation returns at once, not when the ticket expires.
    assert nothing.kind == pb.SETTLEMENT_KIND_REFUNDED
    assert await user.get_balance() == pb.GetBalanceResponse(
        public_key=user.identity.public_key_hex, balance_millicredits=STARTER
    )

    late = await user.submit_receipt(
        node.receipt(job, user, prompt_tokens=150, completion_tokens=1)
    )
    assert late.already_settled and late.charged_millicredits == 0
    inflated = network.user()
    job = await inflated.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    await inflated.report_usage(job.job_id, completion_tokens=0, stream_ms=40)
    await inflated.submit_receipt(node.receipt(job, inflated, completion_tokens=64))
    # The late claim moved nothing but is on record against both parties.
    assert (await inflated.get_balance()).balance_millicredits == STARTER
    book = UsageBook(coordinator.ledger.sessions)
    assert [d["job_id"] for d in await book.disputes_of(node.node_id)] == [job.job_id]
    assert (await coordinator.ledger.audit()).ok


async def test_reservations_are_sized_by_the_job(network: Network) -> None:
    await network.node()
    user = network.user()
    small = await user.authorize(MODEL, max_tokens=16, max_prompt_tokens=100)
    default = await user.authorize(MODEL)

    assert small.max_tokens == 16 and small.max_prompt_tokens == 100
    assert small.reserved_millicredits == expected_charge(small, 100, 16)
    assert default.max_tokens == 256
    assert default.max_prompt_tokens == default.price.max_prompt_tokens
    assert small.reserved_millicredits < default.reserved_millicredits
    assert (await user.get_balance()).reserved_millicredits == (
        small.reserved_millicredits + default.reserved_millicredits
    )


async def test_a_user_with_ten_credits_can_ask_a_small_question(launch: Launch) -> None:
    _, net = await launch(starter_credits=10)
    await net.node()
    user = net.user()
    grant = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=300)
    assert grant.reserved_millicredits <= 10_000
    with pytest.raises(InsufficientCredits) as caught:
        await user.authorize(MODEL, max_tokens=4096, max_prompt_tokens=8192)
    assert "max_tokens" in caught.value.message


async def test_a_max_tokens_beyond_the_models_is_invalid_and_reserves_nothing(
    network: Network,
) -> None:
    await network.node()
    user = network.user()
    with pytest.raises(InvalidArgument) as caught:
        await user.authorize(MODEL, max_tokens=2**31)
    assert "max_tokens" in str(caught.value)
    assert (await user.get_balance()).reserved_millicredits == 0
    # A prompt bound beyond the model's is the model's (a client's estimate from above).
    grant = await user.authorize(MODEL, max_prompt_tokens=10**9)
    assert grant.max_prompt_tokens == grant.price.max_prompt_tokens


@pytest.mark.parametrize(
    ("field", "claim"),
    [
        ("receipt.usage.completion_tokens", {"completion_tokens": 65}),
        ("receipt.usage.prompt_tokens", {"prompt_tokens": 201}),
        ("receipt.duration_ms", {"duration_ms": 2**64 - 1}),
    ],
)
async def test_a_receipt_beyond_the_tickets_bounds_is_invalid_and_records_nothing(
    coordinator: Coordinator, network: Network, field: str, claim: dict[str, int]
) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    before = await user.list_transactions()

    with pytest.raises(InvalidArgument) as caught:
        await user.submit_receipt(node.receipt(job, user, **claim))

    assert field in str(caught.value)
    assert await user.list_transactions() == before
    # Nothing was recorded: the honest receipt still counts.
    await user.report_usage(job.job_id, completion_tokens=5, stream_ms=10)
    settled = await user.submit_receipt(node.receipt(job, user))
    assert settled.charged_millicredits == expected_charge(job, 10, 5)
    assert (await coordinator.ledger.audit()).ok


async def test_a_receipt_without_the_users_presentation_is_denied(network: Network) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL)
    stranger = network.user()

    for receipt in (node.receipt(job), node.receipt(job, stranger)):
        with pytest.raises(TroopError) as caught:
            await user.submit_receipt(receipt)
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert (await user.get_balance()).reserved_millicredits == job.reserved_millicredits


async def test_second_receipt_changes_nothing(coordinator: Coordinator, network: Network) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL)
    await user.report_usage(job.job_id, completion_tokens=5, stream_ms=10)
    first = await user.submit_receipt(node.receipt(job, user))
    balance = await user.get_balance()
    history = await user.list_transactions()

    again = await user.submit_receipt(node.receipt(job, user, completion_tokens=200))
    failed = await user.submit_receipt(node.receipt(job, user, outcome=pb.JOB_OUTCOME_FAILED))

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
    await user.report_usage(job.job_id, completion_tokens=5, stream_ms=10)

    results = await asyncio.gather(
        *(user.submit_receipt(node.receipt(job, user)) for _ in range(8))
    )

    assert sum(not r.already_settled for r in results) == 1
    owner = network.client(node.owner)
    assert (await owner.get_balance()).balance_millicredits == expected_charge(job, 10, 5)
    assert (await coordinator.ledger.audit()).ok


async def test_receipt_signed_by_another_key_is_unauthenticated(network: Network) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL)
    history = await user.list_transactions()

    with pytest.raises(TroopError) as caught:
        await user.submit_receipt(node.receipt(job, user, signer=Identity.generate()))

    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert await user.list_transactions() == history
    assert (await user.get_balance()).reserved_millicredits == job.reserved_millicredits


async def test_receipt_from_a_node_the_ticket_did_not_name_is_denied(network: Network) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL)
    intruder = await network.node(models=["other-model"])

    with pytest.raises(TroopError) as caught:
        await user.submit_receipt(intruder.receipt(job, user))

    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert (await user.get_balance()).reserved_millicredits == job.reserved_millicredits
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

    settled = await user.submit_receipt(node.receipt(job, user, outcome=pb.JOB_OUTCOME_FAILED))

    assert settled.kind == pb.SETTLEMENT_KIND_REFUNDED
    assert settled.charged_millicredits == 0
    assert settled.released_millicredits == job.reserved_millicredits
    balance = await user.get_balance()
    assert (balance.balance_millicredits, balance.reserved_millicredits) == (STARTER, 0)
    newest = (await user.list_transactions()).transactions[0]
    assert newest.kind == pb.TRANSACTION_KIND_REFUND and newest.job_id == job.job_id


async def test_credits_conserved_after_completed_failed_and_open_jobs(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    users = [network.user() for _ in range(3)]
    done = await users[0].authorize(MODEL)
    failed = await users[1].authorize(MODEL)
    still_open = await users[2].authorize(MODEL)
    await users[0].report_usage(done.job_id, completion_tokens=5, stream_ms=10)
    await users[0].submit_receipt(node.receipt(done, users[0]))
    await users[1].submit_receipt(node.receipt(failed, users[1], outcome=pb.JOB_OUTCOME_FAILED))

    balances = [await u.get_balance() for u in users]
    owner = await network.client(node.owner).get_balance()
    minted = 3 * STARTER
    held = sum(b.reserved_millicredits for b in balances)
    spendable = sum(b.balance_millicredits for b in balances) + owner.balance_millicredits
    assert minted == spendable + held
    assert held == still_open.reserved_millicredits
    report = await coordinator.ledger.audit()
    assert report.ok, report
    assert report.minted_millicredits == minted
    assert report.open_reservations_millicredits == held


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
    assert (balance.balance_millicredits, balance.reserved_millicredits) == (STARTER, 0)
    late = await user.submit_receipt(node.receipt(job, user))
    assert late.already_settled and late.kind == pb.SETTLEMENT_KIND_EXPIRED
    assert (await coordinator.ledger.audit()).ok


async def test_a_receipt_within_the_grace_period_still_settles(launch: Launch) -> None:
    coordinator, net = await launch(settle_grace_s=300)
    node = await net.node()
    user = net.user()
    job = await user.authorize(MODEL)
    after_ticket_expiry = datetime.now(UTC) + timedelta(seconds=301)

    assert await coordinator.ledger.expire_stale(after_ticket_expiry) == []
    await user.report_usage(job.job_id, completion_tokens=5, stream_ms=10)
    settled = await user.submit_receipt(node.receipt(job, user))
    assert not settled.already_settled and settled.kind == pb.SETTLEMENT_KIND_CHARGED


async def test_sweeper_returns_expired_reservation(launch: Launch, eventually) -> None:
    _, net = await launch(ticket_ttl_s=1, sweep_interval_s=0.1)
    await net.node()
    user = net.user()
    await user.authorize(MODEL)

    async def returned() -> bool:
        return not (await user.get_balance()).reserved_millicredits

    await eventually(returned)  # by the sweeper: nobody else touches the job
    assert (await user.get_balance()).balance_millicredits == STARTER


async def test_reserve_is_atomic_across_replicas(launch: Launch) -> None:
    # Two coordinators on one database, like replicas; 10 concurrent jobs, credit for 3.
    one, net_one = await launch(starter_credits=200)
    _, net_two = await launch(starter_credits=200)
    await net_one.node()
    await net_two.node(node_id="replica-two-node")
    identity = Identity.generate()
    clients = [net_one.client(identity), net_two.client(identity)]
    await one.ledger.ensure_user_with_grant(identity.public_key_hex, datetime.now(UTC))
    probe = await clients[0].authorize(MODEL)  # what one such job reserves
    one_job = probe.reserved_millicredits
    await one.ledger.expire_stale(datetime.now(UTC) + timedelta(days=1))
    fits = 200_000 // one_job

    outcomes = await asyncio.gather(
        *(clients[i % 2].authorize(MODEL) for i in range(fits + 4)), return_exceptions=True
    )

    granted = [o for o in outcomes if isinstance(o, pb.AuthorizeResponse)]
    assert len(granted) == fits, outcomes
    assert all(isinstance(o, InsufficientCredits) for o in outcomes if o not in granted)
    balance = await clients[0].get_balance()
    assert balance.balance_millicredits == 200_000 - fits * one_job
    assert balance.reserved_millicredits == fits * one_job
    assert (await one.ledger.audit()).ok


async def test_reserve_writes_nothing_when_short(coordinator: Coordinator) -> None:
    now = datetime.now(UTC)
    key = Identity.generate().public_key_hex
    await coordinator.ledger.ensure_user_with_grant(key, now)
    job = NewJob("j1", key, "n", MODEL, 10**12, now, now + timedelta(seconds=60), 10, 10, 1, 1)
    with pytest.raises(TroopError):
        await coordinator.ledger.reserve(job)
    assert await coordinator.ledger.balance(key) == (STARTER, 0)
    assert len((await coordinator.ledger.transactions(key)).entries) == 1


async def test_a_node_far_below_its_proof_loses_it(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    await coordinator.nodes.set_multiplier(node.node_id, 4.0)  # proved 4× the reference
    user = network.user()

    async def job(stream_ms: int) -> None:
        grant = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
        await user.report_usage(grant.job_id, completion_tokens=20, stream_ms=stream_ms)
        await user.submit_receipt(node.receipt(grant, user, completion_tokens=20))

    async def multiplier() -> float:
        return (await node.heartbeat()).multiplier

    # The reference machine decodes this model at ~24.7 tokens/s: 20 tokens in 10 s is
    # far below even half of it, let alone 4×.
    for _ in range(4):
        await job(stream_ms=10_000)
    await job(stream_ms=400)  # one fast job: the count starts again
    for _ in range(4):
        await job(stream_ms=10_000)
    assert await multiplier() == 4.0
    await job(stream_ms=10_000)  # the fifth in a row
    assert await multiplier() == 1.0


async def test_a_receipt_waiting_for_its_countersignature_never_expires_unpaid(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    await user.submit_receipt(node.receipt(job, user, prompt_tokens=12, completion_tokens=7))

    (swept,) = await coordinator.ledger.expire_stale(datetime.now(UTC) + timedelta(days=1))

    assert swept.status.value == "charged"
    assert swept.charged_millicredits == expected_charge(job, 12, 7)
    assert (await network.client(node.owner).get_balance()).balance_millicredits == (
        swept.charged_millicredits
    )


async def test_get_job_says_where_a_job_stands_to_its_user_only(network: Network) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    assert (await user.get_job(job.job_id)).state == pb.JOB_STATE_OPEN
    await user.submit_receipt(node.receipt(job, user, prompt_tokens=20, completion_tokens=9))
    pending = await user.get_job(job.job_id)
    assert pending.state == pb.JOB_STATE_PENDING and pending.receipt_received
    assert not pending.countersigned and not pending.HasField("settled_at")
    assert not pending.HasField("charged_usage")
    await user.report_usage(job.job_id, completion_tokens=7, stream_ms=100)

    settled = await user.get_job(job.job_id)
    assert settled.state == pb.JOB_STATE_CHARGED and settled.HasField("settled_at")
    # Charged for the node's prompt count and the lower completion count (the client's 7).
    usage = settled.charged_usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (20, 7, 27)
    assert settled.charged_millicredits == expected_charge(job, 20, 7)
    assert (settled.reserved_millicredits, settled.max_tokens) == (job.reserved_millicredits, 64)
    assert settled.completion_millicredits_per_1k_tokens == (
        job.price.completion_millicredits_per_1k_tokens
    )
    for who, job_id, code in (
        (network.user(), job.job_id, grpc.StatusCode.PERMISSION_DENIED),
        (user, "f" * 32, grpc.StatusCode.NOT_FOUND),
        (user, "../x", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(TroopError) as caught:
            await who.get_job(job_id)
        assert caught.value.code == code
