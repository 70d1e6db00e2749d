"""What the inference path costs over the engine alone: TTFT, token rate, relay ceiling.

    .venv/bin/python -m bench.inference_path                       # --engine fake: the protocol
    .venv/bin/python -m bench.inference_path --engine torch --runs 5   # the real model, per layer

`--engine fake` (the default) measures the protocol against the goals of its issue, with a
real coordinator process (embedded SQLite unless `--database-url`/`--redis-url`) and real
worker processes serving the deterministic fake engine, on this machine's loopback:

1. Added TTFT at 1, 16 and 64 concurrent streams (`--levels`): N clients in a closed loop,
   each asking for `--ttft-tokens` tokens through the Python SDK (Authorize at the
   coordinator, the worker's ticket and presentation checks, the gRPC stream, the node
   proof), from a fake engine paced at `--pace` tokens/s per stream (`PacedEngine`: the
   n-th token due n/pace after the start, as a real engine's); the same N-client
   loop straight on the engine (in this process) is the baseline. Added = path percentile
   − engine percentile. The worker's own `x-troop-overhead-ms` (p50) is shown beside it.
2. Delivered ÷ engine tokens/s with 16 streams (`--rate-streams`) × `--pace` tokens/s,
   `--rate-tokens` tokens each: per stream, (tokens − 1) / (last token − first token),
   median over streams, through the SDK against the engine alone.
3. The relay ceiling: the most tokens/s one worker process relays from an unpaced fake
   engine (`--ceiling-streams` streams of `--ceiling-tokens` tokens), against the floor of
   a bare grpc.aio server process streaming the same messages (one per token) with no
   interceptor, ticket or engine — both read by the same raw client loop in this process,
   in the same run. The worker joins the tokens that pile up while a write is in flight
   into one message, so its messages/s are shown too: tokens/s is what a user gets,
   messages/s compares the two servers message for message.

`run(...)` returns the figures as dicts (`metric`, `streams`, `value`, `unit`, `goal`,
`met`) for `scripts/bench`; `main()` prints them as markdown, each beside its goal.
`--profile DIR` records py-spy profiles of the coordinator, the worker and this process
during each TTFT level (`DIR/<N>-streams/*.txt`, collapsed stacks).

`--engine torch` runs the per-layer table instead: the same greedy request (1) straight to
the engine, (2) through the SDK, (3) through the official `openai` SDK → Envoy → client
sidecar → worker, (4) through the SDK to a worker relaying to (3) (`--engine openai`);
medians of TTFT and tokens/s and their ratio to the engine, all in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.processes import free_port, running
from bench.profile import recording
from bench.streams import percentile
from troop_client import ChatOptions, Message, TroopClient
from troop_client.settings import ClientSettings
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.node_proof import NONCE_HEADER, new_nonce
from troop_common.presentation import PRESENTATION_HEADER, sign_presentation
from troop_common.proto import inference_pb2, inference_pb2_grpc
from troop_worker.engine import GenerationRequest
from troop_worker.engine import Message as EngineMessage
from troop_worker.engine.fake import FakeEngine
from troop_worker.engine.types import FinishReason, GenerationChunk

MODEL = "smollm2-135m-instruct"
RELAYED = "relayed"  # the relay worker's id for MODEL (--engine torch)
QUESTION = "Explain in a few sentences why the sky is blue."
PACED = "fake-paced"  # the worker whose fake engine keeps --pace tokens/s per stream
UNPACED = "fake-unpaced"  # the worker whose fake engine goes as fast as it can

# The goals (issue 12), on 2 cores over loopback.
GOAL_ADDED_TTFT_P50_MS = 5.0
GOAL_ADDED_TTFT_P95_MS = 10.0
GOAL_DELIVERED_RATIO = 0.97
GOAL_CEILING_RATIO = 0.5  # within 2× of the bare-gRPC floor


# --- figures -----------------------------------------------------------------------------


@dataclass
class Sample:
    """One stream as its reader saw it (seconds from the request)."""

    ttft_s: float
    total_s: float
    tokens: int
    first_s: float = 0.0
    last_s: float = 0.0
    worker_overhead_ms: float | None = None

    @property
    def stream_rate(self) -> float | None:
        """Tokens/s between the first and the last token (None for a single token)."""
        span = self.last_s - self.first_s
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else None


def figure(
    metric: str, streams: int, value: float, unit: str, goal: str = "", met: bool | None = None
) -> dict[str, Any]:
    return {
        "metric": metric,
        "streams": streams,
        "value": round(value, 3),
        "unit": unit,
        "goal": goal,
        "met": met,
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| figure | streams | measured | goal | met |", "|---|---:|---:|---|:---:|"]
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        value = f"{r['value']:.2f} {r['unit']}".strip()
        lines.append(f"| {r['metric']} | {r['streams']} | {value} | {r['goal']} | {met} |")
    return "\n".join(lines)


# --- processes ---------------------------------------------------------------------------


Running = contextlib.AbstractAsyncContextManager[tuple[str, subprocess.Popen[bytes]]]


def _coordinator(data: Path, database_url: str | None, redis_url: str | None) -> Running:
    port = free_port()
    env = {
        "TROOP_COORDINATOR_PORT": str(port),
        "TROOP_DATA_DIR": str(data / "coordinator"),
        "TROOP_STARTER_CREDITS": str(10**9),
        "TROOP_RATE_LIMITS": "",  # the path is measured, not the per-user limits
        "TROOP_MAX_OPEN_JOBS_PER_USER": "1000000",
    }
    if database_url:
        env["TROOP_DATABASE_URL"] = database_url
    if redis_url:
        env["TROOP_REDIS_URL"] = redis_url
        env["TROOP_REDIS_PREFIX"] = f"troop-bench-{port}:"
    command = [sys.executable, "-m", "troop_coordinator"]
    return running("coordinator", command, env, data, port)


def _worker(data: Path, coordinator: str, model: str, delay_s: float) -> Running:
    port = free_port()
    env = {
        "TROOP_WORKER_PORT": str(port),
        "TROOP_COORDINATOR": coordinator,
        "TROOP_WORKER_DATA_DIR": str(data / model),
        "TROOP_WORKER_MODEL": model,
        "TROOP_WORKER_ENGINE": "fake",
        "TROOP_WORKER_MAX_NEW_TOKENS": "100000",
    }
    command = [sys.executable, "-m", "bench.inference_path", "serve-worker", str(delay_s)]
    return running(model, command, env, data, port)


def _bare(data: Path) -> Running:
    port = free_port()
    command = [sys.executable, "-m", "bench.inference_path", "serve-bare", str(port)]
    return running("bare-grpc", command, {}, data, port)


async def serve_worker(delay_s: float) -> None:
    """A worker process of the fake engine at `delay_s` per token, limits out of the way."""
    from troop_worker.app import serve
    from troop_worker.settings import WorkerSettings

    settings = dataclasses.replace(
        WorkerSettings.from_env(os.environ),
        max_concurrent_jobs=1024,  # the most a heartbeat may announce
        max_jobs_per_user=1024,
        rate_limits="",
    )
    await serve(settings, engine=PacedEngine([settings.model], pace_s=delay_s))


class PacedEngine(FakeEngine):
    """The fake engine on a schedule: its n-th token is due `n × pace_s` after the stream
    started, however late the event loop ran the one before, as a real engine's tokens come
    at its own rate rather than the loop's. (`FakeEngine(delay_s=…)` sleeps that long
    between tokens, so every late wake-up slows it down for good: on a busy loop its
    1,000 tokens/s are 600-800.) `pace_s` 0: as fast as the loop goes."""

    def __init__(self, models: Sequence[str], *, pace_s: float) -> None:
        super().__init__(models, delay_s=0.0)
        self.pace_s = pace_s

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        async for chunk in super().stream(request):
            n += 1
            wait = start + n * self.pace_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            yield chunk


class _BareInference(inference_pb2_grpc.InferenceServiceServicer):
    """The same messages the worker sends for the unpaced fake engine, and nothing else."""

    async def ChatCompletion(
        self, request: inference_pb2.ChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.ChatCompletionResponse]:
        generation = GenerationRequest.from_pb(request)
        words = FakeEngine.answer(generation)[: generation.max_tokens]
        prompt = sum(len(m.content.split()) + 1 for m in generation.messages)
        for n, word in enumerate(words, start=1):
            reason = FinishReason.STOP if n == len(words) else None
            yield GenerationChunk(word, reason, prompt, n).to_pb("bare")


async def serve_bare(port: int) -> None:
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(_BareInference(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


# --- load --------------------------------------------------------------------------------


def _prompt(tokens: int) -> str:
    """A user message the fake engine answers with exactly `tokens` words (or more)."""
    return " ".join(f"w{i}" for i in range(max(1, tokens)))


async def _closed_loop(
    streams: int, seconds: float, one: Callable[[], Awaitable[Sample]], at_least: int = 0
) -> list[Sample]:
    """`streams` readers, each starting its next stream as the last ends, for `seconds`
    (and until at least `at_least` streams finished)."""
    samples: list[Sample] = []
    stop_at = time.perf_counter() + seconds

    async def reader() -> None:
        while time.perf_counter() < stop_at or len(samples) < at_least:
            samples.append(await one())

    await asyncio.gather(*(reader() for _ in range(streams)))
    return samples


Piece = tuple[bool, int | None, float | None]  # (has text, tokens so far if known, overhead)


async def _read(chunks: AsyncIterator[Piece], start: float) -> Sample:
    """Time a stream of pieces. Tokens: the last count a piece gave (a worker may send
    several tokens in one message), else one per piece with text."""
    first = last = None
    pieces, counted = 0, None
    overhead = None
    async for has_text, tokens_so_far, worker_overhead in chunks:
        if worker_overhead is not None:
            overhead = worker_overhead
        if tokens_so_far is not None:
            counted = tokens_so_far
        if has_text:
            last = time.perf_counter() - start
            first = last if first is None else first
            pieces += 1
    tokens = counted if counted is not None else pieces
    total = time.perf_counter() - start
    first = total if first is None else first
    return Sample(first, total, tokens, first, last or total, overhead)


def _engine_request(tokens: int) -> GenerationRequest:
    return GenerationRequest(
        messages=(EngineMessage("user", _prompt(tokens)),), temperature=0.0, max_tokens=tokens
    )


async def _engine_stream(engine: FakeEngine, tokens: int) -> Sample:
    async def chunks() -> AsyncIterator[Piece]:
        async for chunk in engine.stream(_engine_request(tokens)):
            yield bool(chunk.text), chunk.completion_tokens, None

    return await _read(chunks(), time.perf_counter())


async def _sdk_stream(troop: TroopClient, model: str, tokens: int) -> Sample:
    messages = [Message("user", _prompt(tokens))]
    options = ChatOptions(temperature=0, max_tokens=tokens)

    async def chunks() -> AsyncIterator[Piece]:
        async for chunk in troop.chat(messages, model=model, options=options):
            overhead = chunk.overhead.worker_ms if chunk.overhead is not None else None
            counted = chunk.usage.completion_tokens if chunk.usage is not None else None
            yield bool(chunk.text), counted, overhead

    return await _read(chunks(), time.perf_counter())


class _RawReader:
    """The same minimal client loop for the worker (ticketed) and the bare server."""

    def __init__(self, channel: grpc.aio.Channel, troop: TroopClient | None, model: str) -> None:
        self.stub = inference_pb2_grpc.InferenceServiceStub(channel)
        self.troop = troop
        self.model = model
        self.messages = 0  # messages read (the worker may put several tokens in one)

    async def stream(self, tokens: int) -> int:
        request = inference_pb2.ChatCompletionRequest(
            model=self.model,
            messages=[{"role": "user", "content": _prompt(tokens)}],
            max_tokens=tokens,
            temperature=0,
        )
        metadata: list[tuple[str, str]] = []
        if self.troop is not None:
            grant = await self.troop.coordinator.authorize(
                self.model, max_tokens=tokens, max_prompt_tokens=len(_prompt(tokens)) + 100
            )
            nonce = new_nonce()
            signed = sign_presentation(self.troop.identity, grant.job_id, grant.node_id, nonce)
            metadata = [
                ("authorization", f"Bearer {grant.ticket}"),
                (NONCE_HEADER, nonce),
                (PRESENTATION_HEADER, signed),
            ]
        received = 0
        async for message in self.stub.ChatCompletion(request, metadata=metadata):
            self.messages += 1
            if message.HasField("usage"):  # a message may carry several tokens
                received = message.usage.completion_tokens
        return received


async def _ceiling(
    reader: _RawReader, streams: int, tokens: int, seconds: float
) -> tuple[float, float]:
    """Tokens/s and messages/s over all streams together, in a closed loop for `seconds`."""
    await reader.stream(tokens)  # warm the channel
    received = 0
    reader.messages = 0
    start = time.perf_counter()
    stop_at = start + seconds

    async def loop() -> None:
        nonlocal received
        while time.perf_counter() < stop_at:
            count = await reader.stream(tokens)  # not `received += await …`: that reads first
            received += count

    await asyncio.gather(*(loop() for _ in range(streams)))
    elapsed = time.perf_counter() - start
    return received / elapsed, reader.messages / elapsed


# --- the run -----------------------------------------------------------------------------


@dataclass
class Options:
    levels: tuple[int, ...] = (1, 16, 64)
    seconds: float = 3.0
    pace: float = 1000.0  # tokens/s per stream of the paced fake engine
    ttft_tokens: int = 16
    rate_streams: int = 16
    rate_tokens: int = 1000
    ceiling_streams: int = 16
    ceiling_tokens: int = 1000
    database_url: str | None = None
    redis_url: str | None = None
    profile: Path | None = None
    progress: Callable[[str], None] = field(default=lambda line: None)


async def _ttft(
    options: Options, troop: TroopClient, engine: PacedEngine, streams: int, pids: dict[str, int]
) -> list[dict[str, Any]]:
    """Added TTFT at `streams` concurrent streams: path percentile − engine percentile."""
    say, tokens = options.progress, options.ttft_tokens
    await _sdk_stream(troop, PACED, tokens)  # warm
    say(f"TTFT, {streams} streams: engine alone")
    base = await _closed_loop(
        streams, options.seconds, lambda: _engine_stream(engine, tokens), at_least=20
    )
    say(f"TTFT, {streams} streams: SDK → coordinator → worker")
    profile = options.profile / f"{streams}-streams" if options.profile else None
    with recording(profile, pids, options.seconds):
        path = await _closed_loop(
            streams, options.seconds, lambda: _sdk_stream(troop, PACED, tokens), at_least=20
        )
    await troop.drain_reports(10)
    base_ms = [s.ttft_s * 1000 for s in base]
    path_ms = [s.ttft_s * 1000 for s in path]
    rows = []
    for q, goal in ((0.5, GOAL_ADDED_TTFT_P50_MS), (0.95, GOAL_ADDED_TTFT_P95_MS)):
        added = percentile(path_ms, q) - percentile(base_ms, q)
        name = f"added TTFT p{round(q * 100)}"
        rows.append(figure(name, streams, added, "ms", f"≤ {goal:g} ms", added <= goal))
    worker = [s.worker_overhead_ms for s in path if s.worker_overhead_ms is not None]
    rows += [
        figure("engine TTFT p50", streams, percentile(base_ms, 0.5), "ms"),
        figure("path TTFT p50", streams, percentile(path_ms, 0.5), "ms"),
        figure("worker's x-troop-overhead-ms p50", streams, percentile(worker, 0.5), "ms"),
        figure("streams measured through the path", streams, len(path), ""),
    ]
    return rows


async def _token_rate(
    options: Options, troop: TroopClient, engine: PacedEngine
) -> list[dict[str, Any]]:
    """Delivered ÷ engine tokens/s per stream, `rate_streams` streams at `pace`."""
    say, n, tokens = options.progress, options.rate_streams, options.rate_tokens
    say(f"token rate, {n} streams × {options.pace:g} tokens/s: engine alone")
    base = await _closed_loop(
        n, options.seconds, lambda: _engine_stream(engine, tokens), at_least=n
    )
    say(f"token rate, {n} streams × {options.pace:g} tokens/s: SDK → worker")
    path = await _closed_loop(
        n, options.seconds, lambda: _sdk_stream(troop, PACED, tokens), at_least=n
    )
    await troop.drain_reports(10)
    engine_rate = statistics.median(r for s in base if (r := s.stream_rate))
    path_rate = statistics.median(r for s in path if (r := s.stream_rate))
    ratio = path_rate / engine_rate
    goal = f"≥ {GOAL_DELIVERED_RATIO}"
    return [
        figure("engine tokens/s per stream (p50)", n, engine_rate, "tok/s"),
        figure("delivered tokens/s per stream (p50)", n, path_rate, "tok/s"),
        figure("delivered ÷ engine tokens/s", n, ratio, "", goal, ratio >= GOAL_DELIVERED_RATIO),
    ]


async def _relay_ceiling(
    options: Options, troop: TroopClient, bare: str, unpaced: str
) -> list[dict[str, Any]]:
    """The unpaced worker's tokens/s against the bare grpc.aio floor, same reader."""
    say, n, tokens = options.progress, options.ceiling_streams, options.ceiling_tokens
    async with (
        grpc.aio.insecure_channel(bare) as bare_channel,
        grpc.aio.insecure_channel(unpaced) as worker_channel,
    ):
        say(f"ceiling, {n} streams: bare grpc.aio")
        floor_reader = _RawReader(bare_channel, None, UNPACED)
        floor, floor_messages = await _ceiling(floor_reader, n, tokens, options.seconds)
        say(f"ceiling, {n} streams: worker")
        relay_reader = _RawReader(worker_channel, troop, UNPACED)
        relay, relay_messages = await _ceiling(relay_reader, n, tokens, options.seconds)
    ratio = relay / floor
    goal = f"≥ {GOAL_CEILING_RATIO} (within 2×)"
    return [
        figure("bare-gRPC floor", n, floor, "tok/s"),
        figure("worker relay ceiling", n, relay, "tok/s"),
        # Like for like per message: the worker joins what piles up during a write.
        figure("bare-gRPC floor, messages", n, floor_messages, "msg/s"),
        figure("worker relay ceiling, messages", n, relay_messages, "msg/s"),
        figure("relay ceiling ÷ bare floor", n, ratio, "", goal, ratio >= GOAL_CEILING_RATIO),
    ]


