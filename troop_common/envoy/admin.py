"""Envoy's admin interface, on the Unix socket each sidecar gives it (nothing else can
reach it): one blocking GET, for readiness (`process`) and statistics (`stats`)."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

TIMEOUT_S = 2.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__("envoy-admin", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def admin_get(path: Path, target: str, timeout_s: float = TIMEOUT_S) -> bytes:
    """GET `target` from the admin interface on the Unix socket `path` (blocking); raises
    OSError (or http.client's errors) when Envoy is not there or answers other than 200."""
    connection = _UnixConnection(path, timeout_s)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise OSError(f"envoy admin {target}: HTTP {response.status}")
    return body


__all__ = ["admin_get"]
