"""Authorize + countersign + settle throughput and latency, on both backends, against floors.

    .venv/bin/python -m bench.ledger_throughput [--seconds 5] [--levels 1,16,64]
        [--backends embedded,postgresql+redis] [--profile DIR] [--json FILE]

For each backend a real coordinator process (`python -m troop_coordinator`) is
started on a fresh database; one node heartbeats; N concurrent clients (N in
--levels), each its own user, loop authorize -> countersign -> signed receipt
(settles) for --seconds. Each figure is printed next to its goal (>= GOAL_CYCLES_S
cycles/s with GOAL_CLIENTS clients on PostgreSQL + Redis) and against a floor
measured by this run on the same machine: bare one-statement write transactions
per second, on one hot row, straight through the driver (asyncpg with as many
connections as the coordinator may use at that level; sqlite3 in WAL mode, one
writer, as SQLite allows), i.e. what the database alone does for the simplest
money-moving statement. A cycle is three money-moving transactions plus reads, so
a third of the floor is the ceiling of an ideal coordinator.

`--profile DIR` records the coordinator with py-spy (`py-spy record -f raw`, 10 s
at most) during the GOAL_CLIENTS level of each backend and prints where its time
goes. `run(...)` returns the rows as dicts (for scripts); `main()` prints a
markdown table. Needs PostgreSQL (TROOP_BENCH_PG, default
postgresql://postgres@127.0.0.1:5432/postgres) and Redis (TROOP_BENCH_REDIS,
default redis://127.0.0.1:6379/0) for the postgresql+redis backend.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from redis.asyncio import Redis

from bench import profile
from bench.processes import COORDINATOR, free_port, running
from bench.streams import percentile
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.node_proof import new_nonce
from troop_common.presentation import sign_presentation
from troop_common.proto import coordinator_pb2 as pb
from troop_common.receipts import sign_receipt
from troop_coordinator.db.engine import DEFAULT_MAX_OVERFLOW, DEFAULT_POOL_SIZE

MODEL = "bench-model"
PG_ADMIN = os.environ.get("TROOP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TROOP_BENCH_REDIS", "redis://127.0.0.1:6379/0")
BACKENDS = ("embedded", "postgresql+redis")
GOAL_CYCLES_S = 1000.0
GOAL_CLIENTS = 16
GOAL_BACKEND = "postgresql+redis"
PROFILE_S = 10.0


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
    authorize_p50_ms: float
    authorize_p99_ms: float
    settle_p50_ms: float
    settle_p99_ms: float
    errors: int
    floor_tx_per_s: float | None = None  # the database alone, same run (module docstring)
    goal_cycles_per_s: float | None = None  # where a goal is set
    vs_floor: float | None = None
    vs_embedded: float | None = None
    # The coordinator process's CPU time (user + system) per cycle: steadier than cycles/s
    # on a machine shared with other work.
    coordinator_cpu_ms_per_cycle: float | None = None
    profile: str | None = None  # py-spy raw output, with --profile

    @property
    def meets_goal(self) -> bool | None:
        if self.goal_cycles_per_s is None:
            return None
        return self.cycles_per_s >= self.goal_cycles_per_s


@contextlib.asynccontextmanager
async def coordinator(
    env: dict[str, str], data_dir: Path
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    full = {
        **env,
        "TROOP_COORDINATOR_PORT": str(port),
        "TROOP_DATA_DIR": str(data_dir),
        "TROOP_STARTER_CREDITS": str(10**9),
        "TROOP_NODE_TTL_SECONDS": "3600",
        "TROOP_VERIFY_NODE_ENDPOINTS": "0",  # the bench's node is an identity, no worker
        # The ledger's throughput, not the per-user limits' refusals, is what is measured.
        "TROOP_RATE_LIMITS": "",
    }
    async with running("coordinator", COORDINATOR, full, data_dir, port) as (address, process):
        yield address, process


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


# -- floors: the database alone ------------------------------------------------------


async def postgres_floor(dsn: str, connections: int, seconds: float) -> float:
    """Bare one-statement write transactions/s on one hot row (a reservation's UPDATE ...
    RETURNING, autocommit), `connections` asyncpg connections at once."""
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute(
            "CREATE TABLE IF NOT EXISTS bench_floor (id int PRIMARY KEY, balance bigint NOT NULL);"
            "INSERT INTO bench_floor VALUES (1, 0) ON CONFLICT (id) DO NOTHING"
        )
    finally:
        await setup.close()
    done = 0
    stop_at = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        connection = await asyncpg.connect(dsn)
        try:
            while time.perf_counter() < stop_at:
                await connection.fetchval(
                    "UPDATE bench_floor SET balance = balance + 1 WHERE id = 1 RETURNING balance"
                )
                done += 1
        finally:
            await connection.close()

    await asyncio.gather(*(loop() for _ in range(connections)))
    return done / seconds


def sqlite_floor(path: Path, seconds: float) -> float:
    """Bare one-statement write transactions/s with sqlite3 as the coordinator sets it up
    (WAL, BEGIN IMMEDIATE, default synchronous), one writer: SQLite has no other kind."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE bench_floor (id INTEGER PRIMARY KEY, balance INTEGER)")
        connection.execute("INSERT INTO bench_floor VALUES (1, 0)")
        done = 0
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(
                "UPDATE bench_floor SET balance = balance + 1 WHERE id = 1 RETURNING balance"
            ).fetchall()
            connection.execute("COMMIT")
            done += 1
        return done / seconds
    finally:
        connection.close()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- profiling -----------------------------------------------------------------------


