"""Envoy sidecars: the HTTP/JSON faces of Troop's gRPC services.

    config = EnvoyConfig(upstream=server.address, services=[COORDINATOR_SERVICE])
    async with EnvoySidecar(config) as envoy:
        print(envoy.url)  # http://127.0.0.1:<port>/v1/...

`descriptors` builds the descriptor set from the imported generated modules,
`config` the bootstrap (typed, via envoy-data-plane), `process` runs Envoy.
"""

from troop_common.envoy.config import (
    EnvoyConfig,
    LocalReplyFormat,
    UpstreamTls,
    bootstrap_json,
    build_bootstrap,
)
from troop_common.envoy.descriptors import descriptor_set, descriptor_set_for_services
from troop_common.envoy.process import EnvoyError, EnvoySidecar, find_envoy

__all__ = [
    "EnvoyConfig",
    "EnvoyError",
    "EnvoySidecar",
    "LocalReplyFormat",
    "UpstreamTls",
    "bootstrap_json",
    "build_bootstrap",
    "descriptor_set",
    "descriptor_set_for_services",
    "find_envoy",
]