async def run_async(options: Options) -> list[dict[str, Any]]:
    """The figures of the fake-engine run, each with its goal."""
    delay_s = 1.0 / options.pace
    engine = PacedEngine([PACED], pace_s=delay_s)
    with tempfile.TemporaryDirectory(prefix="troop-bench-path-") as tmp:
        data = Path(tmp)
        async with (
            _coordinator(data, options.database_url, options.redis_url) as (coordinator, c),
            _worker(data, coordinator, PACED, delay_s) as (_, paced),
            _worker(data, coordinator, UNPACED, 0.0) as (unpaced, _),
            _bare(data) as (bare, _),
        ):
            async with CoordinatorClient(coordinator) as probe:
                while {m.id for m in (await probe.list_models()).models} != {PACED, UNPACED}:
                    await asyncio.sleep(0.1)
            settings = ClientSettings(coordinator=coordinator, config_dir=data / "user")
            pids = {"coordinator": c.pid, "worker": paced.pid, "client": os.getpid()}
            async with TroopClient(coordinator, Identity.generate(), settings) as troop:
                await troop.join()
                rows: list[dict[str, Any]] = []
                for streams in options.levels:
                    rows += await _ttft(options, troop, engine, streams, pids)
                rows += await _token_rate(options, troop, engine)
                rows += await _relay_ceiling(options, troop, bare, unpaced)
    return rows