# -- the run ----------------------------------------------------------------------------


async def bench_backend(
    name: str,
    env: dict[str, str],
    levels: Sequence[int],
    seconds: float,
    profile_dir: Path | None,
) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="troop-bench-") as tmp:
        async with coordinator(env, Path(tmp)) as (address, process):
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
                profiler, raw = None, None
                if profile_dir is not None and clients == GOAL_CLIENTS:
                    raw = profile_dir / f"py-spy-{name.replace('+', '-')}-{clients}.txt"
                    profiler = profile.start(process.pid, min(PROFILE_S, seconds), raw)
                cpu_before = cpu_seconds(process.pid)
                s = await run_level(address, clients, seconds, node)
                cpu_after = cpu_seconds(process.pid)
                cpu_ms = None
                if cpu_before is not None and cpu_after is not None and s.cycle_ms:
                    cpu_ms = (cpu_after - cpu_before) * 1000 / len(s.cycle_ms)
                if profiler is not None:
                    await asyncio.to_thread(profiler.wait, 30)
                rows.append(
                    Row(
                        backend=name,
                        clients=clients,
                        cycles_per_s=len(s.cycle_ms) / seconds,
                        authorize_p50_ms=percentile(s.authorize_ms, 0.5),
                        authorize_p99_ms=percentile(s.authorize_ms, 0.99),
                        settle_p50_ms=percentile(s.settle_ms, 0.5),
                        settle_p99_ms=percentile(s.settle_ms, 0.99),
                        errors=s.errors,
                        coordinator_cpu_ms_per_cycle=cpu_ms,
                        goal_cycles_per_s=GOAL_CYCLES_S
                        if name == GOAL_BACKEND and clients >= GOAL_CLIENTS
                        else None,
                        profile=str(raw) if raw is not None and raw.exists() else None,
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


async def run_async(
    seconds: float = 5.0,
    levels: Sequence[int] = (1, 16, 64),
    backends: Sequence[str] = BACKENDS,
    profile_dir: Path | None = None,
) -> list[Row]:
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)}; known: {', '.join(BACKENDS)}")
    rows: list[Row] = []
    if "embedded" in backends:
        with tempfile.TemporaryDirectory(prefix="troop-floor-") as tmp:
            floor = await asyncio.to_thread(sqlite_floor, Path(tmp) / "floor.db", seconds)
        for row in await bench_backend("embedded", {}, levels, seconds, profile_dir):
            row.floor_tx_per_s = floor
            rows.append(row)
    if "postgresql+redis" in backends:
        prefix = f"troop-bench:{secrets.token_hex(4)}:"
        async with postgres_database() as url:
            try:
                env = {"TROOP_DATABASE_URL": url, "TROOP_REDIS_URL": REDIS_URL}
                pg_rows = await bench_backend(
                    "postgresql+redis",
                    {**env, "TROOP_REDIS_PREFIX": prefix},
                    levels,
                    seconds,
                    profile_dir,
                )
            finally:
                await clear_prefix(prefix)
            dsn = url.replace("postgresql+asyncpg://", "postgresql://")
            pool = DEFAULT_POOL_SIZE + DEFAULT_MAX_OVERFLOW
            floors = {n: await postgres_floor(dsn, min(n, pool), seconds) for n in levels}
        for row in pg_rows:
            row.floor_tx_per_s = floors[row.clients]
            rows.append(row)
    embedded = {r.clients: r.cycles_per_s for r in rows if r.backend == "embedded"}
    for row in rows:
        if row.floor_tx_per_s:
            row.vs_floor = row.cycles_per_s / row.floor_tx_per_s
        if embedded.get(row.clients):
            row.vs_embedded = row.cycles_per_s / embedded[row.clients]
    return rows


