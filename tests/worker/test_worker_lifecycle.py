"""Starting and stopping a worker: health, an absent coordinator (SIGTERM to a real worker
process: tests/e2e/test_shutdown.py)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from worker_testing import worker_settings

from troop_common.errors import Unavailable
from troop_worker import Worker
from troop_worker.engine import FakeEngine


async def test_not_serving_once_stopping(tmp_path: Path, recording_coordinator) -> None:
    settings = worker_settings(tmp_path, recording_coordinator.address)
    worker = Worker(settings, engine=FakeEngine())
    await worker.start()
    try:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await worker.server.set_serving(False)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await worker.stop()


async def test_start_gives_up_without_a_coordinator(tmp_path: Path) -> None:
    settings = worker_settings(tmp_path, "127.0.0.1:1", coordinator_wait_s=0.5)
    with pytest.raises(Unavailable):
        async with Worker(settings, engine=FakeEngine()):
            pass


async def test_advertise_defaults_to_the_bound_address(
    tmp_path: Path,
    recording_coordinator,
) -> None:
    settings = worker_settings(tmp_path, recording_coordinator.address)
    async with Worker(settings, engine=FakeEngine()) as worker:
        assert worker.address.startswith("127.0.0.1:") and not worker.address.endswith(":0")
        assert worker.advertise == worker.address
    settings = worker_settings(tmp_path, recording_coordinator.address, advertise="w.example:9")
    async with Worker(settings, engine=FakeEngine()) as worker:
        await recording_coordinator.wait_for(
            lambda c: any(h.request.endpoint == "w.example:9" for h in c.heartbeats)
        )
