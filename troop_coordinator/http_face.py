"""The coordinator's REST/JSON face: an Envoy transcoding HTTP to its gRPC API.

    async with coordinator_http_face("127.0.0.1:50051", port=8080) as envoy:
        print(envoy.url)  # GET /v1/nodes, /v1/users/{public_key}/balance, ...

Envoy writes the real client address into `x-forwarded-for` (trusting `xff_num_trusted_hops`
proxies in front of it, TROOP_XFF_TRUSTED_HOPS), which the coordinator reads from this Envoy
only (TROOP_TRUSTED_PROXIES), and bounds header time, idle time and connections; `overrides`
overrides any other EnvoyConfig field (e.g. a short `request_headers_timeout_s`).

`troop coordinator --http-port` dials the coordinator where it listens (`face_upstream`):
its bind host (loopback for a wildcard bind) over TLS when it serves TLS, checking the
certificate as a client on this machine would (ADR 56).

Field names are snake_case (as in the .proto), int64 values strings (proto3 JSON), and a
gRPC status becomes its HTTP status with a `{"code", "message", "details"}` body.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from troop_common.addresses import dial_host, host_port
from troop_common.config import ConfigError
from troop_common.envoy import EnvoyConfig, EnvoySidecar, LocalReplyFormat, UpstreamTls
from troop_common.proto import COORDINATOR_SERVICE
from troop_common.tls import TlsSettings, is_self_signed
from troop_coordinator.settings import CoordinatorSettings

# Envoy's own replies as the transcoder writes a gRPC status: {"code": <gRPC code>, "message"}.
# 400: the body is not JSON or not the request's shape (INVALID_ARGUMENT); 404: no RPC maps
# to the path (NOT_FOUND); 5xx: the coordinator cannot be reached (UNAVAILABLE).
LOCAL_REPLY = LocalReplyFormat(
    default={"code": 3, "message": "%LOCAL_REPLY_BODY%"},
    by_status={404: {"code": 5, "message": "%LOCAL_REPLY_BODY%"}},
    server_error={"code": 14, "message": "%LOCAL_REPLY_BODY%"},
)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def upstream_trust(tls: TlsSettings) -> Path | None:
    """The roots Envoy checks the coordinator's certificate against: `TROOP_TLS_CA` when set
    (what the operator gave clients), else the certificate itself when it signed itself,
    else None: the system's roots (as a Python client without `TROOP_TLS_CA` trusts)."""
    if tls.ca_file is not None:
        return tls.ca_file
    if tls.cert_file is not None and is_self_signed(tls.cert_file):
        return tls.cert_file
    return None


def face_upstream(settings: CoordinatorSettings) -> tuple[str, UpstreamTls | None]:
    """Where the REST face's Envoy dials the coordinator `settings` describe, and how:
    its bind host (a wildcard bind on loopback of the same family) and port; over TLS,
    for `TROOP_COORDINATOR_TLS_NAME` or else the host dialled, when it serves TLS."""
    if settings.port == 0:
        raise ConfigError("the REST face (--http-port) needs the coordinator's own --port")
    host = dial_host(settings.host)
    address = host_port(host, settings.port)
    if not settings.tls.serves_tls:
        return address, None
    return address, UpstreamTls(
        server_name=settings.tls_name or host, ca_file=upstream_trust(settings.tls)
    )


def trusting_the_face(settings: CoordinatorSettings) -> CoordinatorSettings:
    """`settings` with the address Envoy's connections come from among the trusted proxies:
    dialling a local non-loopback address (a tailnet bind), a connection comes from that
    address, not 127.0.0.1; only a process on this machine can connect from it."""
    host = dial_host(settings.host)
    if host in settings.trusted_proxies or not _is_ip(host):  # a name: its address is unknown
        return settings
    return dataclasses.replace(settings, trusted_proxies=(*settings.trusted_proxies, host))


@contextlib.asynccontextmanager
async def coordinator_http_face(
    coordinator: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    xff_num_trusted_hops: int = 0,
    upstream_tls: UpstreamTls | None = None,
    **overrides: Any,
) -> AsyncIterator[EnvoySidecar]:
    """An Envoy on `host:port` (0: any free port) in front of the coordinator at `coordinator`
    (dialled over TLS with `upstream_tls`, else plaintext HTTP/2)."""
    config = EnvoyConfig(
        upstream=coordinator,
        upstream_tls=upstream_tls,
        services=[COORDINATOR_SERVICE],
        listen_host=host,
        listen_port=port,
        local_reply=LOCAL_REPLY,
        stat_prefix="troop_coordinator",
        xff_num_trusted_hops=xff_num_trusted_hops,
        **overrides,
    )
    async with EnvoySidecar(config) as envoy:
        yield envoy


__all__ = [
    "LOCAL_REPLY",
    "coordinator_http_face",
    "face_upstream",
    "trusting_the_face",
    "upstream_trust",
]
