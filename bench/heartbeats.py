"""Heartbeat ingest and node discovery at 10,000 nodes: PostgreSQL + Redis vs the embedded default.

    .venv/bin/python -m bench.heartbeats [--nodes 10000] [--seconds 5] [--senders 64]

For each backend a real coordinator process (`python -m troop_coordinator`) is started on a
fresh database, as `bench.ledger_throughput` does, with node admission open (the default; every
node has its own key), endpoint verification off (`TROOP_VERIFY_NODE_ENDPOINTS=0`: the bench's
nodes are bare identities with no worker answering on their endpoints, as in the tests), rate
limits off and a node TTL of an hour (no node expires mid-run). Then:

1. register: N nodes heartbeat once each (the first beat binds the node id: a database write);
2. heartbeats: `--senders` concurrent senders replay pre-signed heartbeats of the N nodes as fast
   as the coordinator takes them for `--seconds`. Two figures: heartbeats/s as the client saw
   them, and the coordinator process's CPU time per heartbeat (from /proc), whose inverse is
   the rate one core of the coordinator ingests, whoever else uses the machine;
3. discovery: ListNodes' first page alone, one call at a time (its own cost); then, while
   heartbeats arrive at N / interval per second (what N nodes at a 5 s interval send; fewer
   if the coordinator cannot take them), 4 callers call ListNodes 10 times a second each and
   4 call Authorize (which includes the ledger's reservation) 5 times a second each;
   p50/p99 of each. Under load, latency includes waiting behind the heartbeats in flight;
4. pick: Authorize's node choice alone, `registry.pick` on a registry of the backend's kind
   (in this process; on Redis, against the same server) holding N nodes, 20 heartbeats
   landing between picks; on Redis written through one replica and picked through
   another, so the picks include the mirror's refreshes; p50/p99.

The client is kept off the critical path: assertions are signed and requests serialized
before the clock starts, and calls carry raw bytes. Its own CPU use is printed too.
Needs PostgreSQL (TROOP_BENCH_PG) and Redis (TROOP_BENCH_REDIS), like bench.ledger_throughput.
`run(...)` returns the figures as dicts (for a later `scripts/bench`); `main()` prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc

from bench.ledger_throughput import (
    PG_ADMIN,
    REDIS_URL,
    clear_prefix,
    postgres_database,
)
from bench.processes import COORDINATOR, free_port, running
from bench.streams import percentile
from troop_common.assertions import create_assertion
from troop_common.keys import Identity
from troop_common.proto import COORDINATOR_SERVICE
from troop_common.proto import coordinator_pb2 as pb
from troop_common.stores import connect_redis
from troop_coordinator.redis_registry import DISCOVERY_REFRESH_S, RedisNodeRegistry
from troop_coordinator.registry import (
    LiveNode,
    MemoryNodeRegistry,
    NodeHardware,
    NodeLoad,
    NodeRegistry,
)

MODEL = "bench-model"
GOAL_HEARTBEATS_PER_S = 2000.0
GOAL_DISCOVERY_P99_MS = 20.0
HEARTBEAT_INTERVAL_S = 5.0
DISCOVERY_CALLERS = 4
# Each discovery caller's pace: discovery is measured under load, not as the load.
LIST_PER_S = 10.0
AUTHORIZE_PER_S = 5.0
Metadata = tuple[tuple[str, str], ...]
_HEARTBEAT = f"/{COORDINATOR_SERVICE}/Heartbeat"
_LIST_NODES = f"/{COORDINATOR_SERVICE}/ListNodes"
_AUTHORIZE = f"/{COORDINATOR_SERVICE}/Authorize"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

__all__ = ["PG_ADMIN", "main", "run"]


@dataclass
class BenchNode:
    node_id: str
    identity: Identity
    request: bytes  # the serialized HeartbeatRequest (the same every beat)


@dataclass
class Calls:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = f"{type(exc).__name__}: {getattr(exc, 'details', lambda: exc)()}"


def _nodes(count: int) -> list[BenchNode]:
    owner = Identity.generate().public_key_hex
    nodes = []
    for i in range(count):
        node_id = f"bench-{i:05d}"
        request = pb.HeartbeatRequest(
            node_id=node_id,
            endpoint=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:7000",
            models=[MODEL],
            load=pb.NodeLoad(active_jobs=i % 3, queue_depth=0, max_concurrent_jobs=4),
            hardware=pb.NodeHardware(device="cpu", cpu_count=2, memory_bytes=1 << 30),
            owner_public_key=owner,
        )
        nodes.append(BenchNode(node_id, Identity.generate(), request.SerializeToString()))
    return nodes


def _signed(nodes: list[BenchNode], rounds: int) -> list[tuple[bytes, Metadata]]:
    """`rounds` heartbeats of every node, round-robin, each with its own fresh assertion."""
    return [
        (node.request, (("authorization", f"Bearer {create_assertion(node.identity)}"),))
        for _ in range(rounds)
        for node in nodes
    ]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@contextlib.asynccontextmanager
async def coordinator(env: dict[str, str], data_dir: Path) -> AsyncIterator[tuple[str, int]]:
    """A `python -m troop_coordinator` process; yields (address, pid) once it serves."""
    port = free_port()
    full = {
        **env,
        "TROOP_COORDINATOR_PORT": str(port),
        "TROOP_DATA_DIR": str(data_dir),
        "TROOP_STARTER_CREDITS": str(10**9),
        "TROOP_NODE_TTL_SECONDS": "3600",
        "TROOP_HEARTBEAT_INTERVAL_SECONDS": str(int(HEARTBEAT_INTERVAL_S)),
        "TROOP_NODE_ADMISSION": "open",
        "TROOP_VERIFY_NODE_ENDPOINTS": "0",  # bare identities: no worker on the endpoints
        "TROOP_RATE_LIMITS": "",  # the coordinator's capacity, not the limits, is measured
        "TROOP_MAX_OPEN_JOBS_PER_USER": str(10**6),  # Authorize loops leave jobs open
    }
    async with running("coordinator", COORDINATOR, full, data_dir, port) as (address, process):
        yield address, process.pid


async def _beat(
    channel: grpc.aio.Channel,
    beats: Iterator[tuple[bytes, Metadata]],
    senders: int,
    seconds: float,
    calls: Calls,
    rate: float = 0.0,
) -> tuple[int, float]:
    """Send beats from `beats` with `senders` in flight for `seconds` (or until `beats` runs
    out), at most `rate` per second when given; (sent, elapsed seconds)."""
    heartbeat = channel.unary_unary(_HEARTBEAT)
    sent = 0
    start = time.perf_counter()
    stop_at = start + seconds

    async def sender() -> None:
        nonlocal sent
        for request, metadata in beats:
            now = time.perf_counter()
            if now >= stop_at:
                return
            if rate:
                due = start + sent / rate
                if due > now:
                    await asyncio.sleep(due - now)
            sent += 1
            t0 = time.perf_counter()
            try:
                await heartbeat(request, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError as exc:
                calls.failed(exc)
                continue
            calls.latencies_ms.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(sender() for _ in range(senders)))
    return sent, time.perf_counter() - start


async def _register(channel: grpc.aio.Channel, nodes: list[BenchNode], senders: int) -> Calls:
    calls = Calls()
    heartbeat = channel.unary_unary(_HEARTBEAT)
    pending = iter(nodes)

    async def sender() -> None:
        for node in pending:
            token = create_assertion(node.identity)
            try:
                await heartbeat(
                    node.request, metadata=(("authorization", f"Bearer {token}"),), timeout=60
                )
            except grpc.aio.AioRpcError as exc:
                calls.failed(exc)

    await asyncio.gather(*(sender() for _ in range(senders)))
    return calls


async def _loop_calls(
    channel: grpc.aio.Channel,
    method: str,
    make: Callable[[], tuple[bytes, Metadata]],
    per_s: float,
    stop: asyncio.Event,
    calls: Calls,
) -> None:
    """Call `method` at most `per_s` times a second until `stop`."""
    rpc = channel.unary_unary(method)
    due = time.perf_counter() + random.random() / per_s  # callers out of step
    while not stop.is_set():
        if due > time.perf_counter():
            await asyncio.sleep(due - time.perf_counter())
        due += 1 / per_s
        request, metadata = make()
        t0 = time.perf_counter()
        try:
            await rpc(request, metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as exc:
            calls.failed(exc)
            continue
        calls.latencies_ms.append((time.perf_counter() - t0) * 1000)


async def _discovery(
    address: str, nodes: list[BenchNode], seconds: float, senders: int
) -> tuple[Calls, Calls, int, float]:
    """ListNodes and Authorize latencies under heartbeats at N / interval per second."""
    listing, authorizing, background = Calls(), Calls(), Calls()
    users = [Identity.generate() for _ in range(DISCOVERY_CALLERS)]
    list_request = pb.ListNodesRequest(model=MODEL).SerializeToString()
    authorize_request = pb.AuthorizeRequest(
        model=MODEL, max_tokens=16, max_prompt_tokens=64
    ).SerializeToString()
    rate = len(nodes) / HEARTBEAT_INTERVAL_S
    beats = iter(_signed(nodes, max(1, round(rate * seconds / len(nodes) + 0.5))))
    async with grpc.aio.insecure_channel(address) as channel:
        stop = asyncio.Event()

        def list_nodes() -> tuple[bytes, Metadata]:
            return list_request, ()

        def authorize_as(user: Identity) -> Callable[[], tuple[bytes, Metadata]]:
            def make() -> tuple[bytes, Metadata]:
                token = create_assertion(user)
                return authorize_request, (("authorization", f"Bearer {token}"),)

            return make

        loops = [
            asyncio.create_task(
                _loop_calls(channel, _LIST_NODES, list_nodes, LIST_PER_S, stop, listing)
            )
            for _ in range(DISCOVERY_CALLERS)
        ] + [
            asyncio.create_task(
                _loop_calls(
                    channel, _AUTHORIZE, authorize_as(u), AUTHORIZE_PER_S, stop, authorizing
                )
            )
            for u in users
        ]
        try:
            _, elapsed = await _beat(channel, beats, senders, seconds, background, rate)
        finally:
            stop.set()
            await asyncio.gather(*loops)
    return listing, authorizing, len(background.latencies_ms), elapsed


async def _idle_listing(address: str, calls: int = 200) -> tuple[float, float]:
    """ListNodes' first page, one call at a time and nothing else: (p50, p99) ms."""
    listing = Calls()
    request = pb.ListNodesRequest(model=MODEL).SerializeToString()
    async with grpc.aio.insecure_channel(address) as channel:
        rpc = channel.unary_unary(_LIST_NODES)
        for _ in range(calls):
            t0 = time.perf_counter()
            await rpc(request, timeout=30)
            listing.latencies_ms.append((time.perf_counter() - t0) * 1000)
    return percentile(listing.latencies_ms, 0.5), percentile(listing.latencies_ms, 0.99)


