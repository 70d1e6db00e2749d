"""A worker backed by an OpenAI-compatible server, as a donor running Ollama or vLLM has.

The upstream here is real: Troop's own OpenAI face (Envoy → client sidecar → a worker),
spoken to over HTTP and SSE exactly as Ollama's or vLLM's would be. The relay worker
serves it under another model id, so the network routes to it and not to the upstream's
own worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import openai
import pytest

from tests.conftest import Mesh, free_port, local_worker_settings
from tests.http.conftest import MODEL
from troop_client import ChatOptions, Message, TroopClient
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import RateLimited, Unavailable
from troop_common.keys import Identity
from troop_worker.app import Worker
from troop_worker.engine.fake import FakeEngine
from troop_worker.engine.openai_upstream import OpenAIUpstreamEngine

RELAYED = "relayed-model"
QUESTION = [Message("user", "the quick brown fox jumps over the lazy dog")]


@asynccontextmanager
async def relay(mesh: Mesh, upstream_url: str, tmp_path: Path, eventually) -> AsyncIterator[None]:
    """A second worker on the same coordinator, serving RELAYED from `upstream_url`."""
    engine = OpenAIUpstreamEngine(upstream_url, served=RELAYED, upstream_model=MODEL)
    settings = local_worker_settings(
        mesh.coordinator, tmp_path / "relay", engine="openai", model=RELAYED,
        heartbeat_interval_s=0.5,
    )  # fmt: skip
    try:
        async with Worker(settings, engine=engine), CoordinatorClient(mesh.coordinator) as c:

            async def listed() -> bool:
                return RELAYED in {m.id for m in (await c.list_models()).models}

            await eventually(listed, timeout_s=20)
            yield
    finally:
        await engine.close()


async def test_a_worker_relays_an_openai_compatible_upstream_token_by_token(
    start_mesh, start_sidecar, tmp_path: Path, eventually
) -> None:
    options = ChatOptions(stop=["lazy"], seed=7)
    async with (
        start_mesh(engine=FakeEngine([MODEL], delay_s=0.02)) as mesh,
        start_sidecar(mesh) as upstream,
        relay(mesh, upstream.url, tmp_path, eventually),
        TroopClient(mesh.coordinator, Identity.generate()) as user,
    ):
        chunks = [c async for c in user.chat(QUESTION, model=RELAYED, options=options)]
        # What the upstream itself answers to the same request, through the openai SDK.
        direct = openai.AsyncOpenAI(base_url=upstream.url, api_key="unused", max_retries=0)
        reference = await direct.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION[0].content}],
            stop=["lazy"], seed=7,
        )  # fmt: skip
        await direct.close()

    text = "".join(c.text for c in chunks)
    assert (
        text
        == reference.choices[0].message.content
        == "You said: the quick brown fox jumps over the "
    )
    assert len([c for c in chunks if c.text]) > 3  # relayed as it came, not in one piece
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None and reference.usage is not None
    assert chunks[-1].usage.completion_tokens == reference.usage.completion_tokens


async def test_the_upstreams_rate_limit_reaches_the_user_as_a_rate_limit(
    start_mesh, start_sidecar, tmp_path: Path, eventually
) -> None:
    # The upstream's own coordinator lets its user authorize once an hour.
    limits = {"rate_limits": "Authorize=1/3600@user"}
    async with (
        start_mesh(coordinator_overrides=limits) as mesh,
        start_sidecar(mesh) as upstream,
        relay(mesh, upstream.url, tmp_path, eventually),
        TroopClient(mesh.coordinator, Identity.generate()) as user,
        TroopClient(mesh.coordinator, Identity.generate()) as other,
    ):
        assert (await user.complete(QUESTION, model=RELAYED)).text
        with pytest.raises(RateLimited) as caught:
            await other.complete(QUESTION, model=RELAYED)
    assert "the upstream is busy" in caught.value.message
    assert caught.value.retry_after_seconds >= 1


async def test_an_upstream_that_does_not_serve_the_model_is_named_at_start(
    start_mesh, start_sidecar
) -> None:
    async with start_mesh() as mesh, start_sidecar(mesh) as upstream:
        engine = OpenAIUpstreamEngine(upstream.url, served=RELAYED, upstream_model="llama3:8b")
        with pytest.raises(
            Unavailable, match=f"does not serve model 'llama3:8b'; it serves: {MODEL}"
        ):
            await engine.load()
        await engine.close()


async def test_an_upstream_that_is_down_is_named_at_start() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    engine = OpenAIUpstreamEngine(url, served=RELAYED)
    with pytest.raises(Unavailable, match=f"the upstream at {url} failed"):
        await engine.load()
    await engine.close()
