"""State fixtures: coordinators as real processes, nodes that sign receipts.

Shared fixtures (postgres_url, redis_url, redis_prefix, redis_client,
database_url, eventually) come from tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port, require, signed_receipt
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_common.tls import TlsSettings

from .private_backends import (
    PrivatePostgres,
    PrivateRedis,
    postgres_available,
    redis_available,
)

MODEL = "smollm2-135m-instruct"
REPO_ROOT = Path(__file__).resolve().parents[2]


def make_data_dir(path: Path, pem: bytes) -> Path:
    """A coordinator data dir holding the given ticket key (replicas share one)."""
    path.mkdir(parents=True, exist_ok=True)
    key_file = path / "ticket-key.pem"
    if not key_file.exists():
        key_file.write_bytes(pem)
        os.chmod(key_file, 0o400)
    return path


async def health_status(
    address: str, service: str = "", tls: TlsSettings | None = None
) -> int | None:
    """The health status a server reports for `service`, or None if it does not answer;
    dialled as `tls` says (default: plaintext, on loopback)."""
    async with (tls or TlsSettings()).channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        except grpc.aio.AioRpcError:
            return None
        return reply.status


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL of this test's own (with a `troop` database), to stop and start again;
    removed at teardown whatever state it is in."""
    require("PostgreSQL", *postgres_available())
    server = PrivatePostgres()
    try:
        server.create()
        yield server
    finally:
        server.remove()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, to stop and start again; killed at teardown."""
    require("Redis", *redis_available())
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Process:
    """A child process of the test, with its output in a log file."""

    popen: subprocess.Popen[bytes]
    log: Path
    address: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    async def wait(self, timeout_s: float = 10) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.popen.poll() is None:
            if loop.time() > deadline:
                self.popen.kill()
            await asyncio.sleep(0.05)
        return self.popen.returncode


Start = Callable[..., Process]  # (module, env, log, prefix=(), args=()) -> Process


def spawn(
    module: str,
    env: dict[str, str],
    log: Path,
    prefix: Sequence[str] = (),
    args: Sequence[str] = (),
) -> Process:
    """`python -m module args` (after `prefix`, e.g. `ip netns exec NAME`, which execs it
    in place: the Popen's pid is the program's), its output in `log`."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    handle = log.open("wb")
    argv = [*prefix, sys.executable, "-m", module, *args]
    popen = subprocess.Popen(argv, env=full, cwd=REPO_ROOT, stdout=handle, stderr=handle)
    handle.close()
    return Process(popen, log)


