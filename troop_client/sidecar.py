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

| variable                  | field          | default                              |
|---------------------------|----------------|--------------------------------------|
| TROOP_CLIENT_HTTP_HOST    | http_host      | 127.0.0.1                            |
| TROOP_CLIENT_HTTP_PORT    | http_port      | 9000 (0: any free port)              |
| TROOP_CLIENT_GRPC_PORT    | grpc_port      | 0 (any free port, on 127.0.0.1)      |
| TROOP_CLIENT_API_KEYS     | api_keys       | none: any key (comma-separated list) |
| TROOP_CLIENT_ALLOW_PUBLIC_WITHOUT_KEYS | allow_public_without_keys | off |
| TROOP_CLIENT_KEEPALIVE_S  | keepalive_s    | 3 (SSE comment while nothing comes)  |
| TROOP_COORDINATOR, TROOP_CONFIG_DIR, TROOP_MODEL: see `ClientSettings` |
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from troop_client.openai.errors import (
    ENVOY_LOCAL_REPLY,
    ERROR_BODY_HEADER,
    HTTP_STATUS_HEADER,
    OpenAIErrorResponse,
)
from troop_client.openai.service import DEFAULT_KEEPALIVE_S, OpenAIServicer
from troop_client.sdk import TroopClient
from troop_client.settings import ClientSettings
from troop_common.config import ConfigError, env_float, env_int, env_text
from troop_common.envoy import EnvoyConfig, EnvoySidecar
from troop_common.keys import Identity
from troop_common.proto import OPENAI_SERVICE, openai_pb2_grpc
from troop_common.server import TroopServer
from troop_common.shutdown import until_signalled

log = logging.getLogger("troop.client")

DEFAULT_HTTP_PORT = 9000
HEALTH_INTERVAL_S = 2.0
ALLOW_PUBLIC_ENV = "TROOP_CLIENT_ALLOW_PUBLIC_WITHOUT_KEYS"


@dataclass(frozen=True)
class SidecarSettings:
    client: ClientSettings = field(default_factory=ClientSettings)
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = 0
    api_keys: tuple[str, ...] = ()
    keepalive_s: float = DEFAULT_KEEPALIVE_S
    identity_path: Path | None = None
    # Serve a non-loopback address without API keys (anyone who reaches it spends credits).
    allow_public_without_keys: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SidecarSettings:
        raw_keys = env.get("TROOP_CLIENT_API_KEYS", "").split(",")
        keys = tuple(k.strip() for k in raw_keys if k.strip())
        return cls(
            client=ClientSettings.from_env(env),
            http_host=env_text(env, "TROOP_CLIENT_HTTP_HOST", cls.http_host),
            http_port=env_int(env, "TROOP_CLIENT_HTTP_PORT", cls.http_port),
            grpc_port=env_int(env, "TROOP_CLIENT_GRPC_PORT", cls.grpc_port),
            api_keys=keys,
            keepalive_s=env_float(env, "TROOP_CLIENT_KEEPALIVE_S", cls.keepalive_s, positive=True),
            allow_public_without_keys=env_text(env, ALLOW_PUBLIC_ENV).lower()
            in ("1", "true", "yes"),
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
                troop = TroopClient(settings.client.coordinator, identity, settings.client)
            else:
                troop = TroopClient.from_settings(settings.client)
        self.troop = troop
        servicer = OpenAIServicer(
            troop, api_keys=settings.api_keys, keepalive_s=settings.keepalive_s
        )
        self.server = TroopServer(
            registrars=[lambda s: openai_pb2_grpc.add_OpenAIServiceServicer_to_server(servicer, s)],
            service_names=[OPENAI_SERVICE],
            bind=f"127.0.0.1:{settings.grpc_port}",
            malformed=OpenAIErrorResponse,  # a body Envoy passed but Python cannot parse
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
        except BaseException:
            await self.server.stop(0)
            raise

    async def stop(self) -> None:
        await self.envoy.stop()
        await self.server.stop(1.0)
        await self.troop.close()

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


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """The `troop client` flags (each overrides its TROOP_* variable)."""
    parser.add_argument("--coordinator", help="coordinator host:port (env TROOP_COORDINATOR)")
    parser.add_argument("--identity", help="the user's key file (default: in TROOP_CONFIG_DIR)")
    parser.add_argument("--host", help="HTTP listen address (env TROOP_CLIENT_HTTP_HOST)")
    parser.add_argument(
        "--port", type=int, help="HTTP port, 0 for any (env TROOP_CLIENT_HTTP_PORT, 9000)"
    )
    parser.add_argument("--grpc-port", type=int, help="the OpenAI gRPC service's port (0: any)")
    parser.add_argument("--model", help="model when a request names none (env TROOP_MODEL)")
    parser.add_argument(
        "--allow-public-without-keys",
        action="store_true",
        default=None,
        help="serve a non-loopback --host without TROOP_CLIENT_API_KEYS: anyone who reaches "
        f"it spends your credits (env {ALLOW_PUBLIC_ENV})",
    )


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> SidecarSettings:
    settings = SidecarSettings.from_env(env)
    client = settings.client
    if getattr(args, "coordinator", None):
        client = dataclasses.replace(client, coordinator=args.coordinator)
    if getattr(args, "model", None):
        client = dataclasses.replace(client, model=args.model)
    changes: dict[str, Any] = {"client": client}
    if getattr(args, "host", None):
        changes["http_host"] = args.host
    if getattr(args, "port", None) is not None:
        changes["http_port"] = args.port
    if getattr(args, "grpc_port", None) is not None:
        changes["grpc_port"] = args.grpc_port
    if getattr(args, "identity", None):
        changes["identity_path"] = Path(args.identity).expanduser()
    if getattr(args, "allow_public_without_keys", None):
        changes["allow_public_without_keys"] = True
    return dataclasses.replace(settings, **changes)


async def run_client(args: argparse.Namespace) -> int:
    """`troop client`: serve until Ctrl-C / SIGTERM (or until Envoy dies: exit 1)."""
    settings = settings_from_args(args, os.environ)
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
    "add_client_arguments",
    "check_bind",
    "is_loopback",
    "run_client",
    "settings_from_args",
]
