"""Worker test fixtures: a real worker on port 0 against a recording stand-in coordinator.

Tickets are signed by a real RSA `TicketSigner` whose public key the stand-in
coordinator (tests/worker/recording_coordinator.py) serves from GetKeySet.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from troop_common.proto import inference_pb2_grpc
from troop_common.tickets import TicketSigner
from troop_worker import Worker
from troop_worker.engine import Engine, FakeEngine

sys.path.insert(0, str(Path(__file__).parent))
from recording_coordinator import RecordingCoordinator, start_server
from worker_testing import MODEL, make_issuer, worker_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ticket_key() -> rsa.RSAPrivateKey:
    """The stand-in coordinator's ticket-signing key (a real RSA key)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ticket_signer(ticket_key: rsa.RSAPrivateKey) -> TicketSigner:
    return TicketSigner(ticket_key)


@pytest.fixture
async def recording_coordinator(
    ticket_signer: TicketSigner,
) -> AsyncIterator[RecordingCoordinator]:
    """A STAND-IN CoordinatorService (GetKeySet, Heartbeat, SubmitReceipt) on port 0."""
    servicer = RecordingCoordinator(signers=[ticket_signer])
    server = start_server(servicer)
    servicer.address = server.address
    servicer.server = server
    async with server:
        yield servicer


StartWorker = Callable[..., AbstractAsyncContextManager[Worker]]


@pytest.fixture
def start_worker(tmp_path: Path, recording_coordinator: RecordingCoordinator) -> StartWorker:
    """`async with start_worker(engine=..., **settings) as worker:` — a real worker on port 0."""

    @asynccontextmanager
    async def start(engine: Engine | None = None, **overrides: object) -> AsyncIterator[Worker]:
        settings = worker_settings(tmp_path, recording_coordinator.address, **overrides)
        engine = engine if engine is not None else FakeEngine([MODEL], delay_s=0.005)
        async with Worker(settings, engine=engine) as worker:
            yield worker

    return start


@pytest.fixture
async def worker(start_worker: StartWorker) -> AsyncIterator[Worker]:
    async with start_worker() as running:
        yield running


@pytest.fixture
async def inference(worker: Worker) -> AsyncIterator[inference_pb2_grpc.InferenceServiceStub]:
    async with grpc.aio.insecure_channel(worker.address) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


@pytest.fixture
def issue(ticket_signer: TicketSigner, worker: Worker) -> Callable[..., str]:
    """`issue(model=..., node_id=..., user=..., job_id=..., now=...)` → a ticket for `worker`."""
    return make_issuer(ticket_signer, worker)
