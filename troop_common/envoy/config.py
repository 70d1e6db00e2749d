"""Envoy bootstraps for an HTTP/JSON face in front of one local gRPC server.

Built from `envoy-data-plane`'s typed dataclasses (a typo is a Python error,
not an Envoy start failure) and written as JSON. One listener, the gRPC-JSON
transcoder fed an inline descriptor set, the router, and one HTTP/2 cluster
pointing at the gRPC server (over TLS when `upstream_tls` says so). The admin
interface listens on a Unix socket so the sidecar can ask Envoy which port it
bound without taking another TCP port.
"""

from __future__ import annotations

import ipaddress
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

# envoy-data-plane's generated classes trip a pydantic deprecation warning at import
# (their code, not ours); tests run with warnings as errors.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from envoy_data_plane.envoy.config.accesslog.v3 import (
        AccessLogFilter,
        ComparisonFilter,
        ComparisonFilterOp,
        StatusCodeFilter,
    )
    from envoy_data_plane.envoy.config.bootstrap.v3 import (
        Admin,
        Bootstrap,
        BootstrapStaticResources,
    )
    from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
    from envoy_data_plane.envoy.config.core.v3 import (
        Address,
        DataSource,
        Http2ProtocolOptions,
        Pipe,
        RuntimeUInt32,
        SocketAddress,
        SocketAddressProtocol,
        SubstitutionFormatString,
        TransportSocket,
    )
    from envoy_data_plane.envoy.config.core.v3 import (
        HttpProtocolOptions as CoreHttpProtocolOptions,
    )
    from envoy_data_plane.envoy.config.endpoint.v3 import (
        ClusterLoadAssignment,
        Endpoint,
        LbEndpoint,
        LocalityLbEndpoints,
    )
    from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
    from envoy_data_plane.envoy.config.route.v3 import (
        Route,
        RouteAction,
        RouteConfiguration,
        RouteMatch,
        VirtualHost,
    )
    from envoy_data_plane.envoy.extensions.filters.http.grpc_json_transcoder.v3 import (
        GrpcJsonTranscoder,
        GrpcJsonTranscoderPrintOptions,
        GrpcJsonTranscoderRequestValidationOptions,
        GrpcJsonTranscoderUrlUnescapeSpec,
    )
    from envoy_data_plane.envoy.extensions.filters.http.lua.v3 import Lua
    from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
        HttpConnectionManager,
        HttpFilter,
        LocalReplyConfig,
        ResponseMapper,
    )
    from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
        CertificateValidationContext,
        CertificateValidationContextSystemRootCerts,
        CommonTlsContext,
        SubjectAltNameMatcher,
        SubjectAltNameMatcherSanType,
        UpstreamTlsContext,
    )
    from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
        HttpProtocolOptions,
        HttpProtocolOptionsExplicitHttpConfig,
    )
    from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
    from envoy_data_plane.google.protobuf import Any, Struct

from troop_common.envoy.descriptors import descriptor_set_for_services
from troop_common.envoy.hardening import client_address_headers, overload_manager

_UPSTREAM_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# Replaces the body of an error response with the upstream's own JSON (and its
# HTTP status, when it names one), when the gRPC server put them in trailers:
# a status sent before any message is trailers-only, so they arrive as headers.
# Only such responses are buffered; streams pass through untouched.
_ERROR_BODY_LUA = """
function envoy_on_response(handle)
  local headers = handle:headers()
  local replacement = headers:get("{body}")
  if replacement == nil then
    return
  end
  local status = headers:get("{status}")
  headers:remove("{body}")
  headers:remove("{status}")
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  headers:remove("grpc-status-details-bin")
  if status ~= nil then
    headers:replace(":status", status)
  end
  local body = handle:body(true)
  if body == nil then
    return
  end
  body:setBytes(replacement)
  headers:replace("content-type", "application/json")
end
"""


@dataclass(frozen=True)
class LocalReplyFormat:
    """The JSON body of a reply Envoy makes itself, not the gRPC server: a request body
    that is not JSON or does not fit the message, a path no RPC maps to, the upstream
    down. Without it Envoy answers such requests in text/plain, a shape no client of the
    face parses.

    `default` applies to every local reply, and `server_error` (when given) to 5xx ones;
    `%LOCAL_REPLY_BODY%` in a string value is Envoy's message, `%RESPONSE_CODE%` the status.
    `by_status` overrides either for one exact HTTP status.
    """

    default: Mapping[str, object]
    server_error: Mapping[str, object] | None = None
    by_status: Mapping[int, Mapping[str, object]] = field(default_factory=dict)


