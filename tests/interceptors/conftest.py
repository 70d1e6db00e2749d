"""Real coordinators (and a worker) with the real interceptor chain, on port 0."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from tests.conftest import local_worker_settings
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings

StartCoordinator = Callable[..., Awaitable[Coordinator]]


@pytest.fixture
async def start_coordinator(tmp_path: Path) -> AsyncIterator[StartCoordinator]:
    """`await start_coordinator(**overrides)`: a real coordinator; stopped at teardown."""
    async with AsyncExitStack() as stack:
        count = 0

        async def start(**overrides: object) -> Coordinator:
            nonlocal count
            count += 1
            data = tmp_path / f"coordinator-{count}"
            settings = dataclasses.replace(
                CoordinatorSettings.from_env({}),
                port=0,
                data_dir=data,
                database_url=f"sqlite+aiosqlite:///{data / 'ledger.db'}",
                shutdown_grace_s=0.5,
            )
            running = Coordinator(dataclasses.replace(settings, **overrides))
            return await stack.enter_async_context(running)

        yield start


@pytest.fixture
async def start_worker(tmp_path: Path, eventually) -> AsyncIterator[Callable[..., Awaitable]]:
    """`await start_worker(coordinator, **overrides)`: a real worker (fake engine), registered."""
    from troop_common.coordinator_client import CoordinatorClient
    from troop_worker.app import Worker

    async with AsyncExitStack() as stack:

        async def start(coordinator: Coordinator, **overrides: object) -> Worker:
            settings = local_worker_settings(
                coordinator.address, tmp_path / "worker", **{"shutdown_grace_s": 0.5, **overrides}
            )
            worker = await stack.enter_async_context(Worker(settings))
            async with CoordinatorClient(coordinator.address) as client:

                async def listed() -> bool:
                    nodes = (await client.list_nodes()).nodes
                    return any(n.endpoint == worker.address for n in nodes)

                await eventually(listed, timeout_s=20, interval_s=0.2)
            return worker

        yield start
