"""The PyTorch engine with the real SmolLM2 model (loaded once per session, ~15 s)."""

from __future__ import annotations

import asyncio
import hashlib
import time

import grpc
import pytest
from worker_testing import bearer, chat, collect, make_issuer

from tests.conftest import wait_until
from troop_common.evidence import open_evidence, tokens_of
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
        node_key = worker.identity.public_key_hex
    answer = "".join(c.delta for c in chunks)
    assert "Paris" in answer
    last = chunks[-1]
    assert last.finish_reason == common_pb2.FINISH_REASON_STOP
    receipt = recording_coordinator.receipt_for("job-paris").receipt
    assert receipt.usage.completion_tokens == last.usage.completion_tokens
    # The node's signed evidence: every token (the end of sequence too), its bytes the text.
    tokens = tokens_of(open_evidence(last.evidence, last.evidence_signature, node_key))
    assert len(tokens) == last.usage.completion_tokens
    assert b"".join(t.token for t in tokens).decode() == answer
    assert tokens[-1].token == b"" and tokens[-1].token_id is not None
    assert receipt.evidence_sha256 == hashlib.sha256(last.evidence).digest()


def test_incremental_detokenizer_joins_to_the_full_decode(torch_engine) -> None:
    from troop_worker.engine.detokenize import IncrementalDetokenizer

    tokenizer = torch_engine.tokenizer
    samples = [
        "Plain words, then numbers 12345 and    spaces.",
        "Accents: déjà vu, naïve café; CJK: 日本語のテキスト; emoji: 🎉👍🏽 done",
        "Code:\n    def f(x):\n        return x ** 2  # squared\n",
    ]
    for sample in samples:
        ids = tokenizer.encode(sample, add_special_tokens=False)
        detokenizer = IncrementalDetokenizer(
            lambda part: tokenizer.decode(part, clean_up_tokenization_spaces=False)
        )
        pieces = [detokenizer.push(token) for token in ids]
        pieces.append(detokenizer.flush())
        assert "".join(pieces) == sample
        assert not any("\ufffd" in piece for piece in pieces)  # never half a character
        assert sum(1 for piece in pieces if piece) > len(ids) // 2  # incremental, not at the end


async def test_a_cancelled_long_prompt_stops_the_engine_within_one_prefill_chunk(
    torch_engine, start_worker, ticket_signer, recording_coordinator
) -> None:
    stats = torch_engine.stats
    long_prompt = "Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 120
    async with start_worker(engine=torch_engine) as worker:
        issue = make_issuer(ticket_signer, worker)
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            before = stats.prefill_chunks
            call = stub.ChatCompletion(chat(long_prompt), metadata=bearer(issue()))
            # The engine is prefilling the prompt: no token exists yet.
            await wait_until(lambda: stats.prefill_chunks > before, timeout_s=60)
            at_cancel = stats.prefill_chunks
            call.cancel()
            await wait_until(lambda: torch_engine.idle, timeout_s=60)
    needed = -(-1200 // torch_engine.prefill_chunk)  # the prompt has over 1,200 tokens
    assert stats.prefill_chunks - before < needed
    assert stats.prefill_chunks - at_cancel <= 1  # at most the chunk that was running
    assert stats.cancelled_in_prefill >= 1


async def test_eight_concurrent_jobs_batch_and_match_their_answers_alone(
    torch_engine_fp32,
) -> None:
    engine = torch_engine_fp32
    prompts = [f"Write one sentence about the number {n}." for n in range(8)]
    # Each row keeps its own settings: greedy ones, sampled ones with their own seed, a stop.
    settings = [{"temperature": 0.0}] * 5 + [
        {"temperature": 0.9, "top_p": 0.9, "seed": 11},
        {"temperature": 1.2, "seed": 12},
        {"temperature": 0.0, "stop": (" the",)},
    ]

    async def answer(prompt: str) -> str:
        fields = settings[prompts.index(prompt)]
        request = GenerationRequest((Message("user", prompt),), max_tokens=20, **fields)
        return "".join([c.text async for c in engine.stream(request)])

    stats = engine.stats
    alone = [await answer(p) for p in prompts]
    steps, rows = stats.decode_steps, stats.rows_decoded
    together = await asyncio.gather(*(answer(p) for p in prompts))
    assert together == alone
    assert (stats.rows_decoded - rows) / (stats.decode_steps - steps) > 3  # shared steps


async def test_a_greedy_answer_continued_from_its_first_tokens_is_the_same_answer(
    torch_engine_fp32,
) -> None:
    """Resuming on another node: the reply so far goes back as `continuation`, and greedy
    decoding carries on exactly where it stopped (no token lost or repeated at the seam).
    In float32: bfloat16 may round a near-tie differently once the reply so far is prefilled
    at once instead of decoded token by token (the same tolerance as batching, ADR 38)."""
    torch_engine = torch_engine_fp32
    story = (Message("user", "Tell me a short story about a fox and a crow."),)
    whole = await run(torch_engine, messages=story, max_tokens=40)
    full = text(whole)
    assert len(whole) > 20
    for cut in (1, len(whole) // 2, len(whole) - 2):
        said = text(whole[:cut])
        delivered = whole[cut - 1].completion_tokens
        rest = await run(torch_engine, messages=story, max_tokens=40 - delivered, continuation=said)
        assert said + text(rest) == full, (cut, said)
        assert rest[-1].completion_tokens == whole[-1].completion_tokens - delivered


def teacher_forced_logprobs(engine, request: GenerationRequest, ids: list[int]) -> list[float]:
    """Each generated token's log-probability from one plain forward pass of the same model
    over prompt + tokens (no cache, no batch): log_softmax of the raw logits in float32."""
    import torch

    prompt = engine.tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in request.messages],
        add_generation_prompt=True, return_dict=True, return_tensors="pt",
    )["input_ids"]  # fmt: skip
    inputs = torch.cat([prompt, torch.tensor([ids])], dim=1)
    with torch.inference_mode():
        logits = engine.hf_model(input_ids=inputs).logits[0].float()
    start = prompt.shape[1] - 1  # the logits at i predict token i + 1
    logprobs = torch.log_softmax(logits[start : start + len(ids)], dim=-1)
    return logprobs.gather(1, torch.tensor(ids).unsqueeze(1)).squeeze(1).tolist()


