"""Output evidence from a real worker on the fake engine: the last chunk carries the node's
signed evidence (every token with the fake model's log-probability), the receipt its digest."""

from __future__ import annotations

import hashlib
import json
import logging

import grpc
import httpx2 as httpx
import pytest
from worker_testing import MODEL, chat, collect, make_issuer

from troop_client.evidence import verified_evidence
from troop_common.evidence import (
    TokenEvidence,
    messages_sha256,
    open_evidence,
    tokens_of,
)
from troop_common.fake_model import echo_logprob, echo_words
from troop_common.proto import common_pb2, inference_pb2_grpc
from troop_worker import WorkerSettings
from troop_worker.engine import FakeEngine, GenerationRequest, Message, make_engine
from troop_worker.engine.openai_upstream import OpenAIUpstreamEngine
from troop_worker.read_ahead import ReadAhead

ASK = "tell me a story"


def scored(messages: list[tuple[str, str]], shift: float = 0.0) -> list[TokenEvidence]:
    """What a trusted fake scorer expects of the whole answer."""
    return [
        TokenEvidence(word.encode(), echo_logprob(n, word) + shift)
        for n, word in enumerate(echo_words(messages))
    ]


def close(tokens: list[TokenEvidence], expected: list[TokenEvidence]) -> bool:
    """Equal, the log-probabilities as the float32 the wire carries."""
    return [(t.token, t.token_id) for t in tokens] == [
        (t.token, t.token_id) for t in expected
    ] and all(abs(t.logprob - e.logprob) < 1e-6 for t, e in zip(tokens, expected, strict=True))


async def stream(worker, ticket_signer, request, **ticket):
    issue = make_issuer(ticket_signer, worker)
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        return await collect(stub, request, issue(**ticket))


def test_the_fake_model_rule_is_the_fake_engines() -> None:
    messages = [("system", "be nice"), ("user", "  hello   there ")]
    assert echo_words(messages) == ["You", " said:", " hello", " there"]
    assert echo_words([("user", " ")]) == ["Hello!"]
    request = GenerationRequest(tuple(Message(r, c) for r, c in messages))
    assert FakeEngine.answer(request) == echo_words(messages)
    values = [echo_logprob(n, w) for n in range(40) for w in ("a", " said:", "")]
    assert all(-3 <= v < 0 for v in values) and len(set(values)) > 5


async def test_the_last_chunk_carries_signed_evidence_and_the_receipt_its_digest(
    start_worker, ticket_signer, recording_coordinator
) -> None:
    async with start_worker() as worker:
        chunks = await stream(worker, ticket_signer, chat(ASK), job_id="job-evidence")
        await recording_coordinator.wait_for(lambda c: c.receipt_for("job-evidence"), 10)
        node_key, node_id = worker.identity.public_key_hex, worker.node_id
    last = chunks[-1]
    assert last.finish_reason == common_pb2.FINISH_REASON_STOP
    assert all(not c.evidence and not c.evidence_signature for c in chunks[:-1])
    evidence = open_evidence(last.evidence, last.evidence_signature, node_key)
    assert (evidence.job_id, evidence.node_id, evidence.model) == ("job-evidence", node_id, MODEL)
    assert evidence.messages_sha256 == messages_sha256([("user", ASK)])
    tokens = tokens_of(evidence)
    assert close(tokens, scored([("user", ASK)]))
    assert b"".join(t.token for t in tokens).decode() == "".join(c.delta for c in chunks)
    assert len(tokens) == last.usage.completion_tokens
    receipt = recording_coordinator.receipt_for("job-evidence").receipt
    assert receipt.evidence_sha256 == hashlib.sha256(last.evidence).digest()


