"""The images' HEALTHCHECK (deploy/healthcheck.py) against real gRPC servers: healthy only
while the server answers SERVING, over plaintext or TLS, at the address the settings name."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc

from tests.conftest import free_port
from tests.deploy.deploy_checks import DEPLOY
from tests.pki import make_ca_and_server_cert
from troop_common.server import TroopServer

SCRIPT = DEPLOY / "healthcheck.py"


async def _healthcheck(component: str, **env: str) -> tuple[int, str]:
    """Run the script as the image does; its exit status and what it printed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TROOP_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        component,
        env={**clean, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_healthy_while_serving_and_not_after() -> None:
    async with TroopServer(registrars=[], service_names=[]) as server:
        port = str(server.port)
        # A wildcard bind address is asked on loopback.
        code, output = await _healthcheck(
            "coordinator", TROOP_COORDINATOR_HOST="0.0.0.0", TROOP_COORDINATOR_PORT=port
        )
        assert (code, output.strip()) == (0, f"127.0.0.1:{port}: SERVING")
        await server.set_serving(False)
        code, output = await _healthcheck("worker", TROOP_WORKER_PORT=port)
        assert (code, output.strip()) == (1, f"127.0.0.1:{port}: NOT_SERVING")


async def test_unhealthy_when_nothing_answers() -> None:
    port = str(free_port())
    code, output = await _healthcheck("client", TROOP_CLIENT_GRPC_PORT=port)
    assert code == 1
    assert output.startswith(f"unhealthy: 127.0.0.1:{port}:")


async def test_a_tls_server_is_asked_over_tls_by_its_certificate_name(tmp_path: Path) -> None:
    pki = make_ca_and_server_cert(tmp_path / "pki")
    credentials = grpc.ssl_server_credentials([(pki["key"].read_bytes(), pki["cert"].read_bytes())])
    async with TroopServer(registrars=[], service_names=[], credentials=credentials) as server:
        tls = {"TROOP_TLS_CERT": str(pki["cert"]), "TROOP_WORKER_PORT": str(server.port)}
        code, output = await _healthcheck(
            "worker", TROOP_WORKER_HOST="127.0.0.1", TROOP_TLS_CA=str(pki["ca"]), **tls
        )
        assert (code, output.strip()) == (0, f"127.0.0.1:{server.port}: SERVING")
        # Without the CA the certificate is not trusted: unhealthy, not a traceback.
        code, output = await _healthcheck("worker", **tls)
        assert code == 1
        assert output.splitlines()[-1].startswith(f"unhealthy: 127.0.0.1:{server.port}:")
        assert "Traceback" not in output


async def test_a_wrong_component_is_a_usage_error() -> None:
    code, output = await _healthcheck("edge")
    assert (code, output.strip()) == (2, "usage: healthcheck.py coordinator|worker|client")
