"""Each SDK call against a real coordinator and worker returns its typed result, with the
values the ledger holds; and the errors it raises are importable from `troop_client`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import troop_client
from troop_client import (
    ChatOptions,
    Grant,
    Job,
    Joined,
    Message,
    Node,
    Page,
    Transaction,
    TroopClient,
)
from troop_common.keys import Identity

STARTER = 3_600_000
MODEL = "smollm2-135m-instruct"


def recent(when: datetime | None, since: datetime) -> bool:
    """An aware UTC datetime from this test's run (the clocks are the same machine's)."""
    return (
        when is not None
        and when.tzinfo is not None
        and since - timedelta(seconds=5) <= when <= datetime.now(UTC) + timedelta(seconds=5)
    )


async def no_open_reservation(troop: TroopClient, eventually) -> None:
    async def settled() -> bool:
        return (await troop.balance()).reserved_millicredits == 0

    await eventually(settled, timeout_s=20)


async def test_join_returns_the_account_it_made_then_says_it_already_exists(network) -> None:
    identity = Identity.generate()
    async with TroopClient(network.coordinator, identity) as troop:
        first = await troop.join()
        again = await troop.join()
    assert first == Joined(identity.public_key_hex, STARTER, STARTER, already_joined=False)
    assert again == Joined(identity.public_key_hex, 0, STARTER, already_joined=True)


async def test_nodes_lists_the_running_worker_as_a_node(network) -> None:
    began = datetime.now(UTC)
    async with TroopClient(network.coordinator, Identity.generate()) as troop:
        (node,) = await troop.nodes()
        assert await troop.nodes("no-such-model") == []
    assert isinstance(node, Node)
    assert (node.endpoint, node.models) == (network.worker, (MODEL,))
    assert len(node.node_public_key) == 64 and node.max_concurrent_jobs > 0
    assert node.active_jobs == 0 and node.multiplier > 0
    assert recent(node.last_seen, began - timedelta(seconds=60))


async def test_authorize_returns_a_grant_that_holds_its_reservation(network) -> None:
    began = datetime.now(UTC)
    async with TroopClient(network.coordinator, Identity.generate()) as troop:
        await troop.join()
        (offer,) = await troop.models()
        (node,) = await troop.nodes()
        grant = await troop.authorize(MODEL, max_tokens=16)
        balance = await troop.balance()
    assert isinstance(grant, Grant)
    assert (grant.node_id, grant.endpoint) == (node.node_id, node.endpoint)
    assert grant.node_public_key == node.node_public_key
    assert grant.max_tokens == 16 and grant.max_prompt_tokens > 0
    assert (grant.prompt_millicredits_per_1k, grant.completion_millicredits_per_1k) == (
        offer.prompt_millicredits_per_1k,
        offer.completion_millicredits_per_1k,
    )
    # The reservation is what the balance holds for it, out of the starter credits.
    assert grant.reserved_millicredits > 0
    assert (balance.balance_millicredits, balance.reserved_millicredits) == (
        STARTER - grant.reserved_millicredits,
        grant.reserved_millicredits,
    )
    # The ticket's expiry: an aware datetime, minutes ahead.
    assert began < grant.expires_at < datetime.now(UTC) + timedelta(hours=1)
    # The ticket is a bearer credential: a logged grant does not show it.
    assert grant.ticket and grant.ticket not in repr(grant)


async def test_history_after_a_paid_job_shows_its_reservation_and_charge(
    network, eventually
) -> None:
    began = datetime.now(UTC)
    async with TroopClient(network.coordinator, Identity.generate()) as troop:
        await troop.join()
        answer = await troop.complete(
            [Message("user", "pay me")], options=ChatOptions(max_tokens=8)
        )
        await no_open_reservation(troop, eventually)
        page = await troop.history()
        balance = await troop.balance()
        job = await troop.job(answer.job_id)

    assert isinstance(page, Page) and page.next_page_token == ""
    assert all(isinstance(t, Transaction) for t in page.items)
    assert [(t.kind, t.job_id) for t in page.items] == [  # newest first
        ("release", answer.job_id),
        ("reserve", answer.job_id),
        ("grant", None),
    ]
    release, reserve, grant = page.items
    assert grant.amount_millicredits == STARTER
    assert reserve.amount_millicredits < 0 < release.amount_millicredits
    # The job's entries add up to what left the balance: exactly its charge.
    spent = reserve.amount_millicredits + release.amount_millicredits
    assert STARTER + spent == balance.balance_millicredits == release.balance_after_millicredits
    assert isinstance(job, Job) and job.state == "charged"
    assert job.charged_millicredits == -spent > 0
    assert job.reserved_millicredits == -reserve.amount_millicredits
    assert all(recent(t.created_at, began) for t in page.items)
    assert recent(job.created_at, began) and recent(job.settled_at, began)


async def test_history_pages_with_the_next_page_token(network, eventually) -> None:
    async with TroopClient(network.coordinator, Identity.generate()) as troop:
        await troop.join()
        for question in ("one", "two"):
            await troop.complete([Message("user", question)], options=ChatOptions(max_tokens=4))
        await no_open_reservation(troop, eventually)
        whole = await troop.history(page_size=100)
        pages = [await troop.history(page_size=2)]
        while pages[-1].next_page_token:
            pages.append(await troop.history(page_size=2, page_token=pages[-1].next_page_token))

    assert len(whole.items) == 5  # a grant, and a reservation and a release per job
    assert [len(p.items) for p in pages] == [2, 2, 1]
    assert [t for p in pages for t in p.items] == list(whole.items)


async def test_a_refused_job_raises_the_error_troop_client_exports(start_mesh) -> None:
    # A default job reserves about 10 credits; this coordinator grants 5.
    async with (
        start_mesh(coordinator_overrides={"starter_credits": 5}) as mesh,
        TroopClient(mesh.coordinator, Identity.generate()) as troop,
    ):
        await troop.join()
        with pytest.raises(troop_client.InsufficientCredits) as caught:
            await troop.complete([Message("user", "too dear")])
        with pytest.raises(troop_client.NodeUnavailable):
            await troop.complete([Message("user", "hi")], model="no-such-model")
        balance = await troop.balance()
    assert caught.value.balance == 5_000 < caught.value.needed
    assert isinstance(caught.value, troop_client.TroopError)
    assert (balance.balance_millicredits, balance.reserved_millicredits) == (5_000, 0)


async def test_a_finished_answer_keeps_the_nodes_verified_output_evidence(network) -> None:
    from troop_client import VerifiedEvidence
    from troop_common.evidence import messages_sha256
    from troop_common.fake_model import echo_logprob, echo_words

    question = [Message("user", "prove it please")]
    async with TroopClient(network.coordinator, Identity.generate()) as troop:
        await troop.join()
        (node,) = await troop.nodes()
        chunks = [c async for c in troop.chat(question, options=ChatOptions(max_tokens=8))]
        answer = await troop.complete(question, options=ChatOptions(max_tokens=8))

    evidence = chunks[-1].evidence
    assert isinstance(evidence, VerifiedEvidence)
    assert all(c.evidence is None for c in chunks[:-1])
    assert (evidence.job_id, evidence.node_id) == (chunks[-1].job_id, node.node_id)
    assert (evidence.node_public_key, evidence.model) == (node.node_public_key, MODEL)
    assert evidence.messages_sha256 == messages_sha256([("user", "prove it please")])
    words = echo_words([("user", "prove it please")])
    assert [t.token for t in evidence.tokens] == [w.encode() for w in words]
    assert [round(t.logprob, 5) for t in evidence.tokens] == [
        round(echo_logprob(n, w), 5) for n, w in enumerate(words)
    ]
    assert b"".join(t.token for t in evidence.tokens).decode() == "".join(c.text for c in chunks)
    assert answer.evidence is not None and answer.evidence.job_id == answer.job_id
    assert answer.evidence.tokens == evidence.tokens
