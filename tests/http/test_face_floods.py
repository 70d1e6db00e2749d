"""The coordinator's REST face under attack: spoofed x-forwarded-for and half-open floods,
through a real Envoy in front of the real coordinator, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx2 as httpx

from tests.security.conftest import coordinator_settings
from troop_coordinator.app import Coordinator
from troop_coordinator.http_face import coordinator_http_face

HALF_OPEN = 300


async def test_spoofed_xff_does_not_reset_the_per_ip_limit(
    tmp_path: Path, sqlite_url: str, ticket_key_pem: bytes, eventually
) -> None:
    settings = coordinator_settings(
        tmp_path, sqlite_url, ticket_key_pem, rate_limits="ListNodes+ListModels=5/3600@ip"
    )
    async with (
        Coordinator(settings) as coordinator,
        coordinator_http_face(coordinator.address) as envoy,
    ):
        async with httpx.AsyncClient(base_url=envoy.url, timeout=10) as http:
            codes = [
                (
                    await http.get("/v1/nodes", headers={"x-forwarded-for": f"203.0.113.{n}"})
                ).status_code
                for n in range(10)
            ]
            # A refused identity is recorded with the address Envoy saw, not the one written.
            spoofed = {"x-forwarded-for": "203.0.113.99", "authorization": "Bearer garbage"}
            denied = await http.get(f"/v1/users/{'00' * 32}/balance", headers=spoofed)

        async def recorded() -> list:
            return [e.event for e in await coordinator.audit_events.events()]

        events = await eventually(recorded)
    assert codes == [200] * 5 + [429] * 5
    assert denied.status_code == 401
    assert [e["peer_ip"] for e in events] == ["127.0.0.1"]


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    while await reader.read(4096):
        pass  # Envoy may answer 408 before it closes
    return True


async def test_half_open_flood_does_not_stall_the_face(
    tmp_path: Path, sqlite_url: str, ticket_key_pem: bytes
) -> None:
    settings = coordinator_settings(tmp_path, sqlite_url, ticket_key_pem)
    async with (
        Coordinator(settings) as coordinator,
        coordinator_http_face(coordinator.address, request_headers_timeout_s=1.0) as envoy,
    ):
        host, port = envoy.url.removeprefix("http://").rsplit(":", 1)
        sockets = []
        try:
            for _ in range(HALF_OPEN):
                reader, writer = await asyncio.open_connection(host, int(port))
                # A request line and one header, then nothing: the headers never end.
                writer.write(
                    f"GET /v1/nodes?{secrets.token_hex(4)} HTTP/1.1\r\nHost: x\r\n".encode()
                )
                sockets.append((reader, writer))
            await asyncio.gather(*(w.drain() for _, w in sockets))
            async with httpx.AsyncClient(base_url=envoy.url, timeout=10) as http:
                served = await http.get("/v1/public-key")
            # Envoy ends every half-open request itself (a deadline, not a timing claim).
            closed = await asyncio.wait_for(
                asyncio.gather(*(_closed_by_server(r) for r, _ in sockets)), timeout=60
            )
        finally:
            for _, writer in sockets:
                writer.close()
    assert served.status_code == 200 and "public_key_pem" in served.json()
    assert all(closed) and len(closed) == HALF_OPEN
