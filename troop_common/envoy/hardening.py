"""What keeps an Envoy HTTP face honest about addresses and alive under floods.

Addresses: the connection manager uses the real peer address
(`use_remote_address`), trusting `xff_num_trusted_hops` proxies in front of it
(0: none), and the request goes upstream with `x-forwarded-for` set to that one
address, whatever the client wrote, so the gRPC server, which trusts XFF from
this Envoy only, takes the right-most (only) entry as the client.

Floods: requests must send their headers within `request_headers_timeout`, a
stream with no traffic ends after `stream_idle_timeout`, an idle connection
after `idle_timeout`, headers are bounded in size, and the overload manager
caps the downstream connections Envoy holds at once (beyond it, new
connections are refused at accept instead of starving the process of files).
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from envoy_data_plane.envoy.config.core.v3 import (
        HeaderValue,
        HeaderValueOption,
        HeaderValueOptionHeaderAppendAction,
    )
    from envoy_data_plane.envoy.config.overload.v3 import OverloadManager, ResourceMonitor
    from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3 import (
        DownstreamConnectionsConfig,
    )
    from envoy_data_plane.google.protobuf import Any

# The address Envoy trusts (the peer's, or the one `xff_num_trusted_hops` names).
CLIENT_ADDRESS = "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
_CONNECTIONS_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"


def client_address_headers() -> list[HeaderValueOption]:
    """`x-forwarded-for: <the address Envoy trusts>`, replacing whatever the client sent."""
    return [
        HeaderValueOption(
            header=HeaderValue(key="x-forwarded-for", value=CLIENT_ADDRESS),
            append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
        )
    ]


def overload_manager(max_connections: int) -> OverloadManager:
    """At most `max_connections` downstream connections at once, over all listeners."""
    monitor = ResourceMonitor(
        name=_CONNECTIONS_MONITOR,
        typed_config=Any.pack(
            DownstreamConnectionsConfig(max_active_downstream_connections=max_connections)
        ),
    )
    return OverloadManager(resource_monitors=[monitor])


__all__ = ["CLIENT_ADDRESS", "client_address_headers", "overload_manager"]