def _live(i: int, now: float) -> LiveNode:
    return LiveNode(
        node_id=f"pick-{i:05d}",
        node_public_key=secrets.token_hex(32),
        endpoint=f"10.0.{i // 256 % 256}.{i % 256}:7000",
        models=(MODEL,),
        load=NodeLoad(active_jobs=i % 3, max_concurrent_jobs=4),
        hardware=NodeHardware(device="cpu", cpu_count=2, memory_bytes=1 << 30),
        last_seen=now,
    )


async def _pick(backend: str, count: int, picks: int = 200, beats: int = 20) -> Calls:
    """Authorize's node choice alone: `pick` on a registry holding `count` nodes, `beats`
    heartbeats landing between two picks (2,000 beats/s against 100 picks/s). On Redis the
    beats go through one replica and the picks through another, whose mirror follows."""
    calls = Calls()
    redis = connect_redis(REDIS_URL) if backend != "embedded" else None
    prefix = f"troop-bench:{secrets.token_hex(4)}:"
    writer: NodeRegistry
    reader: NodeRegistry
    if redis is None:
        writer = reader = MemoryNodeRegistry(3600)
    else:
        writer = RedisNodeRegistry(redis, 3600, prefix=prefix)
        reader = RedisNodeRegistry(redis, 3600, prefix=prefix)
    try:
        now = time.time()
        nodes = [_live(i, now) for i in range(count)]
        for start in range(0, count, 50):
            await asyncio.gather(*(writer.heartbeat(n) for n in nodes[start : start + 50]))
        await reader.pick(MODEL, time.time())  # a replica's first read loads all there is
        draw = random.Random(7)
        for i in range(picks):
            for node in draw.sample(nodes, beats):
                load = NodeLoad(active_jobs=draw.randrange(4), max_concurrent_jobs=4)
                await writer.heartbeat(replace(node, load=load, last_seen=time.time()))
            if redis is not None:
                await asyncio.sleep(DISCOVERY_REFRESH_S / 4)  # 4 picks a refresh
            t0 = time.perf_counter()
            try:
                chosen = await reader.pick(MODEL, time.time(), exclude={f"pick-{i:05d}"})
            except Exception as exc:
                calls.failed(exc)
                continue
            calls.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if chosen is None:
                calls.failed(RuntimeError("no node picked"))
    finally:
        if redis is not None:
            await redis.aclose()
            await clear_prefix(prefix)
    return calls


