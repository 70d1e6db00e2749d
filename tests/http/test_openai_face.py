"""The OpenAI face through real Envoy → client sidecar → worker, judged by clients we did not
write: the official `openai` SDK and raw HTTP (httpx, as `curl -N` would read it)."""

from __future__ import annotations

import asyncio
import json
import random

import httpx2 as httpx  # the HTTP client the openai SDK itself ships with
import openai
import pytest

from tests.http.conftest import MODEL
from troop_worker.engine.fake import FakeEngine

QUESTION = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}]
ANSWER = "You said: the quick brown fox jumps over the lazy dog"


def sdk(sidecar, api_key: str = "unused", **kwargs) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sidecar.url, api_key=api_key, max_retries=0, **kwargs)


async def test_sdk_streams_deltas_that_join_into_the_whole_answer(sidecar) -> None:
    client = sdk(sidecar)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        stream=True,
        temperature=0,
        seed=1,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    whole = await client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, seed=1
    )
    await client.close()

    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    deltas = "".join(c.choices[0].delta.content or "" for c in content)
    assert deltas == whole.choices[0].message.content == ANSWER
    assert len([c for c in content if c.choices[0].delta.content]) > 3
    assert content[-1].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens == len(ANSWER.split())
    assert usage.prompt_tokens == whole.usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason == "stop"


async def test_raw_sse_arrives_line_by_line_and_ends_with_done(sidecar) -> None:
    body = {"model": MODEL, "messages": QUESTION, "stream": True, "stop": ["lazy"]}
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[float, str]] = []
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream("POST", f"{sidecar.url}/chat/completions", json=body) as reply:
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/event-stream")
            async for line in reply.aiter_lines():
                if line:
                    arrivals.append((loop.time(), line))
    lines = [line for _, line in arrivals]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    events = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == "You said: the quick brown fox jumps over the "  # cut before "lazy"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    # Incremental: the words arrive spread over the generation, not in one burst.
    assert arrivals[-1][0] - arrivals[1][0] > 0.05


async def test_models_and_legacy_completions(sidecar) -> None:
    client = sdk(sidecar)
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    model = await client.models.retrieve(MODEL)
    assert (model.id, model.object, model.owned_by) == (MODEL, "model", "troop")
    # Troop's extra: what a job costs, in millicredits per 1,000 tokens.
    pricing = (model.model_extra or {})["pricing"]
    assert pricing["completion_millicredits_per_1k_tokens"] > 0
    assert pricing == (models.data[0].model_extra or {})["pricing"]
    with pytest.raises(openai.NotFoundError, match="no live node serves model 'org/other'"):
        await client.models.retrieve("org/other")  # ids may hold a slash
    completion = await client.completions.create(model=MODEL, prompt="one two", max_tokens=3)
    assert completion.choices[0].text == "You said: one"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3
    await client.close()


async def test_bad_input_is_a_400_with_an_openai_error(sidecar) -> None:
    client = sdk(sidecar)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=QUESTION, n=2)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "n"
    assert "only n=1 is supported" in caught.value.message
    await client.close()


async def test_a_body_envoy_cannot_parse_is_a_400_in_openai_shape(sidecar) -> None:
    # The transcoder refuses these before our servicer runs; Envoy's own reply still
    # reads as an OpenAI error, not text/plain.
    client = sdk(sidecar)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages="hello")  # not a list
    assert caught.value.body["type"] == "invalid_request_error"
    assert "messages" in caught.value.message
    await client.close()
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=10) as http:
        garbage = await http.post("/chat/completions", content=b"{not json")
        unknown = await http.get("/no-such-endpoint")
    assert garbage.status_code == 400
    assert garbage.headers["content-type"] == "application/json"
    assert garbage.json()["error"]["type"] == "invalid_request_error"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_url"


# Values of every JSON type, for fields that expect one of them.
ODD_VALUES = [None, True, 0, -1, 2**63, 1.5, 1e308, "", "x", "\u0000", [], [1, "a"], {},
              {"role": 7}, [{"type": "image_url"}],
              [{"role": "user", "content": {"a": 1}}]]  # fmt: skip
CHAT_FIELDS = ["model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens",
               "stop", "seed", "stream", "stream_options", "n", "user"]  # fmt: skip


