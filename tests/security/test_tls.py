"""TLS end to end: coordinator and worker serve TLS; only a client trusting the CA gets in."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import local_worker_settings
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


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca_and_server_cert(directory: Path, name: str = "troop-test-ca") -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 / localhost, signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("troop-server"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
    }
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(_pem_key(key))
    paths["key"].chmod(0o400)
    return paths


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