@pytest.fixture
async def processes() -> AsyncIterator[Start]:
    """Start child processes; every one still running is stopped at teardown."""
    started: list[Process] = []

    def start(
        module: str,
        env: dict[str, str],
        log: Path,
        prefix: Sequence[str] = (),
        args: Sequence[str] = (),
    ) -> Process:
        process = spawn(module, env, log, prefix, args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill(signal.SIGTERM)
    for process in started:
        await process.wait(10)


async def start_coordinator(
    start: Start,
    env: dict[str, str],
    log: Path,
    timeout_s: float = 30,
    port: int | None = None,
    host: str = "127.0.0.1",
    tls: TlsSettings | None = None,
) -> Process:
    """`python -m troop_coordinator` on `host`:`port` (default: a free one); returns once its
    health, dialled as `tls` says, is SERVING."""
    port = port or free_port()
    env = {**env, "TROOP_COORDINATOR_HOST": host, "TROOP_COORDINATOR_PORT": str(port)}
    process = start("troop_coordinator", env, log)
    process.address = f"{host}:{port}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    serving = health_pb2.HealthCheckResponse.SERVING
    while await health_status(process.address, tls=tls) != serving:
        if process.popen.poll() is not None or loop.time() > deadline:
            pytest.fail(f"coordinator did not start:\n{process.output()}")
        await asyncio.sleep(0.1)
    return process


@dataclass
class Network:
    """A coordinator and fake-engine workers as processes, on this test's PostgreSQL
    database and Redis prefix: `await net.coordinator(...)`, `net.fake_worker(...)`."""

    postgres_url: str
    redis_url: str
    redis_prefix: str
    tmp_path: Path
    ticket_key_pem: bytes
    start: Start

    def coordinator_env(self, **settings: str) -> dict[str, str]:
        """The coordinator's environment: this test's state, heartbeats every second,
        then `settings` (TROOP_* variables)."""
        data = make_data_dir(self.tmp_path / "coordinator", self.ticket_key_pem)
        return {
            "TROOP_DATABASE_URL": self.postgres_url,
            "TROOP_REDIS_URL": self.redis_url,
            "TROOP_REDIS_PREFIX": self.redis_prefix,
            "TROOP_DATA_DIR": str(data),
            "TROOP_HEARTBEAT_INTERVAL_SECONDS": "1",
            **settings,
        }

    async def audit_ledger(self) -> None:
        """`troop admin audit-ledger` on this network's ledger, as an operator runs it:
        it must pass."""
        audit = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "troop_cli", "admin", "audit-ledger",
            env={**os.environ, **self.coordinator_env()}, cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(audit.communicate(), 60)
        assert audit.returncode == 0, output.decode()

    async def coordinator(
        self,
        log: str = "coordinator.log",
        port: int | None = None,
        host: str = "127.0.0.1",
        tls: TlsSettings | None = None,
        **settings: str,
    ) -> Process:
        """`python -m troop_coordinator` (again, after a stop: same state, `port` kept), on
        `host`, its health dialled as `tls` says."""
        env = self.coordinator_env(**settings)
        return await start_coordinator(
            self.start, env, self.tmp_path / log, port=port, host=host, tls=tls
        )

    def fake_worker(
        self,
        coordinator: str,
        name: str,
        log: str = "",
        prefix: Sequence[str] = (),
        module: str = "troop_worker",
        **settings: str,
    ) -> Process:
        """`python -m troop_worker` (or a hostile `module` that runs it) with the fake
        engine, after `prefix`, then `settings` (TROOP_* variables); `name` is its node id
        and names its data dir, so starting it again is the same node."""
        env = {
            "TROOP_COORDINATOR": coordinator,
            "TROOP_WORKER_ENGINE": "fake",
            "TROOP_WORKER_PORT": "0",
            "TROOP_NODE_ID": name,
            "TROOP_WORKER_DATA_DIR": str(self.tmp_path / name),
            "TROOP_WORKER_HEARTBEAT_S": "1",
            **settings,
        }
        log_file = self.tmp_path / (log or f"{name}.log")
        return self.start(module, env, log_file, prefix)


@pytest.fixture
def network(
    postgres_url: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    ticket_key_pem: bytes,
    processes: Start,
) -> Network:
    return Network(postgres_url, redis_url, redis_prefix, tmp_path, ticket_key_pem, processes)


@dataclass
class TestNode:
    """A node identity that heartbeats and signs receipts, like a worker would."""

    __test__ = False

    node_id: str
    identity: Identity
    owner: Identity

    def heartbeat_request(self, **load: int) -> pb.HeartbeatRequest:
        return pb.HeartbeatRequest(
            node_id=self.node_id,
            endpoint="127.0.0.1:50099",
            models=[MODEL],
            load=pb.NodeLoad(**load),
            hardware=pb.NodeHardware(device="cpu", cpu_count=2, memory_bytes=1 << 30),
            owner_public_key=self.owner.public_key_hex,
        )

    async def heartbeat(self, client: CoordinatorClient) -> pb.HeartbeatResponse:
        return await client.heartbeat(self.heartbeat_request())

    def receipt(
        self,
        job_id: str,
        user: Identity,
        *,
        outcome: int = pb.JOB_OUTCOME_COMPLETED,
        duration_ms: int = 1000,
    ) -> pb.SubmitReceiptRequest:
        """A receipt for a job `user` presented to this node."""
        return signed_receipt(
            self.identity, job_id, self.node_id, user, outcome=outcome, duration_ms=duration_ms
        )


def new_node(node_id: str = "node-1") -> TestNode:
    return TestNode(node_id, Identity.generate(), Identity.generate())
