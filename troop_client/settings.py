"""The client's settings: where the coordinator is and where the user's identity lives."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from troop_common.config import env_int
from troop_common.tls import TlsSettings

DEFAULT_MODEL = "smollm2-135m-instruct"


def default_config_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", "~"), ".config")
    return Path(base).expanduser() / "troop"


@dataclass(frozen=True)
class ClientSettings:
    """Where the coordinator is, where the user's identity lives, timeouts and TLS."""

    coordinator: str = "127.0.0.1:50051"
    config_dir: Path = field(default_factory=lambda: Path.home() / ".config" / "troop")
    model: str = DEFAULT_MODEL
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0
    inference_timeout_s: float = 300.0
    # Nodes tried for one request when a node cannot be reached at all (before any token).
    node_attempts: int = 3
    tls: TlsSettings = field(default_factory=TlsSettings)

    @property
    def identity_path(self) -> Path:
        return self.config_dir / "identity.key"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClientSettings:
        return cls(
            coordinator=env.get("TROOP_COORDINATOR", cls.coordinator),
            config_dir=Path(env["TROOP_CONFIG_DIR"]).expanduser()
            if env.get("TROOP_CONFIG_DIR")
            else default_config_dir(env),
            model=env.get("TROOP_MODEL", cls.model),
            node_attempts=env_int(env, "TROOP_NODE_ATTEMPTS", cls.node_attempts, minimum=1),
            tls=TlsSettings.from_env(env),
        )
