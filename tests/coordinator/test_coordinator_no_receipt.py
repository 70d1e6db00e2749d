"""A job whose node never sends its receipt (killed mid-stream) settles on what its client
countersigned: the owner is paid exactly those completion tokens at the job's price, the
user is charged exactly that, and the rest returns (docs/adr/0048). Each test runs on
SQLite and on PostgreSQL (the `settings` fixture)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from tests.coordinator.test_coordinator_settlement import STARTER, expected_charge
from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator.app import Coordinator
from troop_coordinator.usage import UsageBook

if TYPE_CHECKING:
    from conftest import Launch, Network

MODEL = "smollm2-135m-instruct"


async def test_a_node_that_never_sends_its_receipt_is_paid_what_its_client_vouched(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    owner = network.client(node.owner)
    job = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    vouched = await user.report_usage(job.job_id, completion_tokens=9, stream_ms=700)
    assert vouched.kind == pb.SETTLEMENT_KIND_PENDING  # the node still has its say

    # Not before the countersign deadline: a live node's receipt would still come.
    assert await coordinator.ledger.settle_overdue(datetime.now(UTC)) == []
    later = datetime.now(UTC) + timedelta(seconds=coordinator.settings.countersign_s + 1)
    (settled,) = await coordinator.ledger.settle_overdue(later)

    charge = expected_charge(job, 0, 9)  # no prompt tokens: only the node could count them
    assert charge > 0
    assert (settled.status.value, settled.charged_millicredits) == ("charged", charge)
    assert settled.released_millicredits == job.reserved_millicredits - charge
    assert (await owner.get_balance()).balance_millicredits == charge
    balance = await user.get_balance()
    assert (balance.balance_millicredits, balance.reserved_millicredits) == (STARTER - charge, 0)
    seen = await user.get_job(job.job_id)
    assert seen.state == pb.JOB_STATE_CHARGED and not seen.receipt_received
    assert seen.countersigned and seen.charged_millicredits == charge
    # The charge is for the client's count alone: no prompt tokens, 9 completion tokens.
    assert (seen.charged_usage.prompt_tokens, seen.charged_usage.completion_tokens) == (0, 9)
    # It gains nothing for it: marked down as for a failed job.
    assert (await UsageBook(coordinator.ledger.sessions).reputation(node.node_id) or 1.0) < 1.0
    assert await coordinator.ledger.settle_overdue(later) == []
    assert await coordinator.ledger.expire_stale(later + timedelta(days=1)) == []
    assert (await coordinator.ledger.audit()).ok


async def test_a_receipt_after_it_settled_is_compared_and_moves_nothing(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    user = network.user()
    job = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    await user.report_usage(job.job_id, completion_tokens=9, stream_ms=700)
    later = datetime.now(UTC) + timedelta(seconds=coordinator.settings.countersign_s + 1)
    await coordinator.ledger.settle_overdue(later)
    charge = expected_charge(job, 0, 9)

    late = await user.submit_receipt(
        node.receipt(job, user, prompt_tokens=150, completion_tokens=40)
    )

    assert late.already_settled and late.kind == pb.SETTLEMENT_KIND_CHARGED
    assert late.charged_millicredits == charge  # the charge stands
    assert (await network.client(node.owner).get_balance()).balance_millicredits == charge
    assert (await user.get_balance()).balance_millicredits == STARTER - charge
    # 40 against 9: a dispute, on record against both.
    book = UsageBook(coordinator.ledger.sessions)
    assert [d["job_id"] for d in await book.disputes_of(node.node_id)] == [job.job_id]
    assert (await user.get_job(job.job_id)).receipt_received
    assert (await coordinator.ledger.audit()).ok


async def test_a_countersignature_still_open_at_expiry_settles_on_it(launch: Launch) -> None:
    # A report that came late in the ticket's life: the expiry sweep settles it on the
    # client's count too, rather than returning the reservation for nothing.
    coordinator, net = await launch(countersign_s=3600.0)
    node = await net.node()
    user = net.user()
    job = await user.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    await user.report_usage(job.job_id, completion_tokens=5, stream_ms=300)

    after_expiry = datetime.now(UTC) + timedelta(seconds=coordinator.settings.ticket_ttl_s + 1)
    (swept,) = await coordinator.ledger.expire_stale(after_expiry)

    assert (swept.status.value, swept.charged_millicredits) == (
        "charged",
        expected_charge(job, 0, 5),
    )
    owner = await net.client(node.owner).get_balance()
    assert owner.balance_millicredits == swept.charged_millicredits
    assert (await coordinator.ledger.audit()).ok


async def test_with_nothing_vouched_the_reservation_returns_whole(
    coordinator: Coordinator, network: Network
) -> None:
    node = await network.node()
    silent, empty = network.user(), network.user()
    unreported = await silent.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    nothing = await empty.authorize(MODEL, max_tokens=64, max_prompt_tokens=200)
    assert (await empty.report_usage(nothing.job_id, 0, 50)).kind == pb.SETTLEMENT_KIND_REFUNDED

    future = datetime.now(UTC) + timedelta(days=1)
    assert await coordinator.ledger.settle_overdue(future) == []
    (expired,) = await coordinator.ledger.expire_stale(future)

    assert expired.job_id == unreported.job_id and expired.status.value == "expired"
    for user in (silent, empty):
        balance = await user.get_balance()
        assert (balance.balance_millicredits, balance.reserved_millicredits) == (STARTER, 0)
    assert (await network.client(node.owner).get_balance()).balance_millicredits == 0
    assert (await coordinator.ledger.audit()).ok
