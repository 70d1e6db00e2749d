"""Attacks on credits, tickets, receipts and node identity, through the real servers.

Each attack is refused (UNAUTHENTICATED or PERMISSION_DENIED) and leaves every
balance, the ledger's entries and its audit exactly as they were. Runs on SQLite
and PostgreSQL (the `database_url` fixture behind `mesh`).
"""

from __future__ import annotations

import base64
import json
import secrets
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import signed_receipt, ticket_metadata
from troop_common.assertions import COORDINATOR_AUDIENCE, create_assertion
from troop_common.errors import TroopError
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_common.receipts import sign_receipt
from troop_common.tickets import TICKET_ALGORITHM, ticket_kid

MODEL = "smollm2-135m-instruct"
DENIED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


async def refused(call, code: grpc.StatusCode | tuple[grpc.StatusCode, ...] = DENIED) -> None:
    codes = code if isinstance(code, tuple) else (code,)
    try:
        result = call()
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pytest.fail("the attack got a message through")
        else:
            await result
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in codes, exc
    except TroopError as exc:
        assert exc.code in codes, exc
    else:
        pytest.fail("the attack was not refused")


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def receipts_queued(mesh) -> int:
    """Receipts the mesh's workers have queued since they started: a job queues its
    receipt before its stream ends, so a refusal that queued none can bill nothing later."""
    return sum(worker.receipts.submitted for worker in mesh.workers)


async def joined(mesh):
    user = mesh.user()
    await user.join()
    return user


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def altered(ticket: str, **claims: object) -> str:
    """The ticket with some claims changed and the original signature kept."""
    header, payload, signature = ticket.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(claims)
    return ".".join([header, _b64(json.dumps(body).encode()), signature])


# Users: credits are read and spent only with the owner's key -------------------------


async def test_reading_another_users_balance_or_history_is_denied(mesh) -> None:
    alice, mallory = await joined(mesh), await joined(mesh)
    before = await mesh.ledger_state()
    await refused(lambda: mallory.get_balance(alice.identity.public_key_hex))
    await refused(lambda: mallory.list_transactions(alice.identity.public_key_hex))
    assert await mesh.ledger_state() == before


