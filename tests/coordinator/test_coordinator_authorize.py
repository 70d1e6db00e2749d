"""Authorize: starter grant, node choice, atomic reservation, tickets that verify."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc
import pytest

from troop_common.errors import (
    InsufficientCredits,
    InvalidArgument,
    NodeUnavailable,
    RateLimited,
    TroopError,
)
from troop_common.proto import coordinator_pb2 as pb
from troop_common.tickets import public_key_from_jwk, verify_ticket
from troop_coordinator.app import Coordinator

if TYPE_CHECKING:
    from conftest import Launch, Network

MODEL = "smollm2-135m-instruct"


async def test_first_authorize_grants_starter_credits_once(
    coordinator: Coordinator, network: Network
) -> None:
    await network.node()
    user = network.user()
    first = await user.authorize(MODEL)
    second = await user.authorize(MODEL)

    balance = await user.get_balance()
    held = first.reserved_millicredits + second.reserved_millicredits
    assert first.reserved_millicredits > 0
    assert balance.balance_millicredits == 3_600_000 - held
    assert balance.reserved_millicredits == held
    kinds = [t.kind for t in (await user.list_transactions()).transactions]
    assert kinds.count(1) == 1  # one GRANT
    assert (await coordinator.ledger.audit()).ok
    assert second.job_id != first.job_id


async def test_ticket_verifies_with_published_key_set(network: Network) -> None:
    node = await network.node()
    user = network.user()
    granted = await user.authorize(MODEL)

    key_set = await user.get_key_set()
    keys = {k.kid: public_key_from_jwk({"n": k.n, "e": k.e}) for k in key_set.keys}
    ticket = verify_ticket(granted.ticket, keys, node_id=node.node_id, now=time.time())

    assert ticket.job_id == granted.job_id
    assert ticket.model == MODEL
    assert (ticket.max_tokens, ticket.max_prompt_tokens) == (
        granted.max_tokens,
        granted.max_prompt_tokens,
    )
    assert ticket.user == user.identity.public_key_hex
    assert granted.node_id == node.node_id
    assert granted.node_public_key == node.identity.public_key_hex
    assert granted.endpoint == "127.0.0.1:50099"
    assert abs(granted.expires_at.seconds - ticket.expires_at) <= 1
    public = await user.get_public_key()
    assert public.kid in keys and public.algorithm == "RS256"


async def test_insufficient_credits_reserves_nothing(launch: Launch) -> None:
    coordinator, net = await launch(starter_credits=50)
    await net.node()
    user = net.user()
    await user.authorize(MODEL)
    before = await user.get_balance()
    history = await user.list_transactions()

    with pytest.raises(InsufficientCredits) as caught:
        await user.authorize(MODEL)

    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    # Rebuilt from the status's ErrorInfo with its fields, and a message that adds up.
    assert caught.value.balance == before.balance_millicredits
    assert caught.value.needed > caught.value.balance
    assert f"the balance is {before.balance_millicredits / 1000:.3f}" in str(caught.value)
    assert await user.get_balance() == before
    assert await user.list_transactions() == history
    assert (await coordinator.ledger.audit()).ok


async def test_unserved_model_is_unavailable_and_reserves_nothing(
    coordinator: Coordinator, network: Network
) -> None:
    await network.node(models=["other-model"])
    user = network.user()

    with pytest.raises(TroopError) as caught:
        await user.authorize(MODEL)

    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert type(caught.value) is NodeUnavailable  # an answer, not an outage
    assert not caught.value.transient
    assert MODEL in caught.value.message
    balance = await user.get_balance()
    assert balance.reserved_millicredits == 0
    assert balance.balance_millicredits == 3_600_000  # the grant, nothing held
    assert len((await user.list_transactions()).transactions) == 1


async def test_least_loaded_node_is_picked(network: Network) -> None:
    await network.node(node_id="busy", active_jobs=4, max_concurrent_jobs=4)
    idle = await network.node(node_id="idle", active_jobs=0, max_concurrent_jobs=4)
    user = network.user()
    picks = {(await user.authorize(MODEL)).node_id for _ in range(3)}
    assert picks == {idle.node_id}


async def test_nodes_the_client_could_not_reach_are_skipped(network: Network) -> None:
    await network.node(node_id="idle", active_jobs=0, max_concurrent_jobs=4)
    await network.node(node_id="busy", active_jobs=3, max_concurrent_jobs=4)
    user = network.user()
    picks = {(await user.authorize(MODEL, exclude_node_ids=["idle"])).node_id for _ in range(3)}
    assert picks == {"busy"}  # the better-ranked node was excluded

    held = (await user.get_balance()).reserved_millicredits
    with pytest.raises(TroopError) as caught:
        await user.authorize(MODEL, exclude_node_ids=["idle", "busy"])
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "other than those excluded" in caught.value.message
    assert (await user.get_balance()).reserved_millicredits == held  # nothing more reserved

    with pytest.raises(InvalidArgument) as refused:
        await user.authorize(MODEL, exclude_node_ids=["x"] * 9)
    assert [v.field for v in refused.value.violations] == ["exclude_node_ids"]


async def test_concurrent_authorizes_cannot_race_past_the_open_job_cap(launch: Launch) -> None:
    """Three times the cap at once from one user: exactly `cap` are reserved, the rest are
    refused as over the cap, and only those `cap` jobs' credits are held."""
    cap = 4
    _, net = await launch(max_open_jobs_per_user=cap)
    await net.node(active_jobs=0, max_concurrent_jobs=64)
    user = net.user()
    await user.join()

    async def attempt() -> pb.AuthorizeResponse | TroopError:
        try:
            return await user.authorize(MODEL, max_tokens=8, max_prompt_tokens=16)
        except TroopError as exc:
            return exc

    results = await asyncio.gather(*(attempt() for _ in range(3 * cap)))

    granted = [r for r in results if isinstance(r, pb.AuthorizeResponse)]
    refused = [r for r in results if not isinstance(r, pb.AuthorizeResponse)]
    assert len(granted) == cap, [str(r) for r in refused]
    assert len(refused) == 2 * cap
    for error in refused:
        assert type(error) is RateLimited, error
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"too many open jobs: {cap} of at most {cap} per user" in error.message
        assert "TROOP_MAX_OPEN_JOBS_PER_USER" in error.message
        assert error.retry_after_seconds >= 1
    held = sum(r.reserved_millicredits for r in granted)
    assert held == cap * granted[0].reserved_millicredits
    balance = await user.get_balance()
    assert (balance.balance_millicredits, balance.reserved_millicredits) == (3_600_000 - held, held)
