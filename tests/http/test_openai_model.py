"""The acceptance run with the real SmolLM2 model: openai SDK → Envoy → sidecar → worker."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.http.conftest import MODEL

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.model
async def test_real_model_streams_through_envoy(start_mesh, start_sidecar, torch_engine) -> None:
    async with start_mesh(engine=torch_engine) as mesh:
        async with start_sidecar(mesh) as sidecar:
            client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="unused", max_retries=0)
            settings = {"model": MODEL, "messages": QUESTION, "temperature": 0, "seed": 7}
            loop = asyncio.get_running_loop()
            stream = await client.chat.completions.create(
                **settings, max_tokens=24, stream=True, stream_options={"include_usage": True}
            )
            times, deltas, usage = [], [], None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    times.append(loop.time())
                    deltas.append(chunk.choices[0].delta.content)
                usage = chunk.usage or usage
            whole = await client.chat.completions.create(**settings, max_tokens=24)
            await client.close()
    text = "".join(deltas)
    assert "Paris" in text
    assert text == whole.choices[0].message.content
    assert len(deltas) > 3 and times[-1] - times[0] > 0.05  # deltas came as generated
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert 0 < usage.completion_tokens <= 24 and usage.prompt_tokens == whole.usage.prompt_tokens


@pytest.mark.model
async def test_eight_concurrent_requests_from_one_user_are_all_served_as_alone(
    start_mesh, start_sidecar, torch_engine_fp32
) -> None:
    # One user, one worker, 8 requests at once through the OpenAI face: none is refused
    # (those beyond the engine's batch would queue), and batching changes no answer.
    prompts = [f"Name one fact about the number {n}." for n in range(8)]
    async with start_mesh(engine=torch_engine_fp32) as mesh:
        async with start_sidecar(mesh) as sidecar:
            client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="unused", max_retries=0)

            async def ask(prompt: str) -> str:
                stream = await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=0,
                    seed=7,
                    max_tokens=16,
                    stream=True,
                )
                parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
                return "".join(parts)

            alone = [await ask(p) for p in prompts]
            stats = torch_engine_fp32.stats
            steps, rows = stats.decode_steps, stats.rows_decoded
            together = await asyncio.gather(*(ask(p) for p in prompts))
            await client.close()
    assert all(alone)
    assert together == alone
    mean_batch = (stats.rows_decoded - rows) / (stats.decode_steps - steps)
    assert mean_batch > 3  # they ran together, not one after another
