"""`troop client`: the OpenAI-compatible sidecar on http://localhost:9000/v1.

    async with ClientSidecar(SidecarSettings.from_env(os.environ)) as sidecar:
        print(sidecar.url)  # http://127.0.0.1:9000/v1

A gRPC server (`troop.v1.OpenAIService`, on a free local port) does the work
through `TroopClient`; an Envoy sidecar, configured and started here,
transcodes it to HTTP/JSON and SSE. The sidecar health-checks its Envoy and
stops it on exit.

Whoever reaches the HTTP port spends the user's credits, so a listen address
other than loopback without API keys is refused (`check_bind`, a ConfigError)
unless `allow_public_without_keys` says otherwise, which then logs a WARNING
on every start.

Its settings are declared once in `SidecarSettings` (with `ClientSettings` inside);
the README's table and `troop client`'s flags come from those declarations.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from troop_client.openai.errors import (
    ENVOY_LOCAL_REPLY,
    ERROR_BODY_HEADER,
    HTTP_STATUS_HEADER,
    OpenAIErrorResponse,
)
from troop_client.openai.service import DEFAULT_KEEPALIVE_S, OpenAIServicer
from troop_client.reports import reports_outbox
from troop_client.sdk import TroopClient
from troop_client.settings import ClientSettings
from troop_common.config import ConfigError
from troop_common.envoy import EnvoyConfig, EnvoySidecar
from troop_common.envoy.stats import export_envoy_stats
from troop_common.keys import Identity
from troop_common.metrics import (
    BREAKER_STATES,
    Metrics,
    MetricsEndpoint,
    metrics_host_setting,
    metrics_port_setting,
)
from troop_common.proto import OPENAI_SERVICE, openai_pb2_grpc
from troop_common.server import TroopServer
from troop_common.settings_spec import (
    Settings,
    comma_list,
    group,
    integer,
    number,
    setting,
    switch,
)
from troop_common.shutdown import until_signalled

log = logging.getLogger("troop.client")

DEFAULT_HTTP_PORT = 9000
HEALTH_INTERVAL_S = 2.0
ALLOW_PUBLIC_ENV = "TROOP_CLIENT_ALLOW_PUBLIC_WITHOUT_KEYS"


@dataclass(frozen=True, repr=False)
class SidecarSettings(Settings):
    client: ClientSettings = group(ClientSettings)
    http_host: str = setting(
        "127.0.0.1", env="TROOP_CLIENT_HTTP_HOST", flag="--host", help="the OpenAI API's address"
    )
    http_port: int = setting(
        DEFAULT_HTTP_PORT,
        env="TROOP_CLIENT_HTTP_PORT",
        flag="--port",
        parse=integer(),
        help="the OpenAI API's port (0: any free port)",
    )
    grpc_port: int = setting(
        0,
        env="TROOP_CLIENT_GRPC_PORT",
        flag="--grpc-port",
        parse=integer(),
        help="the OpenAI gRPC service's port, on 127.0.0.1 (0: any free port)",
    )
    metrics_host: str = metrics_host_setting("TROOP_CLIENT_METRICS_HOST")
    metrics_port: int = metrics_port_setting("TROOP_CLIENT_METRICS_PORT")
    api_keys: tuple[str, ...] = setting(
        (),
        env="TROOP_CLIENT_API_KEYS",
        parse=comma_list,
        secret=True,
        shown_default="none (any key)",
        help="comma-separated keys the sidecar accepts (`Authorization: Bearer`)",
    )
    keepalive_s: float = setting(
        DEFAULT_KEEPALIVE_S,
        env="TROOP_CLIENT_KEEPALIVE_S",
        parse=number(positive=True),
        help="SSE keep-alive comment after this long without a token",
    )
    drain_s: float = setting(
        30.0,
        env="TROOP_CLIENT_DRAIN_SECONDS",
        parse=number(),
        help="on SIGTERM, how long answers still streaming may take to finish "
        "(no new request is taken meanwhile)",
    )
    # Not from the environment: an embedder's identity file (`--identity` is the client's).
    identity_path: Path | None = None
    allow_public_without_keys: bool = setting(
        False,
        env=ALLOW_PUBLIC_ENV,
        flag="--allow-public-without-keys",
        parse=switch,
        help="`1`: serve a non-loopback `TROOP_CLIENT_HTTP_HOST` without API keys, logging a "
        "WARNING at every start. Off, the sidecar refuses (exit 2): anyone who reaches it "
        "would spend your credits",
    )


def is_loopback(host: str) -> bool:
    """Whether `host` (an IP address or a name) only listens on this machine."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def check_bind(settings: SidecarSettings) -> bool:
    """ConfigError for a non-loopback listen address without API keys, unless allowed;
    True when the sidecar serves such an address anyway (the caller warns)."""
    if settings.api_keys or is_loopback(settings.http_host):
        return False
    if settings.allow_public_without_keys:
        return True
    raise ConfigError(
        f"refusing to serve {settings.http_host} (not loopback) without API keys: anyone "
        "who reaches it spends your credits; set TROOP_CLIENT_API_KEYS, listen on 127.0.0.1, "
        f"or pass --allow-public-without-keys ({ALLOW_PUBLIC_ENV}=1)"
    )


