"""Whether to dial a worker with TLS is stated, not guessed from its host: the worker
declares it in its heartbeats, the coordinator proves the endpoint in that mode and hands
it on (AuthorizeResponse.tls, NodeInfo.tls), and the SDK dials exactly so (ADR 39)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port, local_worker_settings, require
from tests.pki import make_ca_and_server_cert
from troop_client import Message, TroopClient
from troop_client.settings import ClientSettings
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import FailedPrecondition
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2
from troop_common.tls import TlsSettings
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings
from troop_worker.app import Worker

MODEL = "smollm2-135m-instruct"


class LyingWorker(Worker):
    """Serves as configured, but declares the other mode in its heartbeats."""

    def _heartbeat_request(self) -> coordinator_pb2.HeartbeatRequest:
        request = super()._heartbeat_request()
        request.tls = not request.tls
        return request


def _coordinator_settings(tmp_path: Path, sqlite_url: str, tls: TlsSettings) -> CoordinatorSettings:
    return CoordinatorSettings(
        port=0,
        data_dir=tmp_path / "coordinator",
        database_url=sqlite_url,
        rate_limits="",
        shutdown_grace_s=0.5,
        tls=tls,
    )


@asynccontextmanager
async def _tls_network(
    tmp_path: Path, sqlite_url: str, worker_class: type[Worker] = Worker
) -> AsyncIterator[tuple[Coordinator, Worker, TlsSettings]]:
    """Coordinator and worker serving TLS (one CA); the TlsSettings a trusting client uses."""
    pki = make_ca_and_server_cert(tmp_path / "pki")
    server = TlsSettings(cert_file=pki["cert"], key_file=pki["key"], ca_file=pki["ca"])
    async with Coordinator(_coordinator_settings(tmp_path, sqlite_url, server)) as coordinator:
        settings = local_worker_settings(
            coordinator.address, tmp_path / "worker", shutdown_grace_s=0.5, tls=server
        )
        async with worker_class(settings) as worker:
            yield coordinator, worker, TlsSettings(ca_file=pki["ca"])


async def _proof_tried(coordinator: Coordinator, node_id: str, eventually) -> None:
    """Wait until the coordinator dialled `node_id`'s endpoint and the proof ended."""
    proofs = coordinator.endpoint_proofs
    assert proofs is not None
    await eventually(lambda: any(key[0] == node_id for key in proofs._last_try), timeout_s=20)
    await asyncio.gather(*proofs._running.values())


async def test_a_tls_worker_is_stated_tls_and_served_over_it(
    tmp_path: Path, sqlite_url: str, eventually
) -> None:
    async with _tls_network(tmp_path, sqlite_url) as (coordinator, worker, trusting):
        settings = ClientSettings(
            coordinator=coordinator.address, config_dir=tmp_path / "client", tls=trusting
        )
        async with TroopClient(coordinator.address, Identity.generate(), settings) as troop:

            async def listed() -> list[coordinator_pb2.NodeInfo]:
                return [n for n in await troop.nodes(MODEL) if n.node_id == worker.node_id]

            [node] = await eventually(listed, timeout_s=20)
            assert node.tls is True
            await troop.join()
            grant = await troop.coordinator.authorize(MODEL, max_tokens=4)
            assert (grant.endpoint, grant.tls) == (worker.advertise, True)
            await troop.coordinator.report_usage(grant.job_id, 0, 0)
            # The SDK dials TLS because the grant says so (on loopback it would otherwise
            # speak plaintext, which this worker does not answer).
            answer = await troop.complete([Message("user", "stated tls")], model=MODEL)
            assert answer.text == "You said: stated tls"