@dataclass(frozen=True)
class UpstreamTls:
    """Envoy dials the upstream over TLS, ALPN `h2`, and accepts its certificate only if
    it chains to `ca_file` (the system's roots when None) and names `server_name` (a DNS
    name, also sent as SNI, or an IP address, matched against the IP SANs)."""

    server_name: str
    ca_file: Path | None = None


@dataclass(frozen=True)
class EnvoyConfig:
    """What one sidecar serves: `listen_host:listen_port` → the gRPC server at `upstream`.

    `listen_port=0` lets Envoy pick a free port (`EnvoySidecar.port` reports it).
    `error_body_header`: a trailer whose value (JSON) replaces an error response's body;
    `error_status_header`: a trailer whose value replaces that response's HTTP status.
    `local_reply`: the JSON shape of Envoy's own error replies (text/plain without it).
    `xff_num_trusted_hops`: proxies in front of this Envoy whose `x-forwarded-for` it
    trusts (0: the peer is the client); the timeouts, header size and connection cap
    keep half-open and idle connections from stalling the face (envoy/hardening.py).
    `upstream_tls`: dial the upstream over TLS (plaintext HTTP/2 when None).
    """

    upstream: str
    services: Sequence[str]
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    preserve_proto_field_names: bool = True
    convert_grpc_status: bool = True
    error_body_header: str | None = None
    error_status_header: str = "x-troop-http-status"
    local_reply: LocalReplyFormat | None = None
    stat_prefix: str = "troop"
    drain_timeout_s: float = 1.0
    xff_num_trusted_hops: int = 0
    request_headers_timeout_s: float = 10.0
    stream_idle_timeout_s: float = 300.0  # a generation may be quiet this long
    idle_timeout_s: float = 60.0
    max_request_headers_kb: int = 32
    max_connections: int = 1024
    upstream_tls: UpstreamTls | None = None
    extra_args: Sequence[str] = field(default_factory=tuple)

    @property
    def upstream_host(self) -> str:
        return self.upstream.rsplit(":", 1)[0].strip("[]")

    @property
    def upstream_port(self) -> int:
        return int(self.upstream.rsplit(":", 1)[1])


def _socket(host: str, port: int) -> Address:
    return Address(
        socket_address=SocketAddress(
            protocol=SocketAddressProtocol.TCP, address=host, port_value=port
        )
    )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _upstream_tls_socket(tls: UpstreamTls) -> TransportSocket:
    # Envoy checks no name unless told to: the SAN matcher is what ties the chain to the host.
    is_ip = _is_ip(tls.server_name)
    validation = CertificateValidationContext(
        match_typed_subject_alt_names=[
            SubjectAltNameMatcher(
                san_type=(
                    SubjectAltNameMatcherSanType.IP_ADDRESS
                    if is_ip
                    else SubjectAltNameMatcherSanType.DNS
                ),
                matcher=StringMatcher(exact=tls.server_name),
            )
        ],
    )
    if tls.ca_file is None:
        validation.system_root_certs = CertificateValidationContextSystemRootCerts()
    else:
        validation.trusted_ca = DataSource(filename=str(tls.ca_file))
    context = UpstreamTlsContext(
        common_tls_context=CommonTlsContext(alpn_protocols=["h2"], validation_context=validation),
        # SNI carries host names only (RFC 6066), as gRPC's own clients send it.
        sni="" if is_ip else tls.server_name,
    )
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=Any.pack(context))


def _http_filters(config: EnvoyConfig) -> list[HttpFilter]:
    transcoder = GrpcJsonTranscoder(
        proto_descriptor_bin=descriptor_set_for_services(config.services),
        services=list(config.services),
        convert_grpc_status=config.convert_grpc_status,
        # Path variables arrive decoded: SDKs send "org/model" as "org%2Fmodel".
        url_unescape_spec=GrpcJsonTranscoderUrlUnescapeSpec.ALL_CHARACTERS,
        # A path no RPC maps to is a 404 here, not a reset from the gRPC server.
        request_validation_options=GrpcJsonTranscoderRequestValidationOptions(
            reject_unknown_method=True
        ),
        print_options=GrpcJsonTranscoderPrintOptions(
            preserve_proto_field_names=config.preserve_proto_field_names,
            # A zero balance is "0", an empty node list [], not a missing key.
            always_print_primitive_fields=True,
            stream_sse_style_delimited=True,
        ),
    )
    filters = []
    if config.error_body_header:
        # Listed first so it sees responses last, after the transcoder set the status.
        lua = Lua(
            default_source_code=DataSource(
                inline_string=_ERROR_BODY_LUA.replace("{body}", config.error_body_header).replace(
                    "{status}", config.error_status_header
                )
            )
        )
        filters.append(HttpFilter(name="envoy.filters.http.lua", typed_config=Any.pack(lua)))
    filters.append(
        HttpFilter(
            name="envoy.filters.http.grpc_json_transcoder", typed_config=Any.pack(transcoder)
        )
    )
    filters.append(HttpFilter(name="envoy.filters.http.router", typed_config=Any.pack(Router())))
    return filters


