"""Authorize + settle throughput and latency: PostgreSQL + Redis vs the embedded default.

    .venv/bin/python -m bench.ledger_throughput [--seconds 5] [--levels 1,16,64]

For each backend a real coordinator process (`python -m troop_coordinator`) is
started on a fresh database; one node heartbeats; N concurrent clients (N in
--levels), each its own user, loop authorize -> countersign -> signed receipt (settles) for
--seconds. Prints cycles/s and p50/p99 latency of each call, and the ratio of
PostgreSQL + Redis to the embedded default measured in the same run. Needs
PostgreSQL (TROOP_BENCH_PG, default postgresql://postgres@127.0.0.1:5432/postgres)
and Redis (TROOP_BENCH_REDIS, default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis

from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.node_proof import new_nonce
from troop_common.presentation import sign_presentation
from troop_common.proto import coordinator_pb2 as pb
from troop_common.receipts import sign_receipt

MODEL = "bench-model"
PG_ADMIN = os.environ.get("TROOP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TROOP_BENCH_REDIS", "redis://127.0.0.1:6379/0")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Samples:
    authorize_ms: list[float] = field(default_factory=list)
    settle_ms: list[float] = field(default_factory=list)
    cycle_ms: list[float] = field(default_factory=list)
    errors: int = 0


@dataclass
class Row:
    backend: str
    clients: int
    cycles_per_s: float
    authorize_p50: float
    authorize_p99: float
    settle_p50: float
    settle_p99: float
    errors: int


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(env: dict[str, str], log: object) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "troop_coordinator"]
    return subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=log)


@contextlib.asynccontextmanager
async def coordinator(env: dict[str, str], data_dir: Path) -> AsyncIterator[str]:
    port = free_port()
    full = {
        **os.environ,
        **env,
        "TROOP_COORDINATOR_PORT": str(port),
        "TROOP_DATA_DIR": str(data_dir),
        "TROOP_STARTER_CREDITS": str(10**9),
        "TROOP_NODE_TTL_SECONDS": "3600",
        "TROOP_VERIFY_NODE_ENDPOINTS": "0",  # the bench's node is an identity, no worker
        # The ledger's throughput, not the per-user limits' refusals, is what is measured.
        "TROOP_RATE_LIMITS": "",
    }
    log = (data_dir / "coordinator.log").open("wb")
    process = _spawn(full, log)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"coordinator did not start; see {log.name}")
                await asyncio.sleep(0.1)
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


async def run_level(address: str, clients: int, seconds: float, node: Identity) -> Samples:
    samples = Samples()
    channel = grpc.aio.insecure_channel(address)
    users = [
        CoordinatorClient(address, Identity.generate(), channel=channel) for _ in range(clients)
    ]
    stop_at = time.perf_counter() + seconds

    async def loop(user: CoordinatorClient) -> None:
        while time.perf_counter() < stop_at:
            try:
                t0 = time.perf_counter()
                job = await user.authorize(MODEL, max_tokens=16, max_prompt_tokens=64)
                t1 = time.perf_counter()
                # Settlement needs both sides: the client's countersignature, then the
                # node's receipt carrying the user's presentation of the ticket.
                await user.report_usage(job.job_id, completion_tokens=4, stream_ms=10)
                nonce = new_nonce()
                presented = sign_presentation(user.identity, job.job_id, "bench-node", nonce)
                receipt = pb.JobReceipt(
                    job_id=job.job_id,
                    node_id="bench-node",
                    outcome=pb.JOB_OUTCOME_COMPLETED,
                    duration_ms=1,
                    usage={"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12},
                    presentation=bytes.fromhex(presented),
                    client_nonce=nonce,
                )
                await user.submit_receipt(sign_receipt(node, receipt))
                t2 = time.perf_counter()
            except Exception:
                samples.errors += 1
                continue
            samples.authorize_ms.append((t1 - t0) * 1000)
            samples.settle_ms.append((t2 - t1) * 1000)
            samples.cycle_ms.append((t2 - t0) * 1000)

    try:
        for user in users:  # first sight (user creation + grant) is not what we measure
            await user.join()
        await asyncio.gather(*(loop(u) for u in users))
    finally:
        await channel.close()
    return samples


async def bench_backend(
    name: str, env: dict[str, str], levels: list[int], seconds: float
) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="troop-bench-") as tmp:
        async with coordinator(env, Path(tmp)) as address:
            node = Identity.generate()
            async with CoordinatorClient(address, node) as client:
                await client.heartbeat(
                    pb.HeartbeatRequest(
                        node_id="bench-node",
                        endpoint="127.0.0.1:1",
                        models=[MODEL],
                        owner_public_key=Identity.generate().public_key_hex,
                    )
                )
            await run_level(address, 4, 1.0, node)  # warm up connections and caches
            for clients in levels:
                s = await run_level(address, clients, seconds, node)
                rows.append(
                    Row(
                        name,
                        clients,
                        len(s.cycle_ms) / seconds,
                        percentile(s.authorize_ms, 0.5),
                        percentile(s.authorize_ms, 0.99),
                        percentile(s.settle_ms, 0.5),
                        percentile(s.settle_ms, 0.99),
                        s.errors,
                    )
                )
                print(f"  {name:<18} {clients:>3} clients: {rows[-1].cycles_per_s:8.1f} cycles/s")
    return rows


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    name = f"troop_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        conn = await asyncpg.connect(PG_ADMIN)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def clear_prefix(prefix: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


def table(rows: list[Row]) -> str:
    embedded = {r.clients: r for r in rows if r.backend == "embedded"}
    lines = [
        "| backend | clients | cycles/s | vs embedded | authorize p50 / p99 ms "
        "| settle p50 / p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = embedded.get(r.clients)
        ratio = f"{r.cycles_per_s / base.cycles_per_s:.2f}×" if base and base.cycles_per_s else "—"
        lines.append(
            f"| {r.backend} | {r.clients} | {r.cycles_per_s:.1f} | {ratio} "
            f"| {r.authorize_p50:.1f} / {r.authorize_p99:.1f} "
            f"| {r.settle_p50:.1f} / {r.settle_p99:.1f} | {r.errors} |"
        )
    return "\n".join(lines)


async def main_async(seconds: float, levels: list[int]) -> None:
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.platform()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()} · {seconds:g} s per level"
    )
    rows = await bench_backend("embedded", {}, levels, seconds)
    prefix = f"troop-bench:{secrets.token_hex(4)}:"
    async with postgres_database() as url:
        try:
            env = {"TROOP_DATABASE_URL": url, "TROOP_REDIS_URL": REDIS_URL}
            rows += await bench_backend(
                "postgresql+redis", {**env, "TROOP_REDIS_PREFIX": prefix}, levels, seconds
            )
        finally:
            await clear_prefix(prefix)
    print()
    print(table(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per level")
    parser.add_argument("--levels", default="1,16,64", help="concurrent clients, comma-separated")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x]
    asyncio.run(main_async(args.seconds, levels))


if __name__ == "__main__":
    main()
