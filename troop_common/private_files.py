"""Files only their owner may read: directories 0700, files 0600, whatever the umask.

A mode passed to `mkdir` or `os.open` is only ever narrowed by the umask, so
what these create is never looser than asked; what already exists looser
(an older install, a copy) is tightened with a WARNING naming it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("troop.files")

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) as 0700, or tighten it to 0700 if it is looser."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    _tighten(path, PRIVATE_DIR_MODE)
    return path


def tighten_file(path: Path) -> None:
    """Take group and other access away from `path` if it exists (0600 at most)."""
    _tighten(path, PRIVATE_FILE_MODE)


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """An fd for `path`, created 0600 (an existing looser file is tightened first)."""
    tighten_file(path)
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    if os.fstat(fd).st_mode & 0o077:  # created by someone else in between
        os.fchmod(fd, PRIVATE_FILE_MODE)
    return fd


def touch_private(path: Path) -> None:
    """Create `path` empty as 0600 if it is missing; tighten it if it is looser."""
    os.close(open_private(path, os.O_WRONLY | os.O_CREAT))


def _tighten(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current & 0o077:
        log.warning("%s was %04o: tightening it to %04o", path, current, current & mode)
        os.chmod(path, current & mode)


__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "open_private",
    "private_dir",
    "tighten_file",
    "touch_private",
]
