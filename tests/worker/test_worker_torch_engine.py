"""The PyTorch engine with the real SmolLM2 model (loaded once per session, ~15 s)."""

from __future__ import annotations

import time

import grpc
import pytest
from worker_testing import bearer, chat, collect, make_issuer

from troop_common.proto import common_pb2, inference_pb2_grpc
from troop_worker.engine import FinishReason, GenerationChunk, GenerationRequest, Message

pytestmark = pytest.mark.model

QUESTION = (Message("user", "What is the capital of France?"),)


async def run(engine, **fields) -> list[GenerationChunk]:
    request = GenerationRequest(**{"messages": QUESTION, "temperature": 0.0, **fields})
    return [chunk async for chunk in engine.stream(request)]


def text(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


async def test_greedy_answer_names_paris(torch_engine) -> None:
    chunks = await run(torch_engine, max_tokens=32)
    assert "Paris" in text(chunks)
    last = chunks[-1]
    assert last.finish_reason is FinishReason.STOP  # the model ended it (EOS)
    assert last.prompt_tokens > 10 and 0 < last.completion_tokens < 32


async def test_chunks_arrive_as_generated(torch_engine) -> None:
    arrivals = []
    async for chunk in torch_engine.stream(
        GenerationRequest(messages=QUESTION, temperature=0.0, max_tokens=16)
    ):
        arrivals.append((time.monotonic(), chunk))
    assert len(arrivals) > 3
    assert arrivals[0][1].finish_reason is None
    # Running totals grow one chunk at a time: the first came long before the last token.
    assert arrivals[0][1].completion_tokens < arrivals[-1][1].completion_tokens
    assert arrivals[0][0] < arrivals[-1][0]


async def test_max_tokens_cuts_with_length(torch_engine) -> None:
    chunks = await run(torch_engine, max_tokens=3)
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert chunks[-1].completion_tokens == 3
    assert text(chunks)


async def test_stop_sequence_truncates(torch_engine) -> None:
    full = text(await run(torch_engine, max_tokens=32))
    assert " Paris" in full
    chunks = await run(torch_engine, max_tokens=32, stop=(" Paris",))
    assert text(chunks) == full[: full.index(" Paris")]
    assert chunks[-1].finish_reason is FinishReason.STOP


async def test_same_seed_same_text(torch_engine) -> None:
    sampled = {"temperature": 1.2, "top_p": 0.9, "max_tokens": 16}
    first = text(await run(torch_engine, seed=7, **sampled))
    second = text(await run(torch_engine, seed=7, **sampled))
    assert first == second
    assert first


async def test_streamed_greedy_text_equals_one_shot_generate(torch_engine) -> None:
    # However the text was cut into chunks, it joins to transformers' own greedy output.
    chunks = await run(torch_engine, max_tokens=24)
    assert len([c for c in chunks if c.text]) > 1
    tokenizer = torch_engine.tokenizer
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION[0].content}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )["input_ids"]
    import torch

    with torch.inference_mode():
        out = torch_engine.hf_model.generate(inputs, max_new_tokens=24, do_sample=False)
    expected = tokenizer.decode(out[0, inputs.shape[1] :], skip_special_tokens=True)
    assert text(chunks) == expected


async def test_paris_through_a_real_worker(
    torch_engine, start_worker, ticket_signer, recording_coordinator
) -> None:
    async with start_worker(engine=torch_engine) as worker:
        issue = make_issuer(ticket_signer, worker)
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            request = chat("What is the capital of France?", temperature=0.0, max_tokens=32)
            chunks = await collect(stub, request, issue(job_id="job-paris"))
            # A second client's stream, cut short, frees the engine for the next one.
            call = stub.ChatCompletion(chat("Count to fifty."), metadata=bearer(issue()))
            await call.read()
            call.cancel()
            await recording_coordinator.wait_for(lambda c: len(c.receipts) == 2, 30)
    assert "Paris" in "".join(c.delta for c in chunks)
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    receipt = recording_coordinator.receipt_for("job-paris").receipt
    assert receipt.usage.completion_tokens == chunks[-1].usage.completion_tokens
