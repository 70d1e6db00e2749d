"""Malformed requests and job limits, through a real worker."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from worker_testing import MODEL, bearer, chat, collect, make_issuer

from tests.conftest import wait_until
from tests.malformed import malformed
from troop_common.errors import InvalidArgument, RateLimited, from_rpc_error
from troop_common.keys import Identity
from troop_common.proto import common_pb2, inference_pb2, inference_pb2_grpc
from troop_worker.engine import FakeEngine

BAD_REQUESTS = {
    "no model": (inference_pb2.ChatCompletionRequest(messages=[{"role": "user"}]), "model"),
    "no messages": (chat(messages=[]), "messages"),
    "bad role": (chat(messages=[common_pb2.ChatMessage(role="robot")]), "messages[0].role"),
    "temperature high": (chat(temperature=2.5), "temperature"),
    "temperature negative": (chat(temperature=-0.1), "temperature"),
    "temperature nan": (chat(temperature=float("nan")), "temperature"),
    "top_p zero": (chat(top_p=0.0), "top_p"),
    "top_p high": (chat(top_p=1.5), "top_p"),
    "max_tokens zero": (chat(max_tokens=0), "max_tokens"),
    "max_tokens over cap": (chat(max_tokens=1025), "max_tokens"),
    "five stops": (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    "empty stop": (chat(stop=[""]), "stop[0]"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_malformed_request_is_invalid_argument(inference, issue, case: str) -> None:
    request, field = BAD_REQUESTS[case]
    call = inference.ChatCompletion(request, metadata=bearer(issue()))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in call:
            received.append(chunk)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert received == []
    error = from_rpc_error(caught.value)
    assert isinstance(error, InvalidArgument)
    assert field in [v.field for v in error.violations]


async def test_all_violations_reported_at_once(inference, issue) -> None:
    request = chat(temperature=3.0, top_p=0.0, max_tokens=0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(inference, request, issue())
    error = from_rpc_error(caught.value)
    assert {v.field for v in error.violations} == {"temperature", "top_p", "max_tokens"}


async def test_random_malformed_requests_never_get_internal(inference, issue) -> None:
    # Half keep the ticket's model so the fields behind it are reached too.
    rng = random.Random(20261127)
    unclear = []
    for i in range(60):
        request = malformed(inference_pb2.ChatCompletionRequest, rng)
        if i % 2:
            request.model = MODEL
        try:
            chunks = await collect(inference, request, issue())
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                unclear.append(f"{error.code().name}: {request!s:.200}")
        else:
            assert chunks[-1].finish_reason != 0, "a stream that ended without a finish"
    assert unclear == []
    assert await collect(inference, chat("still serving"), issue())


async def test_defaults_apply_when_fields_are_unset(inference, issue) -> None:
    chunks = await collect(inference, chat("a b c"), issue())
    assert chunks[-1].finish_reason == 1  # FINISH_REASON_STOP


async def open_stream(stub, token: str):
    """A long job, started: returns the call after its first chunk arrived."""
    call = stub.ChatCompletion(chat("word " * 200), metadata=bearer(token))
    await call.read()
    return call


async def test_over_the_node_limit(start_worker, recording_coordinator, ticket_signer) -> None:
    slow = FakeEngine(delay_s=0.02)
    async with start_worker(engine=slow, max_concurrent_jobs=1, max_queued_jobs=0) as worker:
        issue = make_issuer(ticket_signer, worker)
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            first = await open_stream(stub, issue())
            refused_ticket = issue()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await collect(stub, chat(), refused_ticket)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            error = from_rpc_error(caught.value)
            assert isinstance(error, RateLimited) and error.retry_after_seconds > 0
            first.cancel()
            # A refused request did not spend its ticket: retrying it works once a slot frees.
            await recording_coordinator.wait_for(lambda c: len(c.receipts) == 1)
            assert worker.limiter.active == 0
            assert await collect(stub, chat("again"), refused_ticket)


async def test_over_the_per_user_limit(start_worker, ticket_signer) -> None:
    async with start_worker(engine=FakeEngine(delay_s=0.02), max_jobs_per_user=1) as worker:
        issue = make_issuer(ticket_signer, worker)
        alice = Identity.generate()
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            first = await open_stream(stub, issue(user=alice))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await collect(stub, chat(), issue(user=alice))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await collect(stub, chat("bob"), issue())  # another user still fits
            first.cancel()


async def test_a_job_over_the_node_limit_waits_for_a_slot(
    start_worker, recording_coordinator, ticket_signer
) -> None:
    async with start_worker(engine=FakeEngine(delay_s=0.02), max_concurrent_jobs=1) as worker:
        issue = make_issuer(ticket_signer, worker)
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            first = await open_stream(stub, issue())
            queued = asyncio.ensure_future(collect(stub, chat("queued"), issue()))
            await wait_until(lambda: worker.limiter.queued == 1)
            first.cancel()
            chunks = await asyncio.wait_for(queued, 30)
    assert "".join(c.delta for c in chunks) == "You said: queued"
    assert worker.limiter.queued == 0 and worker.limiter.active == 0


async def test_a_waiting_user_is_served_before_a_busy_users_backlog(
    start_worker, recording_coordinator, ticket_signer
) -> None:
    async with start_worker(engine=FakeEngine(delay_s=0.01), max_concurrent_jobs=1) as worker:
        issue = make_issuer(ticket_signer, worker)
        alice, bob = Identity.generate(), Identity.generate()
        finished: list[str] = []

        async def job(name: str, user: Identity) -> None:
            await collect(stub, chat(name), issue(user=user))
            finished.append(name)

        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            first = await open_stream(stub, issue(user=alice))
            jobs = [asyncio.ensure_future(job(f"alice{i}", alice)) for i in range(3)]
            await wait_until(lambda: worker.limiter.queued == 3)
            jobs.append(asyncio.ensure_future(job("bob", bob)))
            await wait_until(lambda: worker.limiter.queued == 4)
            first.cancel()
            await asyncio.wait_for(asyncio.gather(*jobs), 30)
    # Alice already held the slot, so Bob, who has nothing running, goes first.
    assert finished[0] == "bob", finished
    assert sorted(finished[1:]) == ["alice0", "alice1", "alice2"]
