"""TLS end to end: coordinator and worker serve TLS; only a client trusting the CA gets in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.conftest import local_worker_settings
from tests.pki import make_ca_and_server_cert
from troop_client import Message, TroopClient
from troop_client.settings import ClientSettings
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import TroopError
from troop_common.keys import Identity
from troop_common.tls import TlsSettings
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings
from troop_worker.app import Worker

MODEL = "smollm2-135m-instruct"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return make_ca_and_server_cert(tmp_path / "pki")


async def test_chat_over_tls_and_no_silent_downgrade(
    pki, tmp_path: Path, eventually, sqlite_url: str
) -> None:
    server_tls = TlsSettings(cert_file=pki["cert"], key_file=pki["key"])
    coordinator_settings = CoordinatorSettings(
        port=0,
        data_dir=tmp_path / "coordinator",
        database_url=sqlite_url,
        rate_limits="",
        shutdown_grace_s=0.5,
        # Serves TLS; dials workers (to prove their endpoints) trusting the CA, as clients do.
        tls=dataclasses.replace(server_tls, ca_file=pki["ca"]),
    )
    async with Coordinator(coordinator_settings) as coordinator:
        worker_settings = local_worker_settings(
            coordinator.address,
            tmp_path / "worker",
            shutdown_grace_s=0.5,
            # Serves TLS with the same certificate; dials the coordinator trusting the CA.
            tls=dataclasses.replace(server_tls, ca_file=pki["ca"]),
        )
        async with Worker(worker_settings) as worker:
            trusting = ClientSettings(
                coordinator=coordinator.address,
                config_dir=tmp_path / "client",
                tls=TlsSettings(ca_file=pki["ca"]),
            )
            async with TroopClient(coordinator.address, Identity.generate(), trusting) as troop:

                async def listed() -> bool:
                    return any(n.endpoint == worker.address for n in await troop.nodes(MODEL))

                await eventually(listed, timeout_s=20)
                answer = await troop.complete([Message("user", "over tls")], model=MODEL)
                assert answer.text == "You said: over tls"

            # No CA configured: on loopback the client speaks plaintext, which a TLS
            # server does not answer. It fails; it never falls back to anything.
            async with CoordinatorClient(coordinator.address, timeout_s=3) as plain:
                with pytest.raises(TroopError):
                    await plain.list_models()
            # Trusting another CA: the handshake fails.
            stranger = make_ca_and_server_cert(tmp_path / "other-pki", "another-ca")
            async with CoordinatorClient(
                coordinator.address, timeout_s=3, tls=TlsSettings(ca_file=stranger["ca"])
            ) as wrong_ca:
                with pytest.raises(TroopError):
                    await wrong_ca.list_models()
