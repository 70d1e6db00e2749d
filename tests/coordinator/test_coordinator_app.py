"""Lifecycle: health on the real port, and the console entry from an unrelated directory
(SIGTERM to a real coordinator process: tests/e2e/test_shutdown.py)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from troop_common.coordinator_client import CoordinatorClient
from troop_coordinator.app import Coordinator


async def test_coordinator_reports_serving_on_its_real_port(coordinator: Coordinator) -> None:
    assert not coordinator.address.endswith(":0")
    async with grpc.aio.insecure_channel(coordinator.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="troop.v1.CoordinatorService")
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_main_runs_from_any_directory(sqlite_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TROOP_COORDINATOR_PORT": "0",
        "TROOP_DATA_DIR": str(tmp_path / "data"),
        "TROOP_DATABASE_URL": sqlite_url,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "troop_coordinator",
        cwd=tmp_path,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        address = ""
        async with asyncio.timeout(30):
            while not address:
                line = (await process.stderr.readline()).decode()
                assert line, "the coordinator exited before listening"
                found = re.search(r"coordinator listening on (\S+)", line)
                address = found.group(1) if found else ""
        async with CoordinatorClient(address) as client:
            assert (await client.get_key_set()).keys
        (key_file,) = (tmp_path / "data" / "ticket-keys").glob("*.pem")
        assert key_file.stat().st_mode & 0o777 == 0o400
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.communicate()
    assert process.returncode == 0