async def test_json_of_the_wrong_shape_is_always_an_openai_4xx(sidecar) -> None:
    # Each body: a valid request with one to three fields replaced by a value of another
    # type or range. Whoever refuses it (Envoy's parser or the servicer), the answer is
    # an OpenAI error a client can show, never a 500 or an empty body.
    rng = random.Random(20261127)
    unclear = []
    async with httpx.AsyncClient(base_url=sidecar.url, timeout=30) as http:
        for _ in range(60):
            body: dict[str, object] = {"model": MODEL, "messages": QUESTION, "max_tokens": 4}
            for name in rng.sample(CHAT_FIELDS, rng.randint(1, 3)):
                body[name] = rng.choice(ODD_VALUES)
            reply = await http.post("/chat/completions", json=body)
            if reply.status_code == 200:
                continue  # a body that happens to be valid (e.g. "user": "x")
            error = reply.json().get("error", {})
            if not (400 <= reply.status_code < 500 and error.get("message")):
                unclear.append(f"{reply.status_code} {reply.text[:120]} for {body!s:.200}")
    assert unclear == []


async def test_unknown_model_is_a_503_before_the_stream(sidecar) -> None:
    client = sdk(sidecar)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="no-such-model", messages=QUESTION, stream=True)
    assert caught.value.status_code == 503
    assert "no-such-model" in caught.value.message
    await client.close()


async def test_wrong_local_api_key_is_authentication_error(mesh, start_sidecar) -> None:
    async with start_sidecar(mesh, api_keys=("sk-right",)) as sidecar:
        wrong = sdk(sidecar, api_key="sk-wrong")
        with pytest.raises(openai.AuthenticationError) as caught:
            await wrong.chat.completions.create(model=MODEL, messages=QUESTION)
        assert caught.value.status_code == 401
        assert "Incorrect API key" in caught.value.message
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
        right = sdk(sidecar, api_key="sk-right")
        reply = await right.chat.completions.create(model=MODEL, messages=QUESTION)
        assert reply.choices[0].message.content == ANSWER
        await wrong.close()
        await right.close()


async def test_node_job_limit_is_rate_limit_error_with_retry_after(
    start_mesh, start_sidecar
) -> None:
    # The real RESOURCE_EXHAUSTED today: the worker's per-user job limit.
    engine = FakeEngine([MODEL], delay_s=0.1)
    async with start_mesh(engine=engine, max_jobs_per_user=1) as mesh:
        async with start_sidecar(mesh) as sidecar:
            client = sdk(sidecar)
            long = [{"role": "user", "content": " ".join(["word"] * 40)}]
            busy = await client.chat.completions.create(model=MODEL, messages=long, stream=True)
            first = await anext(aiter(busy))  # the first job now holds the user's slot
            assert first.choices[0].delta.role == "assistant"
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model=MODEL, messages=QUESTION)
            assert caught.value.status_code == 429
            assert caught.value.response.headers["retry-after"] == "1"
            assert "jobs" in caught.value.message
            await busy.close()
            await client.close()


async def test_the_coordinators_authorize_limit_is_a_rate_limit_error(
    start_mesh, start_sidecar
) -> None:
    limits = {"rate_limits": "Authorize=1/3600@user"}
    async with start_mesh(coordinator_overrides=limits) as mesh:
        async with start_sidecar(mesh) as sidecar:
            client = sdk(sidecar)
            await client.chat.completions.create(model=MODEL, messages=QUESTION)
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model=MODEL, messages=QUESTION)
            await client.close()
    assert caught.value.status_code == 429
    assert 3500 <= int(caught.value.response.headers["retry-after"]) <= 3601
    assert "rate limit: 1 Authorize calls per hour" in caught.value.message


async def test_keepalives_while_waiting_for_the_first_token(start_mesh, start_sidecar) -> None:
    async with start_mesh(engine=FakeEngine([MODEL], delay_s=0.6)) as mesh:
        async with start_sidecar(mesh, keepalive_s=0.1) as sidecar:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
            async with httpx.AsyncClient(timeout=30) as http:
                reply = await http.post(f"{sidecar.url}/chat/completions", json=body)
    text = reply.text
    assert text.startswith(": keep-alive\n\n")
    assert text.index(": keep-alive") < text.index("data: {")
    assert text.endswith("data: [DONE]\n\n")


