"""The attack suite's network: the real Coordinator (SQLite and PostgreSQL) and two real
Workers with the fake engine, all on port 0 in the test's event loop.

`Mesh.ledger_state()` snapshots every balance, the entry count and the ledger
audit: an attack that is refused must leave it exactly as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2_grpc, inference_pb2, inference_pb2_grpc
from troop_coordinator.app import Coordinator
from troop_coordinator.db.models import LedgerEntry, User
from troop_coordinator.settings import CoordinatorSettings
from troop_worker.app import Worker
from troop_worker.settings import WorkerSettings

MODEL = "smollm2-135m-instruct"


def coordinator_settings(
    tmp_path: Path, database_url: str, pem: bytes | None, **overrides: Any
) -> CoordinatorSettings:
    data_dir = tmp_path / "coordinator"
    data_dir.mkdir(parents=True, exist_ok=True)
    if pem is not None and not (data_dir / "ticket-keys").exists():
        legacy = data_dir / "ticket-key.pem"  # adopted into ticket-keys/ on start
        legacy.write_bytes(pem)
        os.chmod(legacy, 0o400)
    base = CoordinatorSettings(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        database_url=database_url,
        sweep_interval_s=3600.0,
        settle_grace_s=60.0,
        # A small proof-of-hardware product (troop_coordinator.proof.ProofShape).
        proof_rows=32,
        proof_cols=24,
        proof_calibration_inner=256,
        proof_min_inner=64,
        proof_max_inner=4096,
        shutdown_grace_s=0.5,
        rate_limits="",  # the attacks are refused for what they are, not for how often
    )
    return dataclasses.replace(base, **overrides)


def worker_settings(tmp_path: Path, name: str, coordinator: str, **overrides: Any):
    base = dataclasses.replace(
        WorkerSettings.from_env({}),
        port=0,
        coordinator=coordinator,
        data_dir=tmp_path / name,
        engine="fake",
        receipt_backoff_s=0.05,
        shutdown_grace_s=0.5,
    )
    return dataclasses.replace(base, **overrides)


@dataclass
class Mesh:
    coordinator: Coordinator
    workers: list[Worker]
    clients: list[CoordinatorClient] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.coordinator.address

    def user(self, identity: Identity | None = None) -> CoordinatorClient:
        client = CoordinatorClient(self.address, identity or Identity.generate())
        self.clients.append(client)
        return client

    def coordinator_stub(self) -> coordinator_pb2_grpc.CoordinatorServiceStub:
        channel = grpc.aio.insecure_channel(self.address)
        self.channels.append(channel)
        return coordinator_pb2_grpc.CoordinatorServiceStub(channel)

    def inference_stub(self, worker: Worker) -> inference_pb2_grpc.InferenceServiceStub:
        channel = grpc.aio.insecure_channel(worker.address)
        self.channels.append(channel)
        return inference_pb2_grpc.InferenceServiceStub(channel)

    def worker_for(self, node_id: str) -> Worker:
        return next(w for w in self.workers if w.node_id == node_id)

    def other_worker(self, node_id: str) -> Worker:
        return next(w for w in self.workers if w.node_id != node_id)

    async def ledger_state(self) -> tuple[Any, ...]:
        """Every balance, the number of entries and the audit: what no refused attack moves."""
        async with self.coordinator.ledger.sessions() as session:
            rows = await session.execute(select(User.public_key, User.balance_millicredits))
            balances = tuple((str(r[0]), int(r[1])) for r in rows)
            count = (await session.execute(select(func.count(LedgerEntry.id)))).scalar_one()
        report = await self.coordinator.ledger.audit()
        assert report.ok, report
        return tuple(sorted(balances)), count, report

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for channel in self.channels:
            await channel.close()


async def chat(
    stub: inference_pb2_grpc.InferenceServiceStub, ticket: str, text: str = "hello there"
) -> list[inference_pb2.ChatCompletionResponse]:
    request = inference_pb2.ChatCompletionRequest(
        model=MODEL, messages=[{"role": "user", "content": text}]
    )
    call = stub.ChatCompletion(request, metadata=[("authorization", f"Bearer {ticket}")])
    return [chunk async for chunk in call]


@contextlib.asynccontextmanager
async def start_mesh(
    tmp_path: Path,
    database_url: str,
    eventually,
    pem: bytes | None,
    *,
    workers: int = 2,
    worker_overrides: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Mesh]:
    settings = coordinator_settings(tmp_path, database_url, pem, **overrides)
    async with contextlib.AsyncExitStack() as stack:
        coordinator = await stack.enter_async_context(Coordinator(settings))
        running = []
        for n in range(workers):
            ws = worker_settings(
                tmp_path, f"worker-{n}", coordinator.address, **(worker_overrides or {})
            )
            running.append(await stack.enter_async_context(Worker(ws)))
        mesh = Mesh(coordinator, running)
        stack.push_async_callback(mesh.close)
        probe = mesh.user()

        async def all_listed() -> bool:
            listed = {n.endpoint for n in (await probe.list_nodes(MODEL)).nodes}
            return all(w.address in listed for w in running)

        await eventually(all_listed, timeout_s=20)
        yield mesh


@pytest.fixture
async def mesh(
    tmp_path: Path, database_url: str, eventually, ticket_key_pem
) -> AsyncIterator[Mesh]:
    """Coordinator on SQLite and on PostgreSQL, two fake-engine workers."""
    async with start_mesh(tmp_path, database_url, eventually, ticket_key_pem) as running:
        yield running


@pytest.fixture
def mesh_factory(tmp_path: Path, eventually, ticket_key_pem, sqlite_url: str):
    """Start a mesh with other settings (SQLite): `async with mesh_factory(**over) as m`."""

    def make(*, database_url: str | None = None, with_pem: bool = True, **overrides: Any):
        return start_mesh(
            tmp_path,
            database_url or sqlite_url,
            eventually,
            ticket_key_pem if with_pem else None,
            **overrides,
        )

    return make