def run(
    seconds: float = 5.0,
    levels: Sequence[int] = (1, 16, 64),
    backends: Sequence[str] = BACKENDS,
    profile_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Measure; one dict per (backend, clients), fields as in `Row` plus `meets_goal`."""
    rows = asyncio.run(run_async(seconds, levels, backends, profile_dir))
    return [{**asdict(r), "meets_goal": r.meets_goal} for r in rows]


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| backend | clients | cycles/s | goal | floor tx/s | vs floor | vs embedded "
        "| coordinator CPU ms/cycle | authorize p50 / p99 ms | settle p50 / p99 ms | errors |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        goal = "—"
        if r["goal_cycles_per_s"] is not None:
            mark = "met" if r["meets_goal"] else "not met"
            goal = f"≥ {r['goal_cycles_per_s']:,.0f}: {mark}"
        floor = "—" if r["floor_tx_per_s"] is None else f"{r['floor_tx_per_s']:,.0f}"
        cpu = r["coordinator_cpu_ms_per_cycle"]
        lines.append(
            f"| {r['backend']} | {r['clients']} | {r['cycles_per_s']:.1f} | {goal} | {floor} "
            f"| {_ratio(r['vs_floor'])} | {_ratio(r['vs_embedded'])} "
            f"| {'—' if cpu is None else f'{cpu:.1f}'} "
            f"| {r['authorize_p50_ms']:.1f} / {r['authorize_p99_ms']:.1f} "
            f"| {r['settle_p50_ms']:.1f} / {r['settle_p99_ms']:.1f} | {r['errors']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per level")
    parser.add_argument("--levels", default="1,16,64", help="concurrent clients, comma-separated")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--profile", type=Path, help="record the coordinator with py-spy here")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.platform()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()} · {args.seconds:g} s per level"
    )
    rows = run(args.seconds, levels, backends, args.profile)
    print()
    print(table(rows))
    print(
        f"\ngoal: ≥ {GOAL_CYCLES_S:,.0f} cycles/s with {GOAL_CLIENTS} clients on {GOAL_BACKEND}; "
        "floor: bare one-statement write transactions/s through the driver, same run "
        "(a cycle is 3 money-moving transactions + reads)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    for r in rows:
        if r["profile"]:
            print(f"\npy-spy, {r['backend']}, {r['clients']} clients ({r['profile']}):")
            print(profile.summarize(Path(r["profile"])))


if __name__ == "__main__":
    main()
