"""Resuming an answer on another node: a real worker continues the reply it is given
(`ChatCompletionRequest.continuation`) where the first node stopped, counting it as prompt;
an engine that cannot continue refuses before the ticket is spent."""

from __future__ import annotations

import grpc
import pytest
from worker_testing import chat, collect, make_issuer

from troop_common.proto import inference_pb2_grpc
from troop_worker.engine import GenerationRequest, Message
from troop_worker.engine.fake import FakeEngine

QUESTION = "the quick brown fox jumps over the lazy dog"


async def test_a_continuation_resumes_the_answer_where_it_stopped(inference, issue) -> None:
    whole = await collect(inference, chat(QUESTION), issue())
    full = "".join(c.delta for c in whole)
    for cut in (1, 4, 9):  # words the first node delivered before it failed
        words = FakeEngine.answer(GenerationRequest(messages=(Message("user", QUESTION),)))
        said = "".join(words[:cut])
        rest = await collect(inference, chat(QUESTION, continuation=said), issue())
        assert said + "".join(c.delta for c in rest) == full  # nothing lost, nothing twice
        usage = rest[-1].usage
        assert usage.completion_tokens == whole[-1].usage.completion_tokens - cut
        assert usage.prompt_tokens == whole[-1].usage.prompt_tokens + len(said.split())


class _CannotContinue(FakeEngine):
    """The fake engine declaring, like the OpenAI-compatible relay, that it cannot continue."""

    continues_answers = False


async def test_an_engine_that_cannot_continue_refuses_before_the_ticket_is_spent(
    start_worker, ticket_signer
) -> None:
    async with start_worker(engine=_CannotContinue(delay_s=0.001)) as worker:
        issue = make_issuer(ticket_signer, worker)
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            ticket = issue()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await collect(stub, chat(QUESTION, continuation="You said:"), ticket)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "continue" in (caught.value.details() or "")
            # The ticket was not spent: the same ticket serves a new answer.
            chunks = await collect(stub, chat(QUESTION), ticket)
            assert "".join(c.delta for c in chunks) == f"You said: {QUESTION}"