def run(
    levels: Sequence[int] = (1, 16, 64),
    seconds: float = 3.0,
    **options: Any,
) -> list[dict[str, Any]]:
    """Run the fake-engine measurement (blocking); see `Options` for the knobs."""
    return asyncio.run(run_async(Options(levels=tuple(levels), seconds=seconds, **options)))


# --- --engine torch: the per-layer table ------------------------------------------------


@dataclass
class Run:
    ttft_s: float
    total_s: float
    tokens: int


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


async def layers(engine_name: str, runs: int, max_tokens: int) -> list[tuple]:
    """The per-layer table, everything in this process (the original measurement)."""
    from troop_client.sidecar import ClientSidecar, SidecarSettings
    from troop_coordinator.app import Coordinator
    from troop_coordinator.settings import CoordinatorSettings
    from troop_worker.app import Worker
    from troop_worker.engine.openai_upstream import OpenAIUpstreamEngine
    from troop_worker.settings import WorkerSettings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    engine: Any
    if engine_name == "torch":
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
            async with Worker(worker_settings, engine=engine):
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
                        rows = await _measure(engine, troop, sidecar.url, runs, max_tokens)
                    await upstream.close()
    return rows


async def _measure(engine, troop: TroopClient, base_url: str, runs: int, max_tokens: int) -> list:
    import openai

    request = GenerationRequest(
        messages=(EngineMessage("user", QUESTION),), temperature=0.0, max_tokens=max_tokens
    )

    async def direct() -> AsyncIterator[tuple[str, int | None]]:
        async for chunk in engine.stream(request):
            yield chunk.text, chunk.completion_tokens

    async def sdk() -> AsyncIterator[tuple[str, int | None]]:
        options = ChatOptions(temperature=0, max_tokens=max_tokens)
        async for chunk in troop.chat([Message("user", QUESTION)], options=options):
            yield chunk.text, chunk.usage.completion_tokens if chunk.usage else None

    api = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)

    async def via_openai() -> AsyncIterator[tuple[str, int | None]]:
        stream = await api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            temperature=0,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            text = chunk.choices[0].delta.content if chunk.choices else ""
            yield text or "", chunk.usage.completion_tokens if chunk.usage else None

    async def relayed() -> AsyncIterator[tuple[str, int | None]]:
        options = ChatOptions(temperature=0, max_tokens=max_tokens)
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
    for _ in range(runs):  # interleaved, so drift hits every path alike
        for name, path in paths:
            results[name].append(await _timed(path()))
    await api.close()
    baseline_runs = results[paths[0][0]]
    baseline = (
        statistics.median(r.ttft_s for r in baseline_runs) * 1000,
        statistics.median(r.tokens / r.total_s for r in baseline_runs if r.total_s > 0),
    )
    return [
        _summary(name, runs_, None if i == 0 else baseline)
        for i, (name, runs_) in enumerate(results.items())
    ]