async def test_client_going_away_cancels_the_worker_job(start_mesh, start_sidecar, eventually):
    async with start_mesh(engine=FakeEngine([MODEL], delay_s=0.2)) as mesh:
        async with start_sidecar(mesh) as sidecar:
            long = [{"role": "user", "content": " ".join(["word"] * 50)}]  # ~10 s to generate
            body = {"model": MODEL, "messages": long, "stream": True}
            async with httpx.AsyncClient(timeout=30) as http:
                async with http.stream("POST", f"{sidecar.url}/chat/completions", json=body) as r:
                    seen = 0
                    async for line in r.aiter_lines():
                        seen += line.startswith("data: ")
                        if seen == 3:
                            break
                assert mesh.worker.limiter.active == 1
            # The HTTP connection is gone: the worker job must stop long before its 10 s.
            await eventually(lambda: mesh.worker.limiter.active == 0, timeout_s=3)
            # ... and the user is charged for what was generated (settled from the receipt).
            troop = sidecar.troop
            await eventually(lambda: _settled(troop), timeout_s=10)


async def _settled(troop) -> bool:
    balance = await troop.balance()
    return balance.reserved_millicredits == 0


class BreaksMidStream(FakeEngine):
    """A real engine that fails after its third piece (as a GPU falling over would)."""

    async def stream(self, request):
        sent = 0
        async for chunk in super().stream(request):
            yield chunk
            sent += 1
            if sent == 3:
                raise RuntimeError("the accelerator fell over")


async def test_a_failure_after_the_stream_started_arrives_as_an_error_event(
    start_mesh, start_sidecar
) -> None:
    async with start_mesh(engine=BreaksMidStream([MODEL], delay_s=0.01)) as mesh:
        async with start_sidecar(mesh) as sidecar:
            body = {"model": MODEL, "messages": QUESTION, "stream": True}
            async with httpx.AsyncClient(timeout=30) as http:
                reply = await http.post(f"{sidecar.url}/chat/completions", json=body)
    assert reply.status_code == 200  # the headers had gone out before the failure
    events = [e for e in reply.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))
    assert set(error) == {"error"} and error["error"]["message"]
    deltas = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    text = "".join(d["choices"][0]["delta"].get("content", "") for d in deltas if d["choices"])
    assert text == "You said: the"  # what was made before the failure, then the error


async def test_insufficient_credits_is_a_402_with_a_readable_message(
    start_mesh, start_sidecar
) -> None:
    starved = {"starter_credits": 5}  # a default job reserves about 10 credits
    async with start_mesh(coordinator_overrides=starved) as mesh:
        async with start_sidecar(mesh) as sidecar:
            client = sdk(sidecar)
            with pytest.raises(openai.APIStatusError) as caught:
                await client.chat.completions.create(model=MODEL, messages=QUESTION)
            await client.close()
    assert caught.value.status_code == 402
    assert "insufficient credits" in caught.value.message


async def test_an_unserved_model_is_an_answer_that_leaves_the_breaker_closed(sidecar) -> None:
    # "No node serves this model" is the coordinator answering, not a transport failure:
    # five of them (the breaker's threshold) must not make the sidecar fail every model.
    breaker = sidecar.troop.coordinator.breaker
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(breaker.threshold):
            body = {"model": "no-such-model", "messages": QUESTION}
            reply = await http.post(f"{sidecar.url}/chat/completions", json=body)
            assert reply.status_code == 503
            error = reply.json()["error"]
            assert (error["type"], error["code"]) == ("service_unavailable", "no_node_available")
            assert "no-such-model" in error["message"]
    assert breaker.state == "closed"
    client = sdk(sidecar)
    reply = await client.chat.completions.create(model=MODEL, messages=QUESTION)
    await client.close()
    assert reply.choices[0].message.content == ANSWER


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_every_answer_says_what_the_protocol_cost(sidecar, stream: bool) -> None:
    body = {"model": MODEL, "messages": QUESTION, "stream": stream}
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream("POST", f"{sidecar.url}/chat/completions", json=body) as reply:
            assert reply.status_code == 200
            overhead = reply.headers.get("x-troop-overhead-ms")
            await reply.aread()
    # Through Envoy as an HTTP header: the sidecar's share plus the worker's, in ms.
    assert overhead is not None
    assert 0 <= float(overhead) < 60_000
