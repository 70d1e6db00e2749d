"""The client's settings: where the coordinator is and where the user's identity lives.

Each setting is declared once below; the README's table and the flags of `troop chat`,
`troop client` and the other user commands come from these declarations
(troop_common.settings_spec).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from troop_common.resilience import DEFAULT_INFERENCE_TIMEOUT_S, ResilienceSettings
from troop_common.settings_spec import Settings, group, integer, number, path, setting
from troop_common.tls import TlsSettings

DEFAULT_MODEL = "smollm2-135m-instruct"


def default_config_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", "~"), ".config")
    return Path(base).expanduser() / "troop"


def _config_dir(values: Mapping[str, Any], env: Mapping[str, str]) -> Path:
    return default_config_dir(env)


@dataclass(frozen=True, repr=False)
class ClientSettings(Settings):
    """Where the coordinator is, where the user's identity lives, timeouts, breakers, TLS."""

    coordinator: str = setting(
        "127.0.0.1:50051",
        env="TROOP_COORDINATOR",
        flag="--coordinator",
        help="where the coordinator is (host:port)",
    )
    config_dir: Path = setting(
        default_factory=lambda: Path.home() / ".config" / "troop",
        env="TROOP_CONFIG_DIR",
        parse=path,
        derive=_config_dir,
        shown_default="`$XDG_CONFIG_HOME/troop` (`~/.config/troop`)",
        help="where your identity lives",
    )
    identity_file: Path | None = setting(
        None,
        flag="--identity",
        parse=path,
        shown_default="`identity.key` in the config dir",
        help="the user's key file",
    )
    model: str = setting(
        DEFAULT_MODEL,
        env="TROOP_MODEL",
        flag="--model",
        help="the model asked for when a request names none",
    )
    inference_timeout_s: float = setting(
        DEFAULT_INFERENCE_TIMEOUT_S,
        env="TROOP_INFERENCE_TIMEOUT_SECONDS",
        parse=number(positive=True),
        help="deadline of one node's answer stream, first token to last",
    )
    node_attempts: int = setting(
        3,
        env="TROOP_NODE_ATTEMPTS",
        parse=integer(1),
        help="nodes tried for one request when a node cannot be reached at all (before any token)",
    )
    resume_attempts: int = setting(
        2,
        env="TROOP_RESUME_ATTEMPTS",
        parse=integer(0),
        help="times one answer resumes on another node after its node failed mid-stream "
        "(0: never; a seeded sample never resumes)",
    )
    tls: TlsSettings = group(TlsSettings)
    # Connect and request timeouts, breakers: shared with the worker (troop_common.resilience).
    resilience: ResilienceSettings = group(ResilienceSettings)

    @property
    def identity_path(self) -> Path:
        return self.identity_file or self.config_dir / "identity.key"