def _figure(
    backend: str, name: str, value: float, unit: str, goal: str = "", meets: bool | None = None
) -> dict[str, object]:
    return {
        "backend": backend,
        "figure": name,
        "value": round(value, 3),
        "unit": unit,
        "goal": goal,
        "meets": meets,
    }


async def bench_backend(
    backend: str, env: dict[str, str], nodes: int, seconds: float, senders: int
) -> list[dict[str, object]]:
    fleet = _nodes(nodes)
    figures: list[dict[str, object]] = []
    say = print
    with tempfile.TemporaryDirectory(prefix="troop-bench-") as tmp:
        async with coordinator(env, Path(tmp)) as (address, pid):
            async with grpc.aio.insecure_channel(address) as channel:
                t0 = time.perf_counter()
                registered = await _register(channel, fleet, senders)
                took = time.perf_counter() - t0
                say(f"  {backend}: registered {nodes} nodes in {took:.1f} s")
                if registered.errors:
                    raise RuntimeError(f"registration failed: {registered.first_error}")
                figures.append(_figure(backend, "registrations/s", nodes / took, "1/s"))

                # A pool large enough for several thousand beats a second, signed beforehand.
                rounds = max(1, round(5000 * seconds / nodes + 0.5))
                pool = _signed(fleet, rounds)
                beats = Calls()
                cpu0, client0 = _cpu_s(pid), time.process_time()
                _, elapsed = await _beat(channel, iter(pool), senders, seconds, beats)
                server_cpu, client_cpu = _cpu_s(pid) - cpu0, time.process_time() - client0
            done = len(beats.latencies_ms)
            rate = done / elapsed
            say(f"  {backend}: {rate:.0f} heartbeats/s ({beats.errors} errors)")
            if beats.errors:
                say(f"    first error: {beats.first_error}")
            cpu_ms = server_cpu * 1000 / max(1, done)
            goal = f">= {GOAL_HEARTBEATS_PER_S:.0f}/s"
            figures += [
                _figure(backend, "heartbeats/s", rate, "1/s", goal, rate >= GOAL_HEARTBEATS_PER_S),
                _figure(
                    backend,
                    "heartbeats/s per coordinator core (1 / its CPU per beat)",
                    1000 / cpu_ms if cpu_ms else float("inf"),
                    "1/s",
                    goal,
                    cpu_ms > 0 and 1000 / cpu_ms >= GOAL_HEARTBEATS_PER_S,
                ),
                _figure(backend, "coordinator CPU per heartbeat", cpu_ms, "ms"),
                _figure(backend, "bench client CPU share", client_cpu / elapsed, "cores"),
                _figure(backend, "heartbeat p50", percentile(beats.latencies_ms, 0.5), "ms"),
                _figure(backend, "heartbeat p99", percentile(beats.latencies_ms, 0.99), "ms"),
                _figure(backend, "heartbeat errors", beats.errors, ""),
            ]

            idle = await _idle_listing(address)
            figures += [
                _figure(backend, "ListNodes first page p50, no load", idle[0], "ms"),
                _figure(backend, "ListNodes first page p99, no load", idle[1], "ms"),
            ]
            listing, authorizing, background, took = await _discovery(
                address, fleet, seconds, senders
            )
            say(f"  {backend}: discovery under {background / took:.0f} heartbeats/s")
            for name, calls in (("ListNodes first page", listing), ("Authorize", authorizing)):
                p99 = percentile(calls.latencies_ms, 0.99)
                is_goal = name == "ListNodes first page"
                figures += [
                    _figure(backend, f"{name} p50", percentile(calls.latencies_ms, 0.5), "ms"),
                    _figure(
                        backend,
                        f"{name} p99" + ("" if is_goal else " (includes the reservation)"),
                        p99,
                        "ms",
                        f"< {GOAL_DISCOVERY_P99_MS:.0f} ms" if is_goal else "",
                        p99 < GOAL_DISCOVERY_P99_MS if is_goal else None,
                    ),
                ]
                if calls.errors:
                    say(f"    {name}: {calls.errors} errors, first: {calls.first_error}")
            figures.append(
                _figure(backend, "heartbeats/s during discovery", background / took, "1/s")
            )
    picked = await _pick(backend, nodes)
    p99 = percentile(picked.latencies_ms, 0.99)
    figures += [
        _figure(backend, "pick p50 (in-process)", percentile(picked.latencies_ms, 0.5), "ms"),
        _figure(
            backend,
            "pick p99 (in-process)",
            p99,
            "ms",
            f"< {GOAL_DISCOVERY_P99_MS:.0f} ms",
            p99 < GOAL_DISCOVERY_P99_MS,
        ),
    ]
    return figures


