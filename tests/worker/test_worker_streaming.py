"""Streaming, receipts and heartbeats, through a real worker and the stand-in coordinator."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from worker_testing import MODEL, bearer, chat, collect, make_issuer

from troop_common.proto import common_pb2, coordinator_pb2, inference_pb2, inference_pb2_grpc
from troop_worker.engine import FakeEngine

WORDS = " ".join(f"w{i}" for i in range(30))


async def test_chunks_arrive_incrementally(inference, issue) -> None:
    call = inference.ChatCompletion(chat(WORDS), metadata=bearer(issue()))
    arrivals: list[float] = []
    done_at_first_chunk = None
    async for chunk in call:
        arrivals.append(time.monotonic())
        if done_at_first_chunk is None:
            done_at_first_chunk = call.done()
        assert chunk.id
    assert len(arrivals) == 32  # "You", " said:", 30 words (the last with finish_reason)
    assert done_at_first_chunk is False  # the stream was still running when chunk 1 arrived
    assert arrivals == sorted(arrivals) and arrivals[0] < arrivals[-1]


async def test_stream_content_and_final_chunk(inference, issue) -> None:
    token = issue(job_id="job-content")
    chunks = await collect(inference, chat("hello brave new world"), token)
    assert [c.delta for c in chunks[:-1]] == ["You", " said:", " hello", " brave", " new"]
    assert chunks[-1].delta == " world"
    assert {c.id for c in chunks} == {"job-content"}
    assert all(c.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
    assert not any(c.HasField("usage") for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == common_pb2.FINISH_REASON_STOP
    assert last.usage.completion_tokens == 6
    assert last.usage.total_tokens == last.usage.prompt_tokens + 6


async def test_max_tokens_cuts_with_length(inference, issue) -> None:
    chunks = await collect(inference, chat(WORDS, max_tokens=4), issue())
    assert "".join(c.delta for c in chunks) == "You said: w0 w1"
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert chunks[-1].usage.completion_tokens == 4


async def test_stop_sequence_is_not_emitted(inference, issue) -> None:
    chunks = await collect(inference, chat(WORDS, stop=[" w3", "zzz"]), issue())
    assert "".join(c.delta for c in chunks) == "You said: w0 w1 w2"
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_STOP


async def test_list_models_needs_no_ticket(inference) -> None:
    response = await inference.ListModels(inference_pb2.InferenceServiceListModelsRequest())
    assert [m.id for m in response.models] == [MODEL]


async def test_health_is_serving(worker) -> None:
    async with grpc.aio.insecure_channel(worker.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "troop.v1.InferenceService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_receipt_after_a_job(inference, issue, worker, recording_coordinator) -> None:
    chunks = await collect(inference, chat("pay me"), issue(job_id="job-paid"))
    await recording_coordinator.wait_for(lambda c: c.receipt_for("job-paid") is not None)
    recorded = recording_coordinator.receipt_for("job-paid")
    assert recorded.signature_valid
    receipt = recorded.receipt
    assert receipt.node_id == worker.node_id
    assert receipt.outcome == coordinator_pb2.JOB_OUTCOME_COMPLETED
    assert receipt.usage == chunks[-1].usage
    assert receipt.duration_ms > 0
    assert receipt.finished_at.seconds > 0


async def test_cancelled_stream_is_charged_for_what_it_produced(
    start_worker, ticket_signer, recording_coordinator
) -> None:
    async with start_worker(engine=FakeEngine(delay_s=0.02)) as worker:
        issue = make_issuer(ticket_signer, worker)
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            call = stub.ChatCompletion(chat(WORDS), metadata=bearer(issue(job_id="job-left")))
            received = [await call.read() for _ in range(3)]
            assert all(r.delta for r in received)
            call.cancel()
            await recording_coordinator.wait_for(lambda c: c.receipt_for("job-left") is not None)
    receipt = recording_coordinator.receipt_for("job-left").receipt
    assert receipt.outcome == coordinator_pb2.JOB_OUTCOME_COMPLETED
    assert 3 <= receipt.usage.completion_tokens < 32
    assert worker.limiter.active == 0


async def test_heartbeats(worker, recording_coordinator) -> None:
    await recording_coordinator.wait_for(lambda c: len(c.heartbeats) >= 2)
    beat = recording_coordinator.heartbeats[0]
    request = beat.request
    assert request.node_id == worker.node_id
    assert request.endpoint == worker.address
    assert list(request.models) == [MODEL]
    assert request.load.max_concurrent_jobs == worker.settings.max_concurrent_jobs == 8
    assert request.hardware.device == "cpu" and request.hardware.cpu_count >= 1
    assert request.hardware.memory_bytes > 0
    assert len(request.owner_public_key) == 64
    assert request.owner_public_key != beat.node_public_key
    assert worker.node_id == "node-" + beat.node_public_key[:12]


async def test_a_down_coordinator_does_not_fail_streams(
    inference, issue, worker, recording_coordinator, caplog, eventually
) -> None:
    await recording_coordinator.server.stop(0)
    chunks = await collect(inference, chat("still here"), issue())
    assert "".join(c.delta for c in chunks) == "You said: still here"
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    # A heartbeat has failed since (the worker said so); it keeps serving all the same.
    await eventually(lambda: any("heartbeat failed" in r.getMessage() for r in caplog.records))
    chunks = await collect(inference, chat("again"), issue())
    assert "".join(c.delta for c in chunks) == "You said: again"


class BrokenEngine(FakeEngine):
    """The fake engine, failing after `after` words (a real engine's mid-job crash)."""

    def __init__(self, after: int) -> None:
        super().__init__([MODEL], delay_s=0.001)
        self.after = after

    async def stream(self, request):
        produced = 0
        async for chunk in super().stream(request):
            if produced == self.after:
                raise RuntimeError("the accelerator fell over")
            produced += 1
            yield chunk


async def test_engine_failure_mid_stream_ends_with_error_and_a_refund(
    start_worker, ticket_signer, recording_coordinator
) -> None:
    engine = BrokenEngine(after=2)
    async with start_worker(engine=engine) as worker:
        issue = make_issuer(ticket_signer, worker)
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            chunks = await collect(stub, chat(WORDS), issue(job_id="job-broken"))
            engine.after = 0  # now it fails before its first word
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await collect(stub, chat(WORDS), issue(job_id="job-never"))
            await recording_coordinator.wait_for(lambda c: len(c.receipts) == 2)
    assert [c.delta for c in chunks[:2]] == ["You", " said:"]
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_ERROR
    assert chunks[-1].usage.completion_tokens == 2
    assert caught.value.code() == grpc.StatusCode.INTERNAL  # never the traceback
    assert "fell over" not in (caught.value.details() or "")
    for job in ("job-broken", "job-never"):
        receipt = recording_coordinator.receipt_for(job).receipt
        assert receipt.outcome == coordinator_pb2.JOB_OUTCOME_FAILED
