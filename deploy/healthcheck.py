"""A container's HEALTHCHECK: exit 0 when its Troop gRPC server answers SERVING.

    python /app/deploy/healthcheck.py coordinator|worker|client

It asks grpc.health.v1 at the address the component's settings name: TROOP_COORDINATOR_HOST
and _PORT, TROOP_WORKER_HOST and _PORT, or the sidecar's 127.0.0.1:TROOP_CLIENT_GRPC_PORT
(127.0.0.1 for a wildcard host). A server with TROOP_TLS_CERT is asked over TLS, trusting
TROOP_TLS_CA (else the system roots) and expecting the first name its own certificate
carries, since the address dialled is rarely one of them. grpcio and cryptography only
(every image has them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

# component: (host variable, port variable, default port)
COMPONENTS = {
    "coordinator": ("TROOP_COORDINATOR_HOST", "TROOP_COORDINATOR_PORT", "50051"),
    "worker": ("TROOP_WORKER_HOST", "TROOP_WORKER_PORT", "50052"),
    "client": ("", "TROOP_CLIENT_GRPC_PORT", "50053"),
}
WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def target(component: str) -> str:
    host_variable, port_variable, default_port = COMPONENTS[component]
    host = os.environ.get(host_variable, "").strip() if host_variable else ""
    port = os.environ.get(port_variable, "").strip() or default_port
    return f"{'127.0.0.1' if host in WILDCARDS else host}:{port}"


def certificate_name(cert_file: Path) -> str:
    """The first DNS name (else IP address) in the certificate's subject alternative names."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = names.get_values_for_type(x509.DNSName)
    ips = names.get_values_for_type(x509.IPAddress)
    if not dns and not ips:
        raise ValueError(f"{cert_file} names neither a DNS name nor an IP address")
    return dns[0] if dns else str(ips[0])


def channel(component: str, address: str) -> grpc.Channel:
    cert = os.environ.get("TROOP_TLS_CERT", "").strip()
    if component == "client" or not cert:  # the sidecar's gRPC server is loopback plaintext
        return grpc.insecure_channel(address)
    ca = os.environ.get("TROOP_TLS_CA", "").strip()
    roots = Path(ca).read_bytes() if ca else None
    name = certificate_name(Path(cert))
    options = [("grpc.ssl_target_name_override", name)]
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(roots), options)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in COMPONENTS:
        print(f"usage: healthcheck.py {'|'.join(COMPONENTS)}", file=sys.stderr)
        return 2
    address = target(argv[0])
    try:
        with channel(argv[0], address) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except grpc.RpcError as exc:
        detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        print(f"unhealthy: {address}: {detail}", file=sys.stderr)
        return 1
    except (OSError, ValueError, x509.ExtensionNotFound) as exc:  # certificate files
        print(f"unhealthy: {address}: {exc}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
