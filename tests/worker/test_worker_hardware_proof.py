"""Proof of hardware against the stand-in coordinator (small matrices)."""

from __future__ import annotations

from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_worker.hardware_proof import prove_hardware


async def test_prove_hardware(recording_coordinator) -> None:
    async with CoordinatorClient(recording_coordinator.address, Identity.generate()) as client:
        assert await prove_hardware(client, "node-x") == 2.5
    (request, valid), *_ = recording_coordinator.proofs
    assert valid and request.node_id == "node-x" and request.elapsed_ms >= 1
    assert len(request.samples) == 8


async def test_worker_proves_at_start_when_asked(start_worker, recording_coordinator) -> None:
    async with start_worker(benchmark=True) as worker:
        await recording_coordinator.wait_for(lambda c: len(c.proofs) == 1, 30)
    request, valid = recording_coordinator.proofs[0]
    assert valid and request.node_id == worker.node_id
