"""The coordinator's REST/JSON face: an Envoy transcoding HTTP to its gRPC API.

    async with coordinator_http_face("127.0.0.1:50051", port=8080) as envoy:
        print(envoy.url)  # GET /v1/nodes, /v1/users/{public_key}/balance, ...

Envoy writes the real client address into `x-forwarded-for` (trusting `xff_num_trusted_hops`
proxies in front of it, TROOP_XFF_TRUSTED_HOPS), which the coordinator reads from this Envoy
only (TROOP_TRUSTED_PROXIES), and bounds header time, idle time and connections; `overrides`
overrides any other EnvoyConfig field (e.g. a short `request_headers_timeout_s`).

Field names are snake_case (as in the .proto), int64 values strings (proto3 JSON), and a
gRPC status becomes its HTTP status with a `{"code", "message", "details"}` body.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from troop_common.envoy import EnvoyConfig, EnvoySidecar, LocalReplyFormat
from troop_common.proto import COORDINATOR_SERVICE

# Envoy's own replies as the transcoder writes a gRPC status: {"code": <gRPC code>, "message"}.
# 400: the body is not JSON or not the request's shape (INVALID_ARGUMENT); 404: no RPC maps
# to the path (NOT_FOUND); 5xx: the coordinator cannot be reached (UNAVAILABLE).
LOCAL_REPLY = LocalReplyFormat(
    default={"code": 3, "message": "%LOCAL_REPLY_BODY%"},
    by_status={404: {"code": 5, "message": "%LOCAL_REPLY_BODY%"}},
    server_error={"code": 14, "message": "%LOCAL_REPLY_BODY%"},
)


@contextlib.asynccontextmanager
async def coordinator_http_face(
    coordinator: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    xff_num_trusted_hops: int = 0,
    **overrides: Any,
) -> AsyncIterator[EnvoySidecar]:
    """An Envoy on `host:port` (0: any free port) in front of the coordinator at `coordinator`."""
    config = EnvoyConfig(
        upstream=coordinator,
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


__all__ = ["LOCAL_REPLY", "coordinator_http_face"]