async def run_async(
    nodes: int = 10_000,
    seconds: float = 5.0,
    senders: int = 64,
    backends: tuple[str, ...] = ("embedded", "postgresql+redis"),
) -> list[dict[str, object]]:
    figures: list[dict[str, object]] = []
    if "embedded" in backends:
        figures += await bench_backend("embedded", {}, nodes, seconds, senders)
    if "postgresql+redis" in backends:
        prefix = f"troop-bench:{secrets.token_hex(4)}:"
        async with postgres_database() as url:
            env = {"TROOP_DATABASE_URL": url, "TROOP_REDIS_URL": REDIS_URL}
            try:
                figures += await bench_backend(
                    "postgresql+redis",
                    {**env, "TROOP_REDIS_PREFIX": prefix},
                    nodes,
                    seconds,
                    senders,
                )
            finally:
                await clear_prefix(prefix)
    return figures


def run(
    nodes: int = 10_000,
    seconds: float = 5.0,
    senders: int = 64,
    backends: tuple[str, ...] = ("embedded", "postgresql+redis"),
) -> list[dict[str, object]]:
    """Every figure as {backend, figure, value, unit, goal, meets}."""
    return asyncio.run(run_async(nodes, seconds, senders, backends))


def table(figures: list[dict[str, object]]) -> str:
    lines = ["| backend | figure | value | goal | meets |", "|---|---|---:|---|---|"]
    for f in figures:
        value = str(f["value"])
        if isinstance(f["value"], float):
            value = f"{f['value']:.1f}" if f["value"] >= 10 else f"{f['value']:.2f}"
        meets = {True: "yes", False: "**no**", None: ""}[f["meets"]]  # type: ignore[index]
        lines.append(
            f"| {f['backend']} | {f['figure']} | {value} {f['unit']} | {f['goal']} | {meets} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000, help="nodes registered")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per phase")
    parser.add_argument("--senders", type=int, default=64, help="heartbeats in flight")
    parser.add_argument("--backends", default="embedded,postgresql+redis", help="comma-separated")
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.platform()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()} · {args.nodes} nodes · "
        f"{args.seconds:g} s per phase"
    )
    backends = tuple(b for b in args.backends.split(",") if b)
    figures = run(args.nodes, args.seconds, args.senders, backends)
    print()
    print(table(figures))


if __name__ == "__main__":
    main()
