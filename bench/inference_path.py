"""What each layer of the inference path costs: engine → gRPC worker → Envoy OpenAI face.

    .venv/bin/python -m bench.inference_path [--engine torch|fake] [--runs 5] [--max-tokens 64]

One coordinator, one worker and one client sidecar (with its Envoy) run on this
machine. The same greedy request goes, in turn,
  1. straight to the engine (the baseline),
  2. through the Python SDK: Authorize at the coordinator, then the worker's
     server-streaming RPC (ticket check, node proof, receipt),
  3. through the official `openai` SDK → Envoy → client sidecar → worker,
  4. through the SDK to a second worker whose engine relays to an OpenAI-compatible
     upstream (`--engine openai`), here path 3's own face: what relaying costs.
For each path: time to first token and tokens per second (medians), and their
ratio to the baseline measured in the same run. With `--engine fake` (no
model, no delay) what is left is the protocol's own per-request cost.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import openai

from troop_client import ChatOptions, Message, TroopClient
from troop_client.settings import ClientSettings
from troop_client.sidecar import ClientSidecar, SidecarSettings
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings
from troop_worker.app import Worker
from troop_worker.engine import GenerationRequest
from troop_worker.engine import Message as EngineMessage
from troop_worker.engine.fake import FakeEngine
from troop_worker.engine.openai_upstream import OpenAIUpstreamEngine
from troop_worker.settings import WorkerSettings

MODEL = "smollm2-135m-instruct"
RELAYED = "relayed"  # the relay worker's id for MODEL
QUESTION = "Explain in a few sentences why the sky is blue."


@dataclass
class Run:
    ttft_s: float
    total_s: float
    tokens: int


Path_ = Callable[[], Awaitable[Run]]


def _summary(name: str, runs: list[Run], baseline: tuple[float, float] | None) -> tuple:
    ttft = statistics.median(r.ttft_s for r in runs) * 1000
    rate = statistics.median(r.tokens / r.total_s for r in runs if r.total_s > 0)
    p99 = sorted(r.ttft_s for r in runs)[max(0, int(len(runs) * 0.99) - 1)] * 1000
    if baseline is None:
        return name, ttft, p99, rate, "1.00×", "1.00×"
    return (
        name,
        ttft,
        p99,
        rate,
        f"{ttft / baseline[0]:.2f}×" if baseline[0] else "-",
        f"{rate / baseline[1]:.2f}×",
    )


async def _timed(chunks: AsyncIterator[tuple[str, int | None]]) -> Run:
    start = time.perf_counter()
    first, tokens = None, 0
    async for text, usage in chunks:
        if text and first is None:
            first = time.perf_counter() - start
        if usage is not None:
            tokens = usage
    total = time.perf_counter() - start
    return Run(first if first is not None else total, total, tokens)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["torch", "fake"], default="torch")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.engine == "torch":
        from troop_worker.engine.torch_engine import TorchEngine

        engine = TorchEngine()
        print("loading the model…", flush=True)
        await engine.load()
    else:
        engine = FakeEngine([MODEL], delay_s=0.0)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        coordinator_settings = dataclasses.replace(
            CoordinatorSettings.from_env({}),
            port=0,
            data_dir=data / "coordinator",
            rate_limits="",  # measure the path, not the limits
        )
        async with Coordinator(coordinator_settings) as coordinator:
            worker_settings = dataclasses.replace(
                WorkerSettings.from_env({}),
                port=0,
                coordinator=coordinator.address,
                data_dir=data / "worker",
                rate_limits="",
                heartbeat_interval_s=0.5,
            )
            async with Worker(worker_settings, engine=engine) as worker:
                async with CoordinatorClient(coordinator.address) as probe:
                    while not (await probe.list_nodes()).nodes:
                        await asyncio.sleep(0.1)
                client_settings = ClientSettings(
                    coordinator=coordinator.address, config_dir=data / "user"
                )
                sidecar_settings = SidecarSettings(client=client_settings, http_port=0)
                async with (
                    ClientSidecar(sidecar_settings) as sidecar,
                    TroopClient(coordinator.address, Identity.generate()) as troop,
                ):
                    upstream = OpenAIUpstreamEngine(
                        sidecar.url, served=RELAYED, upstream_model=MODEL
                    )
                    relay_settings = dataclasses.replace(
                        worker_settings, data_dir=data / "relay", engine="openai", model=RELAYED
                    )
                    async with Worker(relay_settings, engine=upstream):
                        async with CoordinatorClient(coordinator.address) as probe:
                            while len((await probe.list_nodes()).nodes) < 2:
                                await asyncio.sleep(0.1)
                        rows = await _measure(engine, troop, sidecar.url, args)
                    await upstream.close()
                _ = worker
    print(
        f"\nengine={args.engine} runs={args.runs} max_tokens={args.max_tokens} greedy; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print("| path | TTFT p50 ms | TTFT p99 ms | tokens/s p50 | TTFT vs engine | tok/s vs engine |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ttft, p99, rate, ttft_ratio, rate_ratio in rows:
        print(f"| {name} | {ttft:.1f} | {p99:.1f} | {rate:.1f} | {ttft_ratio} | {rate_ratio} |")


async def _measure(engine, troop: TroopClient, base_url: str, args) -> list[tuple]:
    request = GenerationRequest(
        messages=(EngineMessage("user", QUESTION),),
        temperature=0.0,
        max_tokens=args.max_tokens,
    )

    async def direct() -> AsyncIterator[tuple[str, int | None]]:
        async for chunk in engine.stream(request):
            yield chunk.text, chunk.completion_tokens

    async def sdk() -> AsyncIterator[tuple[str, int | None]]:
        options = ChatOptions(temperature=0, max_tokens=args.max_tokens)
        async for chunk in troop.chat([Message("user", QUESTION)], options=options):
            yield chunk.text, chunk.usage.completion_tokens if chunk.usage else None

    api = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)

    async def via_openai() -> AsyncIterator[tuple[str, int | None]]:
        stream = await api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            temperature=0,
            max_tokens=args.max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            text = chunk.choices[0].delta.content if chunk.choices else ""
            yield text or "", chunk.usage.completion_tokens if chunk.usage else None

    async def relayed() -> AsyncIterator[tuple[str, int | None]]:
        options = ChatOptions(temperature=0, max_tokens=args.max_tokens)
        chat = troop.chat([Message("user", QUESTION)], model=RELAYED, options=options)
        async for chunk in chat:
            yield chunk.text, chunk.usage.completion_tokens if chunk.usage else None

    paths = [
        ("engine (baseline)", direct),
        ("SDK → gRPC worker", sdk),
        ("openai SDK → Envoy → sidecar → worker", via_openai),
        ("SDK → relay worker → (3)", relayed),
    ]
    results: dict[str, list[Run]] = {name: [] for name, _ in paths}
    for _name, path in paths:  # warm each path once
        await _timed(path())
    for _ in range(args.runs):  # interleaved, so drift hits every path alike
        for name, path in paths:
            results[name].append(await _timed(path()))
    await api.close()
    baseline_runs = results[paths[0][0]]
    baseline = (
        statistics.median(r.ttft_s for r in baseline_runs) * 1000,
        statistics.median(r.tokens / r.total_s for r in baseline_runs if r.total_s > 0),
    )
    return [
        _summary(name, runs, None if i == 0 else baseline)
        for i, (name, runs) in enumerate(results.items())
    ]


if __name__ == "__main__":
    asyncio.run(main())
