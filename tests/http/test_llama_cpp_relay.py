"""A worker relaying to llama.cpp's own server: the donor's alternative engine, for real.

The upstream is llama.cpp's OpenAI-compatible server (llama-cpp-python, installed by
scripts/llama-server-env) on the SmolLM2 GGUF the built-in engine loads; the worker runs
`--engine openai` in front of it. llama.cpp sends no usage with a stream, so the relay
counts the deltas it passes on, and that count is what the ledger settles on. Killing
llama.cpp mid-stream stands for the donor's server crashing. Started without
`--interrupt_requests False`, llama.cpp cuts a stream short for the next request: that must
be a failed (refunded) job, not a short answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import openai
import pytest

from bench.llama_cpp import ALIAS, LlamaServer
from bench.prompts import MAX_TOKENS, PROMPTS
from tests.conftest import Mesh
from tests.http.conftest import MODEL
from troop_client import ChatOptions, Message, TroopClient
from troop_common.errors import Unavailable
from troop_common.keys import Identity
from troop_coordinator.pricing import ModelPrice
from troop_worker.engine.openai_upstream import OpenAIUpstreamEngine

pytestmark = pytest.mark.model

QUESTION = PROMPTS[0]
# An answer far longer than the moment between its first token and the kill.
LONG = "Write a long story about a lighthouse keeper and the sea, with many details."


@asynccontextmanager
async def relayed_by_a_worker(start_mesh, server: LlamaServer) -> AsyncIterator[Mesh]:
    """The network's only worker serves MODEL by relaying to llama.cpp."""
    engine = OpenAIUpstreamEngine(server.url, served=MODEL, upstream_model=ALIAS)
    try:
        async with start_mesh(engine=engine) as mesh:
            yield mesh
    finally:
        await engine.close()


async def settled_job(user: TroopClient, job_id: str, eventually):
    async def settled():
        job = await user.job(job_id)
        return job if job.settled else None

    return await eventually(settled, timeout_s=20)


async def test_llama_cpp_streams_through_a_relay_worker_and_the_job_settles_on_counted_tokens(
    llama_server: LlamaServer, start_mesh, eventually
) -> None:
    options = ChatOptions(temperature=0, max_tokens=MAX_TOKENS)
    async with (
        relayed_by_a_worker(start_mesh, llama_server) as mesh,
        TroopClient(mesh.coordinator, Identity.generate()) as user,
        TroopClient(mesh.coordinator, Identity.load_or_create(mesh.owner_key)) as owner,
    ):
        await user.join()
        user_before = (await user.balance()).balance_millicredits
        owner_before = (await owner.balance()).balance_millicredits
        chunks = [c async for c in user.chat([Message("user", QUESTION)], options=options)]
        # What llama.cpp answers to the same request by itself.
        async with openai.AsyncOpenAI(
            base_url=llama_server.url, api_key="unused", max_retries=0
        ) as direct:
            reference = await direct.chat.completions.create(
                model=ALIAS, messages=[{"role": "user", "content": QUESTION}],
                temperature=0, max_tokens=MAX_TOKENS,
            )  # fmt: skip
        offer = next(m for m in await user.models() if m.id == MODEL)
        job = await settled_job(user, chunks[-1].job_id, eventually)
        user_after = (await user.balance()).balance_millicredits
        owner_after = (await owner.balance()).balance_millicredits

    pieces = [c.text for c in chunks if c.text]
    # Token by token, in llama.cpp's order: its answer, relayed as it came.
    assert len(pieces) > 1
    assert "".join(pieces) == reference.choices[0].message.content
    assert chunks[-1].finish_reason == reference.choices[0].finish_reason
    # No usage came from llama.cpp: the relay counted the tokens it passed on, never
    # more than llama.cpp made.
    usage = chunks[-1].usage
    assert usage is not None and reference.usage is not None
    assert usage.completion_tokens == len(pieces) <= reference.usage.completion_tokens
    # llama.cpp's logprobs came with every delta: the node signed one token per completion
    # token, and their bytes are the answer (its key, pinned by the grant, verified them).
    evidence = chunks[-1].evidence
    assert evidence is not None and evidence.job_id == chunks[-1].job_id
    assert len(evidence.tokens) == usage.completion_tokens
    assert b"".join(t.token for t in evidence.tokens).decode() == "".join(pieces)
    assert all(t.logprob <= 0 and t.token_id is None for t in evidence.tokens)
    assert any(t.logprob < 0 for t in evidence.tokens)
    # The ledger settled on that count, at the model's price; the owner earned it all.
    price = ModelPrice(0, offer.prompt_millicredits_per_1k, offer.completion_millicredits_per_1k)
    assert job.state == "charged" and not job.disputed
    assert job.charged_millicredits == price.charge(usage.prompt_tokens, usage.completion_tokens)
    assert job.charged_millicredits > 0
    assert user_before - user_after == job.charged_millicredits == owner_after - owner_before


