"""What every component raises for a setting it cannot use.

A `ConfigError` names the setting (environment variable or flag) and says what it must
be; the `troop` command prints it in one line instead of a traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot be used: the message names it and what it must be."""


__all__ = ["ConfigError"]