async def evidence_of(engine, request: GenerationRequest):
    chunks = [c async for c in engine.stream(request)]
    return chunks, [t for c in chunks for t in c.tokens]


@pytest.mark.parametrize(
    ("fixture", "tolerance"), [("torch_engine_fp32", 1e-3), ("torch_engine", 0.25)]
)
async def test_reported_logprobs_equal_a_teacher_forced_forward_pass(
    fixture: str, tolerance: float, request
) -> None:
    """Greedy and sampled jobs, batched together: each token's log-probability is the raw
    distribution's (not the tempered or truncated one it was sampled from). In float32 the
    cached, batched decode agrees with a plain forward pass to rounding; in bfloat16 the
    two paths round differently (a logit of ~20 has a step of 0.125 in bfloat16)."""
    engine = request.getfixturevalue(fixture)
    jobs = [
        GenerationRequest(QUESTION, temperature=0.0, max_tokens=24),
        GenerationRequest(
            (Message("user", "Write a poem about rain."),),
            temperature=1.5, top_p=0.8, seed=3, max_tokens=24,
        ),
        GenerationRequest(
            (Message("user", "Name a colour."),), temperature=0.7, seed=5, max_tokens=24
        ),
    ]  # fmt: skip
    results = await asyncio.gather(*(evidence_of(engine, job) for job in jobs))
    for job, (chunks, tokens) in zip(jobs, results, strict=True):
        assert len(tokens) == chunks[-1].completion_tokens > 0
        ids = [t.token_id for t in tokens]
        assert all(isinstance(i, int) for i in ids)
        expected = teacher_forced_logprobs(engine, job, ids)
        worst = max(abs(t.logprob - e) for t, e in zip(tokens, expected, strict=True))
        assert worst < tolerance, (job, worst)
        assert all(t.logprob <= 0 for t in tokens)
        if chunks[-1].finish_reason is FinishReason.STOP:  # the end-of-sequence token is in
            assert tokens[-1].token == b"" and tokens[-1].token_id == engine.tokenizer.eos_token_id
        text = "".join(c.text for c in chunks)
        assert b"".join(t.token for t in tokens).decode() == text


def test_token_bytes_are_the_raw_bytes_even_for_half_a_character(torch_engine) -> None:
    tokenizer = torch_engine.tokenizer
    sample = "Accents: déjà vu; CJK: 日本語のテキスト; emoji: 🎉👍🏽\n\ttabs and  spaces"
    ids = tokenizer.encode(sample, add_special_tokens=False)
    pieces = [torch_engine._bytes_of(i) for i in ids]
    assert b"".join(pieces) == sample.encode()
    assert any(_not_utf8(p) for p in pieces)  # some token holds part of a character
    assert torch_engine._bytes_of(tokenizer.eos_token_id) == b""
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert torch_engine._bytes_of(im_start) == b""  # never shown as text


def _not_utf8(piece: bytes) -> bool:
    try:
        piece.decode()
    except UnicodeDecodeError:
        return True
    return False