async def test_a_plaintext_worker_on_loopback_is_stated_plaintext(start_mesh) -> None:
    async with start_mesh() as mesh:
        async with TroopClient(mesh.coordinator, Identity.generate()) as troop:
            [node] = await troop.nodes(MODEL)
            assert node.tls is False
            await troop.join()
            grant = await troop.coordinator.authorize(MODEL, max_tokens=4)
            assert (grant.endpoint, grant.tls) == (mesh.worker.advertise, False)
            await troop.coordinator.report_usage(grant.job_id, 0, 0)
            answer = await troop.complete([Message("user", "plain")], model=MODEL)
            assert answer.text == "You said: plain"


async def test_a_worker_declaring_tls_it_does_not_serve_is_never_listed(
    tmp_path: Path, sqlite_url: str, eventually
) -> None:
    # A plaintext worker on loopback that claims TLS: the proof dials TLS and fails.
    pki = make_ca_and_server_cert(tmp_path / "pki")
    trusting = TlsSettings(ca_file=pki["ca"])  # would trust the worker, had it a certificate
    settings = _coordinator_settings(tmp_path, sqlite_url, trusting)
    async with Coordinator(settings) as coordinator:
        worker_settings = local_worker_settings(
            coordinator.address, tmp_path / "worker", shutdown_grace_s=0.5
        )
        async with LyingWorker(worker_settings) as worker:
            await _proof_tried(coordinator, worker.node_id, eventually)
            async with CoordinatorClient(coordinator.address) as client:
                assert list((await client.list_nodes()).nodes) == []


async def test_a_worker_hiding_its_tls_is_never_listed(
    tmp_path: Path, sqlite_url: str, eventually
) -> None:
    # A TLS worker that claims plaintext: the proof dials plaintext and fails.
    async with _tls_network(tmp_path, sqlite_url, LyingWorker) as (coordinator, worker, trusting):
        await _proof_tried(coordinator, worker.node_id, eventually)
        async with CoordinatorClient(coordinator.address, tls=trusting) as client:
            assert list((await client.list_nodes()).nodes) == []


def _outward_address() -> str:
    """This machine's address on its default route (not loopback)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("192.0.2.254", 9))  # no packet is sent: it only picks a route
            address = sock.getsockname()[0]
    except OSError:
        address = ""
    require("a non-loopback address", bool(address) and not address.startswith("127."))
    return address


async def test_a_plaintext_worker_off_loopback_is_refused_unless_allowed(
    tmp_path: Path, sqlite_url: str, eventually
) -> None:
    address, port = _outward_address(), free_port()
    plaintext_allowed = TlsSettings(insecure=True)
    coordinator_settings = _coordinator_settings(tmp_path, sqlite_url, plaintext_allowed)
    async with Coordinator(coordinator_settings) as coordinator:
        worker_settings = local_worker_settings(
            coordinator.address,
            tmp_path / "worker",
            host="0.0.0.0",
            port=port,
            advertise=f"{address}:{port}",
            shutdown_grace_s=0.5,
            tls=plaintext_allowed,
        )
        async with Worker(worker_settings) as worker:
            careful = ClientSettings(coordinator=coordinator.address, config_dir=tmp_path / "c")
            async with TroopClient(coordinator.address, Identity.generate(), careful) as troop:

                async def listed() -> list[coordinator_pb2.NodeInfo]:
                    return await troop.nodes(MODEL)

                [node] = await eventually(listed, timeout_s=20)
                assert (node.endpoint, node.tls) == (worker.advertise, False)
                await troop.join()
                with pytest.raises(FailedPrecondition, match="plaintext"):
                    await troop.complete([Message("user", "in clear?")], model=MODEL)
                await troop.drain_reports(5)

                async def released() -> bool:
                    return (await troop.balance()).reserved_millicredits == 0

                await eventually(released)  # the refused job's reservation came back

            allowed = dataclasses.replace(careful, tls=plaintext_allowed)
            async with TroopClient(coordinator.address, Identity.generate(), allowed) as troop:
                answer = await troop.complete([Message("user", "in clear")], model=MODEL)
                assert answer.text == "You said: in clear"