async def test_spending_another_users_credits_needs_their_key(mesh) -> None:
    alice = await joined(mesh)
    mallory = Identity.generate()
    stub = mesh.coordinator_stub()
    before = await mesh.ledger_state()
    request = pb.AuthorizeRequest(model=MODEL)
    # No assertion; an assertion naming alice but signed by mallory; alice's key, wrong audience.
    now = int(time.time())
    claims = {
        "sub": alice.identity.public_key_hex,
        "aud": COORDINATOR_AUDIENCE,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
    }
    forged = jwt.encode(claims, mallory.private_key, algorithm="EdDSA")
    wrong_audience = create_assertion(alice.identity, audience="troop-worker")
    await refused(lambda: stub.Authorize(request), grpc.StatusCode.UNAUTHENTICATED)
    for token in (forged, wrong_audience):
        await refused(
            lambda t=token: stub.Authorize(request, metadata=bearer(t)),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    await refused(
        lambda: stub.GetBalance(
            pb.GetBalanceRequest(public_key=alice.identity.public_key_hex),
            metadata=bearer(forged),
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert await mesh.ledger_state() == before


async def test_a_replayed_user_assertion_is_refused(mesh) -> None:
    alice = await joined(mesh)
    stub = mesh.coordinator_stub()
    token = create_assertion(alice.identity)
    await stub.Authorize(pb.AuthorizeRequest(model=MODEL), metadata=bearer(token))
    before = await mesh.ledger_state()
    await refused(
        lambda: stub.Authorize(pb.AuthorizeRequest(model=MODEL), metadata=bearer(token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert await mesh.ledger_state() == before


# Tickets: forged, replayed, used at another node, altered ---------------------------------


async def test_a_forged_ticket_is_refused(mesh) -> None:
    alice = await joined(mesh)
    grant = await alice.authorize(MODEL)
    worker = mesh.worker_for(grant.node_id)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(grant.ticket, options={"verify_signature": False})
    claims["jti"] = "forged-" + secrets.token_hex(4)
    forged = jwt.encode(
        claims, forger, algorithm=TICKET_ALGORITHM, headers={"kid": ticket_kid(grant.ticket)}
    )
    unsigned = jwt.encode(claims, None, algorithm="none")
    before, queued = await mesh.ledger_state(), receipts_queued(mesh)
    stub = mesh.inference_stub(worker)
    for token in (forged, unsigned, "not-a-ticket"):
        await refused(lambda t=token: _chat(stub, t), grpc.StatusCode.UNAUTHENTICATED)
    assert receipts_queued(mesh) == queued  # no receipt follows: the ledger stays as it is
    assert await mesh.ledger_state() == before


async def test_a_ticket_works_once(mesh, eventually) -> None:
    alice = await joined(mesh)
    grant = await alice.authorize(MODEL)
    stub = mesh.inference_stub(mesh.worker_for(grant.node_id))
    assert await _chat(stub, grant.ticket, alice)

    async def settled() -> bool:
        return (await alice.get_balance()).reserved_millicredits == 0

    await eventually(settled)
    before, queued = await mesh.ledger_state(), receipts_queued(mesh)
    await refused(lambda: _chat(stub, grant.ticket, alice), grpc.StatusCode.UNAUTHENTICATED)
    assert receipts_queued(mesh) == queued
    assert await mesh.ledger_state() == before


async def test_a_ticket_is_refused_at_another_node(mesh) -> None:
    alice = await joined(mesh)
    grant = await alice.authorize(MODEL)
    other = mesh.other_worker(grant.node_id)
    before, queued = await mesh.ledger_state(), receipts_queued(mesh)
    await refused(
        lambda: _chat(mesh.inference_stub(other), grant.ticket), grpc.StatusCode.UNAUTHENTICATED
    )
    # Re-pointing the ticket at the other node breaks its signature.
    moved = altered(grant.ticket, node=other.node_id, node_key=other.identity.public_key_hex)
    await refused(lambda: _chat(mesh.inference_stub(other), moved), grpc.StatusCode.UNAUTHENTICATED)
    assert receipts_queued(mesh) == queued
    assert await mesh.ledger_state() == before


async def test_altered_ticket_claims_are_refused(mesh) -> None:
    alice = await joined(mesh)
    grant = await alice.authorize(MODEL)
    stub = mesh.inference_stub(mesh.worker_for(grant.node_id))
    before, queued = await mesh.ledger_state(), receipts_queued(mesh)
    for change in (
        {"model": "another-model"},
        {"sub": Identity.generate().public_key_hex},
        {"exp": int(time.time()) + 86400},
        {"jti": "another-job"},
        {"aud": "troop-coordinator"},
    ):
        await refused(
            lambda c=change: _chat(stub, altered(grant.ticket, **c)),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    assert receipts_queued(mesh) == queued
    assert await mesh.ledger_state() == before
    # The untouched ticket still works: the refusals burned nothing.
    assert await _chat(stub, grant.ticket, alice)


async def test_a_ticket_for_another_node_key_is_refused(mesh) -> None:
    # A validly signed ticket that names this node's id but another node key (as if the
    # node id had been hijacked at the coordinator): the real node refuses it.
    alice = await joined(mesh)
    grant = await alice.authorize(MODEL)
    worker = mesh.worker_for(grant.node_id)
    signer = _signer(mesh)  # the coordinator's own key: the signature is valid
    token, _ = signer.issue(
        job_id="job-" + secrets.token_hex(4),
        user=alice.identity.public_key_hex,
        node_id=worker.node_id,
        node_key=Identity.generate().public_key_hex,
        model=MODEL,
        max_tokens=16,
        max_prompt_tokens=100,
    )
    before = await mesh.ledger_state()
    await refused(
        lambda: _chat(mesh.inference_stub(worker), token), grpc.StatusCode.UNAUTHENTICATED
    )
    assert await mesh.ledger_state() == before


# Receipts: someone else's job, twice, inflated, wrong key --------------------------------


async def test_a_receipt_for_another_nodes_job_is_denied(mesh) -> None:
    alice = await joined(mesh)
    grant = await alice.authorize(MODEL)
    thief = mesh.other_worker(grant.node_id)
    before = await mesh.ledger_state()
    # The thief signs with its own key and names itself, or names the job's node.
    for node_id in (thief.node_id, grant.node_id):
        receipt = pb.JobReceipt(
            job_id=grant.job_id,
            node_id=node_id,
            outcome=pb.JOB_OUTCOME_COMPLETED,
            duration_ms=1000,
        )
        await refused(
            lambda r=receipt: mesh.user().submit_receipt(sign_receipt(thief.identity.key, r))
        )
    # A receipt signed by a key that is no node at all.
    receipt = pb.JobReceipt(
        job_id=grant.job_id, node_id=grant.node_id, outcome=pb.JOB_OUTCOME_COMPLETED, duration_ms=1
    )
    await refused(lambda: mesh.user().submit_receipt(sign_receipt(Identity.generate(), receipt)))
    assert await mesh.ledger_state() == before


async def test_a_second_receipt_changes_nothing(mesh, eventually) -> None:
    alice = await joined(mesh)
    grant = await alice.authorize(MODEL)
    worker = mesh.worker_for(grant.node_id)
    await alice.report_usage(grant.job_id, completion_tokens=5, stream_ms=50)
    request = signed_receipt(worker.identity.key, grant.job_id, grant.node_id, alice.identity)
    first = await mesh.user().submit_receipt(request)
    assert not first.already_settled and first.kind == pb.SETTLEMENT_KIND_CHARGED
    before = await mesh.ledger_state()
    # The same receipt again, and a new one claiming more: answered with the first
    # settlement (so a worker's retry is safe), and nothing moves.
    again = await mesh.user().submit_receipt(request)
    bigger = signed_receipt(
        worker.identity.key,
        grant.job_id,
        grant.node_id,
        alice.identity,
        completion_tokens=grant.max_tokens,
        duration_ms=250_000,
    )
    inflated = await mesh.user().submit_receipt(bigger)
    for reply in (again, inflated):
        assert reply.already_settled
        assert reply.charged_millicredits == first.charged_millicredits
    assert await mesh.ledger_state() == before


async def test_a_long_claimed_duration_earns_nothing_more(mesh) -> None:
    # The clock is not billed: 22 hours claimed pay what the tokens pay.
    alice = await joined(mesh)
    grant = await alice.authorize(MODEL)
    worker = mesh.worker_for(grant.node_id)
    await alice.report_usage(grant.job_id, completion_tokens=5, stream_ms=50)
    receipt = signed_receipt(
        worker.identity.key, grant.job_id, grant.node_id, alice.identity, duration_ms=80_000_000
    )
    reply = await mesh.user().submit_receipt(receipt)
    price = grant.price
    tokens = 10 * price.prompt_millicredits_per_1k_tokens
    tokens += 5 * price.completion_millicredits_per_1k_tokens
    assert reply.charged_millicredits == (tokens + 500) // 1000
    assert (await mesh.ledger_state())[2].ok


# Nodes: a node id is its key's --------------------------------------------------------


async def test_a_heartbeat_as_another_node_is_denied(mesh) -> None:
    victim = mesh.workers[0]
    impostor = mesh.user(Identity.generate())
    before_nodes = {n.node_id: n.endpoint for n in (await impostor.list_nodes()).nodes}
    before = await mesh.ledger_state()
    request = pb.HeartbeatRequest(
        node_id=victim.node_id,
        endpoint="10.6.6.6:50052",
        models=[MODEL],
        owner_public_key=Identity.generate().public_key_hex,
    )
    await refused(lambda: impostor.heartbeat(request), grpc.StatusCode.PERMISSION_DENIED)
    # Without any assertion at all.
    await refused(
        lambda: mesh.coordinator_stub().Heartbeat(request), grpc.StatusCode.UNAUTHENTICATED
    )
    after_nodes = {n.node_id: n.endpoint for n in (await impostor.list_nodes()).nodes}
    assert after_nodes == before_nodes
    assert await mesh.ledger_state() == before


# helpers --------------------------------------------------------------------------------


async def _chat(stub, ticket: str, user=None) -> list:
    """Stream a job as a client would; with `user` (a CoordinatorClient), present the
    ticket as that user and countersign what arrived."""
    from troop_common.proto import inference_pb2

    request = inference_pb2.ChatCompletionRequest(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}]
    )
    if user is None:
        return [c async for c in stub.ChatCompletion(request, metadata=bearer(ticket))]
    claims = jwt.decode(ticket, options={"verify_signature": False})
    metadata = ticket_metadata(ticket, user.identity, claims["jti"], claims["node"])
    chunks = [c async for c in stub.ChatCompletion(request, metadata=metadata)]
    await user.report_usage(claims["jti"], chunks[-1].usage.completion_tokens, stream_ms=10)
    return chunks


def _signer(mesh):
    """The running coordinator's own ticket key ring (a test reaches into it)."""
    from troop_coordinator.ticket_keys import TicketKeyRing

    ring = TicketKeyRing(
        mesh.coordinator.settings.ticket_keys_dir,
        lifetime_s=300,
        grace_s=300,
    )
    ring.reload()
    return ring
