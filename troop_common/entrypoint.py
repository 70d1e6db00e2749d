"""How every Troop process starts and ends: its log lines, and its exit on a bad setting.

    run_until_done("troop worker", lambda: serve(WorkerSettings.from_env(os.environ)))

Logs go to stderr at `TROOP_LOG_LEVEL` (default given by the caller). A `ConfigError` or
a `TroopError` that ends the process is one line naming the program, not a traceback;
Ctrl-C is a normal end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from troop_common.config import ConfigError
from troop_common.errors import TroopError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(default_level: str = "INFO") -> None:
    """Log lines on stderr at TROOP_LOG_LEVEL (an unknown name means `default_level`)."""
    level = os.environ.get("TROOP_LOG_LEVEL", default_level).upper()
    logging.basicConfig(
        level=level if level in logging.getLevelNamesMapping() else default_level,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # start-up noise


def run_until_done(program: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Configure logging, run `main()` to its end; exit with one line if it cannot run."""
    configure_logging()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except (ConfigError, TroopError) as exc:
        raise SystemExit(f"{program}: {exc}") from None


__all__ = ["LOG_FORMAT", "configure_logging", "run_until_done"]
