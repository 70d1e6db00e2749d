"""What every component's settings share: parsing a `TROOP_*` value, and the error for a
setting it cannot use.

A `ConfigError` names the setting (environment variable or flag) and says what it must
be; the `troop` command prints it in one line instead of a traceback. Each `parse_*`
takes the setting's name and its text; the `env_*` readers return the default for an
unset or empty variable. Settings are declared with these in `troop_common.settings_spec`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


class ConfigError(ValueError):
    """A setting that cannot be used: the message names it and what it must be."""


def parse_int(name: str, raw: str, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def parse_float(name: str, raw: str, *, positive: bool = False, signed: bool = False) -> float:
    """A finite number, at least 0 (`positive`: more than 0; `signed`: any)."""
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    if value < 0 and not signed:
        raise ConfigError(f"{name} must not be negative, got {value}")
    return value


def parse_choice(name: str, raw: str, choices: tuple[str, ...], *, casefold: bool = False) -> str:
    value = raw.lower() if casefold else raw
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_text(env: Mapping[str, str], name: str, default: str = "") -> str:
    return env.get(name, "").strip() or default


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env_text(env, name)
    return parse_int(name, raw, minimum) if raw else default


def env_float(
    env: Mapping[str, str], name: str, default: float, *, positive: bool = False
) -> float:
    raw = env_text(env, name)
    return parse_float(name, raw, positive=positive) if raw else default


def env_choice(
    env: Mapping[str, str],
    name: str,
    default: str,
    choices: tuple[str, ...],
    *,
    casefold: bool = False,
) -> str:
    return parse_choice(name, env_text(env, name, default), choices, casefold=casefold)


__all__ = [
    "ConfigError",
    "env_choice",
    "env_float",
    "env_int",
    "env_text",
    "parse_choice",
    "parse_float",
    "parse_int",
]
