"""Ticket checks on a real worker: every bad ticket is UNAUTHENTICATED before any token."""

from __future__ import annotations

import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from worker_testing import bearer, chat, collect

from troop_common.tickets import TICKET_ALGORITHM, TICKET_ISSUER, TicketSigner


async def assert_unauthenticated(inference, token: str | None, request=None) -> None:
    received = []
    call = inference.ChatCompletion(request or chat(), metadata=bearer(token) if token else None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in call:
            received.append(chunk)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value.details()
    assert received == []


@pytest.fixture
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def test_a_valid_ticket_streams(inference, issue) -> None:
    chunks = await collect(inference, chat("hello there"), issue())
    assert "".join(c.delta for c in chunks) == "You said: hello there"


async def test_missing_ticket(inference) -> None:
    await assert_unauthenticated(inference, None)


async def test_malformed_authorization(inference) -> None:
    call = inference.ChatCompletion(chat(), metadata=[("authorization", "Basic abc")])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [c async for c in call]
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await assert_unauthenticated(inference, "not-a-jwt")


async def test_forged_by_an_unknown_key(inference, issue, other_key) -> None:
    await assert_unauthenticated(inference, issue(signer_=TicketSigner(other_key)))


async def test_forged_under_the_real_kid(inference, issue, other_key, ticket_signer) -> None:
    forger = TicketSigner(other_key)
    forger.kid = ticket_signer.kid  # claims to be the coordinator's key
    await assert_unauthenticated(inference, issue(signer_=forger))


async def test_expired(inference, issue) -> None:
    await assert_unauthenticated(inference, issue(now=time.time() - 3600))


async def test_wrong_audience(inference, worker, ticket_key, ticket_signer) -> None:
    now = int(time.time())
    claims = {
        "iss": TICKET_ISSUER,
        "aud": "troop-coordinator",
        "sub": "00" * 32,
        "jti": "job-aud",
        "node": worker.node_id,
        "model": "smollm2-135m-instruct",
        "iat": now,
        "exp": now + 300,
    }
    token = jwt.encode(
        claims, ticket_key, algorithm=TICKET_ALGORITHM, headers={"kid": ticket_signer.kid}
    )
    await assert_unauthenticated(inference, token)


async def test_other_node(inference, issue) -> None:
    await assert_unauthenticated(inference, issue(node_id="node-someone-else"))


async def test_other_model(inference, issue) -> None:
    await assert_unauthenticated(inference, issue(model="gpt-5"))


async def test_reused_ticket(inference, issue, recording_coordinator) -> None:
    token = issue()
    assert await collect(inference, chat(), token)
    await assert_unauthenticated(inference, token)
    # The replayed call did no work: only the first job is settled.
    await recording_coordinator.wait_for(lambda c: len(c.receipts) >= 1)
    assert len(recording_coordinator.receipts) == 1


async def test_key_rotation_refreshes_once(
    inference, issue, recording_coordinator, other_key
) -> None:
    assert recording_coordinator.key_set_calls == 1  # fetched at start
    rotated = TicketSigner(other_key)
    recording_coordinator.signers.append(rotated)
    chunks = await collect(inference, chat("rotated"), issue(signer_=rotated))
    assert "".join(c.delta for c in chunks) == "You said: rotated"
    assert recording_coordinator.key_set_calls == 2
    # Another unknown kid right after: no second refresh (rate-limited), just refused.
    stranger = TicketSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    await assert_unauthenticated(inference, issue(signer_=stranger))
    assert recording_coordinator.key_set_calls == 2


# The user's presentation and the ticket's bounds ------------------------------------


async def test_without_the_users_presentation_nothing_runs_and_the_ticket_stays(
    inference, issue
) -> None:
    token = issue()
    with_nonce_only = bearer(token)[:2]  # the ticket and a nonce, no presentation
    await assert_unauthenticated_metadata(inference, with_nonce_only)
    # Another key's presentation of the same job is no presentation either.
    forged = bearer(issue(job_id="job-forged"))
    stranger = bearer(issue(job_id="job-forged"))  # a new user signs the same job id
    await assert_unauthenticated_metadata(inference, [forged[0], *stranger[1:]])
    # Refused before the ticket was spent: presented properly, it runs.
    assert await collect(inference, chat("hello there"), token)


async def test_the_receipt_carries_the_presentation(
    inference, issue, recording_coordinator
) -> None:
    chunks = await collect(inference, chat("hello there"), issue(job_id="job-presented"))
    await recording_coordinator.wait_for(lambda c: c.receipt_for("job-presented") is not None)
    receipt = recording_coordinator.receipt_for("job-presented").receipt
    assert len(receipt.presentation) == 64 and receipt.client_nonce
    assert receipt.usage.completion_tokens == chunks[-1].usage.completion_tokens


async def test_more_tokens_than_the_ticket_allows_is_invalid(inference, issue) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(inference, chat("hello", max_tokens=9), issue(max_tokens=8))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_tokens" in (caught.value.details() or "")
    # Without max_tokens the ticket's bound is the cap.
    chunks = await collect(inference, chat("one two three four five six"), issue(max_tokens=3))
    assert chunks[-1].usage.completion_tokens == 3


async def test_a_prompt_longer_than_the_ticket_allows_is_refused_before_any_token(
    inference, issue
) -> None:
    received = []
    call = inference.ChatCompletion(chat("word " * 50), metadata=bearer(issue(max_prompt_tokens=8)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in call:
            received.append(chunk)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt tokens" in (caught.value.details() or "") and received == []


async def assert_unauthenticated_metadata(inference, metadata) -> None:
    call = inference.ChatCompletion(chat(), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [c async for c in call]
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "x-troop-" in (caught.value.details() or "")


@pytest.mark.parametrize("nonce", [None, "short", "ABCDEF" * 8, "z" * 40])
async def test_a_bad_nonce_is_invalid_before_any_token_and_the_ticket_still_works(
    inference, issue, nonce
) -> None:
    token = issue()
    metadata = [m for m in bearer(token) if m[0] != "x-troop-client-nonce"]
    if nonce is not None:
        metadata.append(("x-troop-client-nonce", nonce))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in inference.ChatCompletion(chat(), metadata=metadata):
            received.append(chunk)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-troop-client-nonce" in (caught.value.details() or "") and received == []
    assert await collect(inference, chat("hello there"), token)  # not spent