class ClientSidecar:
    """The OpenAI service and its Envoy; `async with` starts both and stops both."""

    def __init__(self, settings: SidecarSettings, *, troop: TroopClient | None = None) -> None:
        self.public_without_keys = check_bind(settings)
        self.settings = settings
        if troop is None:
            if settings.identity_path is not None:
                identity = Identity.load_or_create(settings.identity_path)
                troop = TroopClient(
                    settings.client.coordinator,
                    identity,
                    settings.client,
                    outbox=reports_outbox(settings.client, identity),
                )
            else:
                troop = TroopClient.from_settings(settings.client)
        self.troop = troop
        self.metrics = Metrics("sidecar")
        breaker = troop.coordinator.breaker
        if breaker is not None:  # 0 closed, 1 open, 2 half-open
            self.metrics.gauge_of(
                "troop_coordinator_breaker_state",
                "the SDK's circuit to the coordinator: 0 closed, 1 open, 2 half-open",
                lambda: BREAKER_STATES[breaker.state],
            )
        self.metrics_endpoint: MetricsEndpoint | None = None
        servicer = OpenAIServicer(
            troop,
            api_keys=settings.api_keys,
            keepalive_s=settings.keepalive_s,
            metrics=self.metrics,
        )
        self.server = TroopServer(
            registrars=[lambda s: openai_pb2_grpc.add_OpenAIServiceServicer_to_server(servicer, s)],
            service_names=[OPENAI_SERVICE],
            bind=f"127.0.0.1:{settings.grpc_port}",
            malformed=OpenAIErrorResponse,  # a body Envoy passed but Python cannot parse
            metrics=self.metrics,
        )
        self.envoy = EnvoySidecar(
            EnvoyConfig(
                upstream=self.server.address,
                services=[OPENAI_SERVICE],
                listen_host=settings.http_host,
                listen_port=settings.http_port,
                error_body_header=ERROR_BODY_HEADER,
                error_status_header=HTTP_STATUS_HEADER,
                local_reply=ENVOY_LOCAL_REPLY,
                stat_prefix="troop_client",
            )
        )
        export_envoy_stats(self.metrics, self.envoy)

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. http://127.0.0.1:9000/v1."""
        return f"{self.envoy.url}/v1"

    @property
    def grpc_address(self) -> str:
        return self.server.address

    async def start(self) -> None:
        if self.public_without_keys:
            log.warning(
                "serving %s WITHOUT API keys (--allow-public-without-keys): anyone who reaches "
                "it spends this user's credits; set TROOP_CLIENT_API_KEYS",
                self.settings.http_host,
            )
        await self.server.start()
        try:
            await self.envoy.start()
            settings = self.settings
            self.metrics_endpoint = self.metrics.serve(settings.metrics_host, settings.metrics_port)
        except BaseException:
            await self.envoy.stop()
            await self.server.stop(0)
            raise

    async def stop(self) -> None:
        """Drain: the gRPC service refuses new calls and lets the answers in flight finish
        (at most `drain_s`) while Envoy still carries them; then Envoy goes, then the SDK
        sends its countersignatures."""
        await self.server.stop(self.settings.drain_s)
        await self.envoy.stop()
        await self.troop.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None

    async def wait(self) -> None:
        """Until Envoy exits (an error: the sidecar cannot serve without it)."""
        while self.envoy.running:
            await asyncio.sleep(HEALTH_INTERVAL_S)
        raise RuntimeError(f"envoy exited:\n{self.envoy.log_tail()}")

    async def __aenter__(self) -> ClientSidecar:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_client(args: argparse.Namespace) -> int:
    """`troop client`: serve until Ctrl-C / SIGTERM (or until Envoy dies: exit 1)."""
    settings = SidecarSettings.from_args(args, os.environ)
    async with until_signalled() as stopping, ClientSidecar(settings) as sidecar:
        keys = "required (TROOP_CLIENT_API_KEYS)" if settings.api_keys else "any key accepted"
        print(
            f"troop client: OpenAI API on {sidecar.url}  (API keys: {keys})\n"
            f"  coordinator  {settings.client.coordinator}\n"
            f"  gRPC         {sidecar.grpc_address}   troop.v1.OpenAIService\n"
            f"  try          curl -N {sidecar.url}/chat/completions -H 'content-type: "
            'application/json\' -d \'{"messages":[{"role":"user","content":"Hi"}],'
            '"stream":true}\'',
            flush=True,
        )
        ending = await stopping.wait(sidecar.wait())
        if not ending.signalled:  # Envoy died: the sidecar cannot serve without it
            print(f"troop client: {ending.died or 'envoy exited'}", flush=True)
        return ending.exit_code


__all__ = [
    "OPENAI_SERVICE",
    "ClientSidecar",
    "SidecarSettings",
    "check_bind",
    "is_loopback",
    "run_client",
]