async def test_evidence_holds_the_tokens_a_stop_sequence_cut_and_at_most_max_tokens(
    start_worker, ticket_signer, recording_coordinator
) -> None:
    ask = "one two three four five six"
    async with start_worker() as worker:
        stopped = await stream(worker, ticket_signer, chat(ask, stop=[" thr"]))
        cut = await stream(worker, ticket_signer, chat(ask, max_tokens=4))
        node_key = worker.identity.public_key_hex
    stop_tokens = tokens_of(
        open_evidence(stopped[-1].evidence, stopped[-1].evidence_signature, node_key)
    )
    text = "".join(c.delta for c in stopped)
    assert text == "You said: one two"
    signed = b"".join(t.token for t in stop_tokens).decode()
    assert signed == "You said: one two three" and signed.startswith(text)  # the cut word too
    assert close(stop_tokens, scored([("user", ask)])[:5])
    cut_tokens = tokens_of(open_evidence(cut[-1].evidence, cut[-1].evidence_signature, node_key))
    assert cut[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert close(cut_tokens, scored([("user", ask)])[:4])


async def test_a_resumed_job_signs_only_the_tokens_this_node_generated(
    start_worker, ticket_signer
) -> None:
    ask = "alpha beta gamma"
    async with start_worker() as worker:
        chunks = await stream(worker, ticket_signer, chat(ask, continuation="You said: alpha"))
        node_key = worker.identity.public_key_hex
    tokens = tokens_of(open_evidence(chunks[-1].evidence, chunks[-1].evidence_signature, node_key))
    # At their positions in the whole answer: the scorer's numbers for the last two words.
    assert close(tokens, scored([("user", ask)])[3:])
    assert "".join(c.delta for c in chunks) == " beta gamma"


async def test_a_cheating_fake_worker_signs_log_probabilities_the_scorer_disagrees_with(
    start_worker, ticket_signer
) -> None:
    settings = WorkerSettings.from_env({"TROOP_WORKER_FAKE_LOGPROB_SHIFT": "-0.7"})
    assert settings.fake_logprob_shift == -0.7
    engine = make_engine(WorkerSettings.from_env(
        {"TROOP_WORKER_ENGINE": "fake", "TROOP_WORKER_MODEL": MODEL,
         "TROOP_WORKER_FAKE_LOGPROB_SHIFT": "-0.7"}
    ))  # fmt: skip
    async with start_worker(engine=engine) as worker:
        chunks = await stream(worker, ticket_signer, chat(ASK))
        node_key = worker.identity.public_key_hex
    tokens = tokens_of(open_evidence(chunks[-1].evidence, chunks[-1].evidence_signature, node_key))
    assert not close(tokens, scored([("user", ASK)]))
    assert close(tokens, scored([("user", ASK)], shift=-0.7))  # signed, all the same


async def test_the_sdk_keeps_verified_evidence_and_drops_tampered_evidence(
    start_worker, ticket_signer, caplog
) -> None:
    async with start_worker() as worker:
        job = "job-sdk-evidence"
        chunks = await stream(worker, ticket_signer, chat(ASK), job_id=job)
        node_key, node_id = worker.identity.public_key_hex, worker.node_id
    last = chunks[-1]
    pinned = {"job_id": job, "node_id": node_id, "node_public_key": node_key}
    kept = verified_evidence(last, **pinned)
    assert kept is not None
    assert (kept.job_id, kept.node_id, kept.node_public_key, kept.model) == (
        job, node_id, node_key, MODEL,
    )  # fmt: skip
    assert (kept.data, kept.signature) == (last.evidence, last.evidence_signature)
    assert close(list(kept.tokens), scored([("user", ASK)]))

    tampered = type(last)()
    tampered.CopyFrom(last)
    # One log-probability nudged: the bytes differ, the node's signature no longer holds.
    data = bytearray(last.evidence)
    data[-2] ^= 0x01
    tampered.evidence = bytes(data)
    with caplog.at_level(logging.WARNING, logger="troop.client"):
        assert verified_evidence(tampered, **pinned) is None
        assert verified_evidence(last, **{**pinned, "node_public_key": "ab" * 32}) is None
        assert verified_evidence(last, **{**pinned, "job_id": "job-other"}) is None
        tampered.evidence, tampered.evidence_signature = b"\x0a\xff", last.evidence_signature
        assert verified_evidence(tampered, **pinned) is None  # not even an OutputEvidence
    assert sum("evidence" in r.getMessage() for r in caplog.records) == 4
    assert verified_evidence(chunks[0], **pinned) is None  # no evidence on other chunks


async def test_the_read_ahead_joins_the_tokens_of_the_chunks_it_merges() -> None:
    engine = FakeEngine([MODEL], delay_s=0)
    request = GenerationRequest((Message("user", "a b c d e f"),))
    ahead = ReadAhead(engine.stream(request))
    merged = []
    while (chunk := await ahead.next()) is not None:
        merged.extend(chunk.tokens)
    await ahead.close()
    assert close(merged, scored([("user", "a b c d e f")]))


def _relay(events: list[str]) -> OpenAIUpstreamEngine:
    body = "".join(f"data: {e}\n\n" for e in events).encode()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": MODEL}]})
        assert json.loads(request.content)["logprobs"] is True  # asked for them
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    transport = httpx.MockTransport(answer)
    return OpenAIUpstreamEngine("http://upstream.test/v1", served=MODEL, transport=transport)


def _event(text: str, logprobs: object = None, finish: str | None = None) -> str:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return json.dumps({"choices": [choice]})


async def test_the_relay_maps_the_upstreams_logprobs_and_warns_once_without_them(
    caplog,
) -> None:
    accent = {"token": "é", "bytes": [195, 169], "logprob": -0.5}
    half = {"token": "\ufffd", "bytes": [240, 159], "logprob": -2.0}  # half an emoji
    no_bytes = {"token": " ok", "bytes": None, "logprob": -0.125}
    engine = _relay([
        _event("é", {"content": [accent]}),
        _event("", {"content": [half]}),
        _event(" ok", {"content": [no_bytes]}, "stop"),
        "[DONE]",
    ])  # fmt: skip
    request = GenerationRequest((Message("user", "hi"),))
    chunks = [c async for c in engine.stream(request)]
    tokens = [t for c in chunks for t in c.tokens]
    assert tokens == [
        TokenEvidence(b"\xc3\xa9", -0.5),
        TokenEvidence(b"\xf0\x9f", -2.0),
        TokenEvidence(b" ok", -0.125),
    ]
    assert chunks[-1].completion_tokens == 3
    await engine.close()

    bare = _relay([_event("Hel"), _event("lo", finish="stop"), "[DONE]"])
    with caplog.at_level(logging.WARNING, logger="troop.worker.engine"):
        for _ in range(2):
            chunks = [c async for c in bare.stream(request)]
            assert not any(c.tokens for c in chunks)
    assert sum("no logprobs" in r.getMessage() for r in caplog.records) == 1
    await bare.close()


async def test_a_relay_without_logprobs_sends_no_evidence_and_an_empty_digest(
    start_worker, ticket_signer, recording_coordinator
) -> None:
    engine = _relay([_event("Hel"), _event("lo", finish="stop"), "[DONE]"])
    async with start_worker(engine=engine) as worker:
        chunks = await stream(worker, ticket_signer, chat(ASK), job_id="job-bare")
        await recording_coordinator.wait_for(lambda c: c.receipt_for("job-bare"), 10)
    assert "".join(c.delta for c in chunks) == "Hello"
    assert not chunks[-1].evidence and not chunks[-1].evidence_signature
    assert recording_coordinator.receipt_for("job-bare").receipt.evidence_sha256 == b""


@pytest.mark.parametrize("shift", ["nan", "x"])
def test_the_logprob_shift_setting_refuses_what_is_not_a_number(shift: str) -> None:
    from troop_common.config import ConfigError

    with pytest.raises(ConfigError, match="TROOP_WORKER_FAKE_LOGPROB_SHIFT"):
        WorkerSettings.from_env({"TROOP_WORKER_FAKE_LOGPROB_SHIFT": shift})


async def test_an_engine_failing_mid_stream_still_signs_the_tokens_it_made(
    start_worker, ticket_signer, recording_coordinator
) -> None:
    class FallsOver(FakeEngine):
        async def stream(self, request):
            async for n, chunk in _numbered(super().stream(request)):
                if n == 2:
                    raise RuntimeError("the accelerator fell over")
                yield chunk

    async with start_worker(engine=FallsOver([MODEL], delay_s=0.001)) as worker:
        chunks = await stream(worker, ticket_signer, chat(ASK), job_id="job-falls")
        await recording_coordinator.wait_for(lambda c: c.receipt_for("job-falls"), 10)
        node_key = worker.identity.public_key_hex
    last = chunks[-1]
    assert last.finish_reason == common_pb2.FINISH_REASON_ERROR
    tokens = tokens_of(open_evidence(last.evidence, last.evidence_signature, node_key))
    assert close(tokens, scored([("user", ASK)])[:2])
    receipt = recording_coordinator.receipt_for("job-falls").receipt
    assert receipt.evidence_sha256 == hashlib.sha256(last.evidence).digest()


async def _numbered(chunks):
    n = 0
    async for chunk in chunks:
        yield n, chunk
        n += 1
