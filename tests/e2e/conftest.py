"""A whole network in the test's event loop: the real coordinator and worker on port 0."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings
from troop_worker.app import Worker
from troop_worker.settings import WorkerSettings


@dataclass
class Network:
    coordinator: str
    worker: str
    owner: Identity
    data: Path


@contextlib.asynccontextmanager
async def start_network(tmp_path: Path, eventually, engine=None) -> AsyncIterator[Network]:
    coordinator_settings = dataclasses.replace(
        CoordinatorSettings.from_env({}),
        port=0,
        data_dir=tmp_path / "coordinator",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}",
    )
    async with Coordinator(coordinator_settings) as coordinator:
        worker_settings = dataclasses.replace(
            WorkerSettings.from_env({}),
            port=0,
            coordinator=coordinator.address,
            data_dir=tmp_path / "worker",
            engine="fake",
        )
        async with Worker(worker_settings, engine=engine) as worker:
            async with CoordinatorClient(coordinator.address) as client:

                async def listed() -> bool:
                    nodes = (await client.list_nodes()).nodes
                    return any(n.endpoint == worker.address for n in nodes)

                await eventually(listed, timeout_s=20)
            owner = Identity.load_or_create(tmp_path / "worker" / "owner.key")
            yield Network(coordinator.address, worker.address, owner, tmp_path)


@pytest.fixture
async def network(tmp_path: Path, eventually) -> AsyncIterator[Network]:
    """Coordinator + worker with the deterministic fake engine."""
    async with start_network(tmp_path, eventually) as running:
        yield running


@pytest.fixture
async def model_network(tmp_path: Path, eventually, torch_engine) -> AsyncIterator[Network]:
    """Coordinator + worker with the real SmolLM2 model."""
    async with start_network(tmp_path, eventually, torch_engine) as running:
        yield running