async def test_llama_cpp_dying_mid_stream_ends_the_answer_with_an_error_and_refunds_it(
    llama_server: LlamaServer, start_mesh, eventually
) -> None:
    options = ChatOptions(temperature=0, max_tokens=256)
    async with (
        relayed_by_a_worker(start_mesh, llama_server) as mesh,
        TroopClient(mesh.coordinator, Identity.generate()) as user,
    ):
        await user.join()
        before = await user.balance()
        answer = user.chat([Message("user", LONG)], options=options)
        first = await anext(answer)
        assert first.text and first.finish_reason is None
        llama_server.kill()  # the first token is out, the rest never will be
        rest = [c async for c in answer]  # no exception: the stream ends, saying why
        job = await settled_job(user, first.job_id, eventually)

        # With llama.cpp down, the next job fails before its first token, naming it.
        with pytest.raises(Unavailable, match=f"the upstream at {llama_server.url} failed"):
            await user.complete([Message("user", QUESTION)], options=options)

        async def nothing_reserved():
            balance = await user.balance()
            return balance if balance.reserved_millicredits == 0 else None

        after = await eventually(nothing_reserved, timeout_s=20)

    assert rest[-1].finish_reason == "error"
    assert all(c.finish_reason is None for c in rest[:-1])
    # A failed job is not paid for: both reservations went back whole.
    assert job.state == "refunded" and job.charged_millicredits == 0
    assert after.balance_millicredits == before.balance_millicredits


async def test_a_stream_llama_cpp_cuts_short_for_another_request_is_an_error_not_an_answer(
    start_llama_server, start_mesh, eventually
) -> None:
    # llama.cpp's default: a new request interrupts the running one, whose stream then
    # ends with `[DONE]` and no finish reason: a cut answer that looks like a whole one.
    async with (
        start_llama_server(interrupt_requests=True) as llama,
        relayed_by_a_worker(start_mesh, llama) as mesh,
        TroopClient(mesh.coordinator, Identity.generate()) as first_user,
        TroopClient(mesh.coordinator, Identity.generate()) as second_user,
    ):
        long = first_user.chat([Message("user", LONG)], options=ChatOptions(max_tokens=256))
        first = await anext(long)
        assert first.text
        other = await second_user.complete([Message("user", QUESTION)])
        rest = [c async for c in long]
        cut = await settled_job(first_user, first.job_id, eventually)
        whole = await settled_job(second_user, other.job_id, eventually)

    assert rest[-1].finish_reason == "error"  # not "stop": the answer was cut short
    assert cut.state == "refunded" and cut.charged_millicredits == 0
    assert other.finish_reason in ("stop", "length") and other.text
    assert whole.state == "charged" and whole.charged_millicredits > 0


async def test_llama_cpp_dying_mid_stream_is_an_unavailable_error_event_on_the_openai_face(
    llama_server: LlamaServer, start_mesh, start_sidecar, eventually
) -> None:
    async with (
        relayed_by_a_worker(start_mesh, llama_server) as mesh,
        start_sidecar(mesh) as sidecar,
        openai.AsyncOpenAI(base_url=sidecar.url, api_key="unused", max_retries=0) as api,
    ):
        stream = await api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": LONG}],
            temperature=0, max_tokens=256, stream=True,
        )  # fmt: skip
        chunks = aiter(stream)
        first = await anext(chunks)
        while not (first.choices and first.choices[0].delta.content):
            first = await anext(chunks)  # the role announcement comes first
        llama_server.kill()
        with pytest.raises(openai.APIError) as caught:
            async for _ in chunks:
                pass
        job = await settled_job(sidecar.troop, first.id.removeprefix("chatcmpl-"), eventually)

    # A Troop error in the stream, as OpenAI clients read one: the upstream is
    # unavailable, which is not an internal error of the network.
    assert caught.value.body == {
        "message": "the job failed on the worker after it started",
        "type": "service_unavailable",
        "param": None,
        "code": "unavailable",
    }
    assert job.state == "refunded" and job.charged_millicredits == 0
