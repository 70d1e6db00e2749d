"""A whole network in the test's event loop: the real coordinator and worker on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from troop_common.keys import Identity


@dataclass
class Network:
    coordinator: str
    worker: str
    owner: Identity
    data: Path


@asynccontextmanager
async def _network(start_mesh, engine=None) -> AsyncIterator[Network]:
    async with start_mesh(engine=engine) as mesh:
        owner = Identity.load_or_create(mesh.owner_key)
        yield Network(mesh.coordinator, mesh.worker.address, owner, mesh.data)


@pytest.fixture
async def network(start_mesh) -> AsyncIterator[Network]:
    """Coordinator + worker with the deterministic fake engine."""
    async with _network(start_mesh) as running:
        yield running


@pytest.fixture
async def model_network(start_mesh, torch_engine) -> AsyncIterator[Network]:
    """Coordinator + worker with the real SmolLM2 model."""
    async with _network(start_mesh, torch_engine) as running:
        yield running
