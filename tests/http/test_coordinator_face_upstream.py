"""`troop coordinator --http-port` dials the coordinator where it listens (issue 16, ADR 56):
bound off 127.0.0.1, or serving TLS, its REST face still reaches it. Run as a user runs it:
the CLI as a child process with its settings in the environment, real Envoy in front."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import grpc
import httpx2 as httpx  # the HTTP client the openai SDK itself ships with
import pytest

from tests.conftest import free_port, wait_until
from tests.pki import TestCA
from troop_common.config import ConfigError
from troop_common.envoy import UpstreamTls
from troop_common.health import health_problem
from troop_common.tls import TlsSettings, is_self_signed
from troop_coordinator.http_face import face_upstream, trusting_the_face, upstream_trust
from troop_coordinator.settings import CoordinatorSettings

StartCoordinator = Callable[..., AbstractAsyncContextManager[str]]


async def _serving(
    address: str, process: asyncio.subprocess.Process, log: Path, ca: Path | None, name: str
) -> None:
    async def healthy() -> bool:
        assert process.returncode is None, log.read_text()
        if ca is None:
            channel = grpc.aio.insecure_channel(address)
        else:
            credentials = grpc.ssl_channel_credentials(ca.read_bytes())
            override = [("grpc.ssl_target_name_override", name)] if name else []
            channel = grpc.aio.secure_channel(address, credentials, override)
        async with channel:
            return await health_problem(channel) is None

    await wait_until(healthy, timeout_s=60, interval_s=0.1)


@asynccontextmanager
async def _coordinator(
    tmp_path: Path, host: str, env: dict[str, str], ca: Path | None = None, name: str = ""
) -> AsyncIterator[str]:
    """`troop coordinator --host HOST --http-port …` until its gRPC answers (over TLS
    trusting `ca` for `name` or its host, when given); yields the REST face's URL;
    killed on leaving."""
    port, http_port = free_port(), free_port()
    log = tmp_path / "coordinator.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "troop_cli", "coordinator", "--host", host,
            "--port", str(port), "--http-port", str(http_port),
            "--data-dir", str(tmp_path / "coordinator"),
            stdout=out, stderr=out,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        # The face's Envoy is listening before the coordinator starts serving.
        await _serving(f"{host}:{port}", process, log, ca, name)
        yield f"http://{host}:{http_port}"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_face_of_a_coordinator_bound_off_127_0_0_1(tmp_path: Path) -> None:
    async with (
        _coordinator(tmp_path, "127.0.0.2", {}) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        reply = await http.get("/v1/models")
    assert reply.status_code == 200, reply.text
    assert isinstance(reply.json()["models"], list)


def _tls_env(tmp_path: Path, hosts: tuple[str, ...]) -> tuple[dict[str, str], Path]:
    ca = TestCA(tmp_path / "pki")
    cert, key = ca.issue("coordinator", hosts)
    env = {"TROOP_TLS_CERT": str(cert), "TROOP_TLS_KEY": str(key), "TROOP_TLS_CA": str(ca.ca_file)}
    return env, ca.ca_file


async def test_face_of_a_coordinator_serving_tls(tmp_path: Path) -> None:
    env, ca = _tls_env(tmp_path, ("127.0.0.1", "localhost"))
    async with (
        _coordinator(tmp_path, "127.0.0.1", env, ca) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        models = await http.get("/v1/models")
        nodes = await http.get("/v1/nodes")
        denied = await http.get("/v1/users/00/balance")
    assert models.status_code == 200, models.text
    assert isinstance(models.json()["models"], list)
    assert (nodes.status_code, nodes.json()["nodes"]) == (200, []), nodes.text
    # The coordinator's own refusal (UNAUTHENTICATED), not Envoy's 503.
    assert (denied.status_code, denied.json()["code"]) == (401, 16), denied.text


async def test_face_refuses_a_certificate_for_another_name(tmp_path: Path) -> None:
    # Chained to the trusted CA, but not for the host Envoy dials: no answer goes through.
    env, ca = _tls_env(tmp_path, ("coordinator.example",))
    env["TROOP_COORDINATOR_TLS_NAME"] = "127.0.0.1"
    async with _coordinator(tmp_path, "127.0.0.1", env, ca, "coordinator.example") as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            reply = await http.get("/v1/models")
    assert reply.status_code == 503, reply.text
    assert reply.json()["code"] == 14  # UNAVAILABLE, Envoy's own reply


def _settings(tmp_path: Path, **values: object) -> CoordinatorSettings:
    return CoordinatorSettings(data_dir=tmp_path, **values)  # type: ignore[arg-type]


def test_upstream_is_where_the_coordinator_listens(tmp_path: Path) -> None:
    cases = {"0.0.0.0": "127.0.0.1:7", "": "127.0.0.1:7", "::": "[::1]:7"}
    cases |= {"100.64.0.5": "100.64.0.5:7", "fd7a::5": "[fd7a::5]:7", "[::1]": "[::1]:7"}
    for host, address in cases.items():
        assert face_upstream(_settings(tmp_path, host=host, port=7)) == (address, None)
    with pytest.raises(ConfigError, match="--port"):
        face_upstream(_settings(tmp_path, port=0))


def test_upstream_tls_names_and_roots(tmp_path: Path) -> None:
    env, ca = _tls_env(tmp_path, ("coordinator.example",))
    tls = TlsSettings(cert_file=Path(env["TROOP_TLS_CERT"]), key_file=Path(env["TROOP_TLS_KEY"]))
    on_tailnet = _settings(tmp_path, host="100.64.0.5", port=7, tls=tls)
    assert face_upstream(on_tailnet)[1] == UpstreamTls("100.64.0.5", None)  # system roots
    named = dataclasses.replace(
        on_tailnet, tls_name="coordinator.example", tls=dataclasses.replace(tls, ca_file=ca)
    )
    assert face_upstream(named)[1] == UpstreamTls("coordinator.example", ca)
    wildcard = dataclasses.replace(on_tailnet, host="::")
    assert face_upstream(wildcard)[1] == UpstreamTls("::1", None)
    # A certificate that signed itself is its own root.
    cert, key = TestCA(tmp_path / "self").ca_file, tmp_path / "unused.key"
    assert is_self_signed(cert) and not is_self_signed(tls.cert_file)  # type: ignore[arg-type]
    assert upstream_trust(TlsSettings(cert_file=cert, key_file=key)) == cert


def test_envoys_own_address_is_a_trusted_proxy(tmp_path: Path) -> None:
    on_tailnet = trusting_the_face(_settings(tmp_path, host="100.64.0.5"))
    assert on_tailnet.trusted_proxies == ("127.0.0.1", "::1", "100.64.0.5")
    for host in ("0.0.0.0", "::", "127.0.0.1", "localhost"):
        assert trusting_the_face(_settings(tmp_path, host=host)).trusted_proxies == (
            "127.0.0.1",
            "::1",
        )
