"""What the protocol costs, said on every answer, and receipts kept off the first token's path.

A real worker (fake engine) against the stand-in coordinator: the worker's first response
headers carry its own overhead, and its receipts wait while a job is before its first token,
go together once none is, and are all sent when the worker stops (ADR 36).
"""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from worker_testing import bearer, chat

from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.request_context import OVERHEAD, parse_ms
from troop_common.resilience import NO_RETRY
from troop_worker.receipts import JobRecord, ReceiptSender


async def test_the_first_headers_carry_the_workers_own_overhead(inference, issue) -> None:
    call = inference.ChatCompletion(chat("hello there"), metadata=bearer(issue()))
    chunks = [chunk async for chunk in call]
    assert "".join(c.delta for c in chunks) == "You said: hello there"
    value = dict(await call.initial_metadata())[OVERHEAD]
    assert re.fullmatch(r"\d+\.\d{3}", value), value  # milliseconds, three decimals
    assert parse_ms(value) is not None and 0 <= float(value) < 60_000


async def test_a_refused_call_carries_no_overhead(inference) -> None:
    call = inference.ChatCompletion(chat(), metadata=bearer("not-a-ticket"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        [chunk async for chunk in call]
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    headers = dict(refused.value.initial_metadata() or ())
    trailers = dict(refused.value.trailing_metadata() or ())
    assert OVERHEAD not in headers and OVERHEAD not in trailers


def record(job_id: str) -> JobRecord:
    return JobRecord(job_id, completed=True, duration_ms=5, prompt_tokens=3, completion_tokens=4)


async def test_receipts_wait_for_a_starting_job_then_go_together(
    recording_coordinator, eventually
) -> None:
    node = Identity.generate()
    async with CoordinatorClient(recording_coordinator.address, node, retry=NO_RETRY) as client:
        receipts = ReceiptSender(client, node, "node-hot", max_wait_s=60)
        leave = receipts.hot.enter()  # a job is between its arrival and its first token
        for n in range(5):
            receipts.submit(record(f"job-hot-{n}"))
        for _ in range(20):  # give the sender every chance to jump the queue
            await asyncio.sleep(0)
        assert recording_coordinator.receipts == [] and receipts.pending == 5
        leave()  # its first token left: now the receipts go, all five in one batch
        await eventually(lambda: len(recording_coordinator.receipts) == 5)
        assert receipts.pending == 0
        assert receipts.batches == 1


async def test_stopping_sends_the_receipts_still_waiting(recording_coordinator) -> None:
    node = Identity.generate()
    async with CoordinatorClient(recording_coordinator.address, node, retry=NO_RETRY) as client:
        receipts = ReceiptSender(client, node, "node-stop", max_wait_s=60)
        receipts.hot.enter()  # a job that never sends its first token
        for n in range(3):
            receipts.submit(record(f"job-stop-{n}"))
        await receipts.drain(10)  # a clean shutdown: nothing queued is lost
    sent = sorted(r.receipt.job_id for r in recording_coordinator.receipts)
    assert sent == ["job-stop-0", "job-stop-1", "job-stop-2"]