def _json_body(template: Mapping[str, object]) -> SubstitutionFormatString:
    return SubstitutionFormatString(
        json_format=Struct.from_dict(dict(template)), content_type="application/json"
    )


def _status(op: ComparisonFilterOp, status: int) -> AccessLogFilter:
    value = RuntimeUInt32(default_value=status, runtime_key="troop.local_reply.unused")
    return AccessLogFilter(
        status_code_filter=StatusCodeFilter(ComparisonFilter(op=op, value=value))
    )


def _local_reply_config(reply: LocalReplyFormat) -> LocalReplyConfig:
    # Mappers are tried in order; the first whose filter matches picks the body.
    mappers = [
        ResponseMapper(
            filter=_status(ComparisonFilterOp.EQ, status), body_format_override=_json_body(body)
        )
        for status, body in reply.by_status.items()
    ]
    if reply.server_error is not None:
        mappers.append(
            ResponseMapper(
                filter=_status(ComparisonFilterOp.GE, 500),
                body_format_override=_json_body(reply.server_error),
            )
        )
    return LocalReplyConfig(mappers=mappers, body_format=_json_body(reply.default))


def build_bootstrap(config: EnvoyConfig, admin_socket: Path) -> Bootstrap:
    """The whole Envoy bootstrap for `config`, admin on the Unix socket `admin_socket`."""
    cluster_name = "grpc_upstream"
    manager = HttpConnectionManager(
        stat_prefix=config.stat_prefix,
        route_config=RouteConfiguration(
            name="local",
            virtual_hosts=[
                VirtualHost(
                    name="grpc",
                    domains=["*"],
                    request_headers_to_add=client_address_headers(),
                    routes=[
                        Route(
                            match=RouteMatch(prefix="/"),
                            # Streams last as long as the generation: no route timeout.
                            route=RouteAction(cluster=cluster_name, timeout=timedelta(0)),
                        )
                    ],
                )
            ],
        ),
        http_filters=_http_filters(config),
        drain_timeout=timedelta(seconds=config.drain_timeout_s),
        use_remote_address=True,
        xff_num_trusted_hops=config.xff_num_trusted_hops,
        request_headers_timeout=timedelta(seconds=config.request_headers_timeout_s),
        stream_idle_timeout=timedelta(seconds=config.stream_idle_timeout_s),
        common_http_protocol_options=CoreHttpProtocolOptions(
            idle_timeout=timedelta(seconds=config.idle_timeout_s)
        ),
        max_request_headers_kb=config.max_request_headers_kb,
        local_reply_config=(
            _local_reply_config(config.local_reply) if config.local_reply else None
        ),
    )
    listener = Listener(
        name="http",
        address=_socket(config.listen_host, config.listen_port),
        filter_chains=[
            FilterChain(
                filters=[
                    Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=Any.pack(manager),
                    )
                ]
            )
        ],
    )
    http2 = HttpProtocolOptions(
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions()
        )
    )
    cluster = Cluster(
        name=cluster_name,
        # A host name (a bind to "localhost" or a tailnet name) is resolved by Envoy.
        type=(
            ClusterDiscoveryType.STATIC
            if _is_ip(config.upstream_host)
            else ClusterDiscoveryType.LOGICAL_DNS
        ),
        connect_timeout=timedelta(seconds=5),
        typed_extension_protocol_options={_UPSTREAM_OPTIONS: Any.pack(http2)},
        transport_socket=(
            _upstream_tls_socket(config.upstream_tls) if config.upstream_tls else None
        ),
        load_assignment=ClusterLoadAssignment(
            cluster_name=cluster_name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[
                        LbEndpoint(
                            endpoint=Endpoint(
                                address=_socket(config.upstream_host, config.upstream_port)
                            )
                        )
                    ]
                )
            ],
        ),
    )
    return Bootstrap(
        admin=Admin(address=Address(pipe=Pipe(path=str(admin_socket)))),
        static_resources=BootstrapStaticResources(listeners=[listener], clusters=[cluster]),
        overload_manager=overload_manager(config.max_connections),
    )


def bootstrap_json(config: EnvoyConfig, admin_socket: Path) -> str:
    """The bootstrap as the JSON `envoy -c` reads."""
    return json.dumps(build_bootstrap(config, admin_socket).to_dict(), indent=1)


__all__ = [
    "EnvoyConfig",
    "LocalReplyFormat",
    "UpstreamTls",
    "bootstrap_json",
    "build_bootstrap",
]