LAYERS_HEADER = (
    "| path | TTFT p50 ms | TTFT p99 ms | tokens/s p50 | TTFT vs engine | tok/s vs engine |\n"
    "|---|---:|---:|---:|---:|---:|"
)


# --- entry -------------------------------------------------------------------------------


def _machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve-worker"]:  # a child process of the fake-engine run
        from troop_common.entrypoint import run_until_done

        run_until_done("bench worker", lambda: serve_worker(float(argv[1])))
        return
    if argv[:1] == ["serve-bare"]:
        asyncio.run(serve_bare(int(argv[1])))
        return
    # SIGTERM as Ctrl-C: the child processes are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--engine", choices=["fake", "torch"], default="fake")
    parser.add_argument("--levels", default="1,16,64", help="concurrent streams for TTFT")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per figure")
    parser.add_argument("--pace", type=float, default=1000.0, help="paced engine tokens/s")
    parser.add_argument("--ttft-tokens", type=int, default=16)
    parser.add_argument("--rate-streams", type=int, default=16)
    parser.add_argument("--rate-tokens", type=int, default=1000)
    parser.add_argument("--ceiling-streams", type=int, default=16)
    parser.add_argument("--ceiling-tokens", type=int, default=1000)
    parser.add_argument("--database-url", help="the coordinator's TROOP_DATABASE_URL")
    parser.add_argument("--redis-url", help="the coordinator's TROOP_REDIS_URL")
    parser.add_argument("--profile", type=Path, help="py-spy profiles of each level into DIR")
    parser.add_argument("--runs", type=int, default=5, help="--engine torch: runs per path")
    parser.add_argument("--max-tokens", type=int, default=64, help="--engine torch")
    args = parser.parse_args(argv)
    if args.engine == "torch":
        rows = asyncio.run(layers("torch", args.runs, args.max_tokens))
        print(f"\nengine=torch runs={args.runs} max_tokens={args.max_tokens} greedy; {_machine()}")
        print(LAYERS_HEADER)
        for name, ttft, p99, rate, ttft_ratio, rate_ratio in rows:
            print(f"| {name} | {ttft:.1f} | {p99:.1f} | {rate:.1f} | {ttft_ratio} | {rate_ratio} |")
        return
    figures = run(
        levels=[int(x) for x in args.levels.split(",") if x],
        seconds=args.seconds,
        pace=args.pace,
        ttft_tokens=args.ttft_tokens,
        rate_streams=args.rate_streams,
        rate_tokens=args.rate_tokens,
        ceiling_streams=args.ceiling_streams,
        ceiling_tokens=args.ceiling_tokens,
        database_url=args.database_url,
        redis_url=args.redis_url,
        profile=args.profile,
        progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
    )
    print(f"\nengine=fake, {args.seconds:g} s per figure; {_machine()}\n")
    print(markdown(figures))


if __name__ == "__main__":
    main()
