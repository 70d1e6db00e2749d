"""Transport security: TLS when certificates are configured, plaintext only when safe or asked.

Policy (ADR 0014):
- A server with a certificate and key serves TLS. Without them it serves
  plaintext only on a loopback address (nothing leaves the machine) or when
  plaintext was explicitly asked for (`TROOP_INSECURE=1`, `--insecure`);
  otherwise it refuses to start.
- A client uses TLS when it has trust roots configured (`TROOP_TLS_CA`) or the
  peer is not on loopback (system roots then); plaintext to a remote peer only
  when explicitly asked for. There is no silent fallback from TLS to plaintext.
- A worker declares in its heartbeats whether it serves TLS (`serves_tls`); the
  coordinator proves its endpoint by dialling it in that mode, and hands the mode
  on in AuthorizeResponse.tls and NodeInfo.tls. Who dials a worker dials in the
  stated mode (`dial`), not one guessed from the host (ADR 0039).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from troop_common.errors import FailedPrecondition
from troop_common.resilience import (
    DEFAULT_CONNECT_TIMEOUT_S,
    connect_options,
    keepalive_options,
)
from troop_common.settings_spec import Settings, path, setting, switch


def _host(address: str) -> str:
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]")


def is_loopback(address: str) -> bool:
    """'127.0.0.1:50051', 'localhost:1', '[::1]:5' → True."""
    host = _host(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_self_signed(cert_file: Path) -> bool:
    """Whether the first certificate in the PEM chain `cert_file` signed itself (it is
    then its own trust root); False for one a CA issued, or a file that is no PEM chain."""
    try:
        cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True, repr=False)
class TlsSettings(Settings):
    """Key and certificate paths are not secret (the key file's mode protects it)."""

    cert_file: Path | None = setting(
        None,
        env="TROOP_TLS_CERT",
        parse=path,
        help="serve TLS with this certificate chain (with `TROOP_TLS_KEY`)",
    )
    key_file: Path | None = setting(
        None, env="TROOP_TLS_KEY", parse=path, help="the certificate's private key"
    )
    ca_file: Path | None = setting(
        None,
        env="TROOP_TLS_CA",
        parse=path,
        help="trust these roots when dialling (otherwise system roots off loopback)",
    )
    insecure: bool = setting(
        False,
        env="TROOP_INSECURE",
        parse=switch,
        help="`1`: allow plaintext off loopback (e.g. inside a WireGuard mesh). Without "
        "certificates, servers bind plaintext on loopback only "
        "([ADR 14](docs/adr/0014-tls-policy.md))",
    )

    @property
    def serves_tls(self) -> bool:
        """Whether a server with these settings serves TLS (both certificate and key)."""
        return self.cert_file is not None and self.key_file is not None

    def server_credentials(self, bind: str) -> grpc.ServerCredentials | None:
        """TLS credentials, or None for plaintext where the policy allows it."""
        if self.cert_file and self.key_file:
            return grpc.ssl_server_credentials(
                [(self.key_file.read_bytes(), self.cert_file.read_bytes())]
            )
        if self.cert_file or self.key_file:
            raise FailedPrecondition("TLS needs both TROOP_TLS_CERT and TROOP_TLS_KEY")
        if is_loopback(bind) or self.insecure:
            return None
        raise FailedPrecondition(
            f"refusing to serve plaintext on {bind}: configure TROOP_TLS_CERT and "
            "TROOP_TLS_KEY, bind to 127.0.0.1, or ask for plaintext with TROOP_INSECURE=1"
        )

    def channel(
        self, address: str, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    ) -> grpc.aio.Channel:
        """A channel to `address` under the policy above; connecting gives up after
        `connect_timeout_s` (troop_common.resilience)."""
        options = connect_options(connect_timeout_s)
        if self.ca_file is not None:
            roots = self.ca_file.read_bytes()
            return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(roots), options)
        if is_loopback(address) or self.insecure:
            return grpc.aio.insecure_channel(address, options)
        return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(), options)

    def dial(
        self,
        address: str,
        tls: bool,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        keepalive_s: float | None = None,
    ) -> grpc.aio.Channel:
        """A channel to a peer that stated whether it serves TLS: TLS exactly when it
        does (trust roots from TROOP_TLS_CA, else the system's); plaintext only on
        loopback or when plaintext was explicitly allowed, else FailedPrecondition
        before anything is sent. Connecting gives up after `connect_timeout_s`; with
        `keepalive_s`, an open call fails once the peer stops answering pings
        (troop_common.resilience.keepalive_options)."""
        options = connect_options(connect_timeout_s)
        if keepalive_s is not None:
            options += keepalive_options(keepalive_s)
        if tls:
            roots = self.ca_file.read_bytes() if self.ca_file is not None else None
            return grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(roots), options)
        if is_loopback(address) or self.insecure:
            return grpc.aio.insecure_channel(address, options)
        raise FailedPrecondition(
            f"refusing to dial {address} in plaintext: it serves no TLS and is not on "
            "loopback; allow plaintext explicitly with TROOP_INSECURE=1 (insecure=True)"
        )
