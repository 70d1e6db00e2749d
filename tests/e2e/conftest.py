"""Networks for the end-to-end tests: the real coordinator and worker on port 0 in the
test's event loop (`network`), or `troop up` as a user starts it (`troop_up`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
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


@pytest.fixture
def troop_up(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], str]]:
    """`troop up --engine fake` in its own process, data under tmp_path/up: (the
    coordinator's address, the environment to run `troop` in, what `up` printed)."""
    coordinator_port, worker_port = free_port(), free_port()
    env = {**os.environ, "TROOP_CONFIG_DIR": str(tmp_path / "user"), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "up.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "troop_cli", "up", "--engine", "fake",
             "--coordinator-port", str(coordinator_port), "--worker-port", str(worker_port),
             "--data-dir", str(tmp_path / "up"), "--http-port", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while "ready" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield f"127.0.0.1:{coordinator_port}", env, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    # Both components stopped with it: nothing listens on their ports any more
    # (SO_REUSEADDR: connections lingering in TIME_WAIT don't count).
    for port in (coordinator_port, worker_port):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
