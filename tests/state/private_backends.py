"""A PostgreSQL and a redis-server of one test's own, so the test can stop and restart them.

The shared instances serve every other test at once and must never be stopped;
these run on free ports, in a temporary directory, and are always removed.
PostgreSQL's `initdb` refuses to run as root: as root, the cluster belongs to
the `postgres` OS user and its commands run through `runuser`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.conftest import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
START_TIMEOUT_S = 30


def postgres_available() -> tuple[bool, str]:
    if not (PG_BIN / "initdb").exists():
        return False, f"{PG_BIN / 'initdb'} is missing"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return False, "running as root without runuser"
    return True, ""


def redis_available() -> tuple[bool, str]:
    if shutil.which("redis-server") is None:
        return False, "redis-server is not on PATH"
    return True, ""


class PrivatePostgres:
    """A PostgreSQL 15 cluster on 127.0.0.1:<free port>, trust auth, no fsync."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="troop-pg-"))
        self.data = self.root / "data"
        if os.geteuid() == 0:
            shutil.chown(self.root, PG_USER, PG_USER)

    @property
    def url(self) -> str:
        """The `troop` database as a SQLAlchemy asyncpg URL."""
        return f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{self.port}/troop"

    def _run(self, *command: str) -> None:
        prefix = ("runuser", "-u", PG_USER, "--") if os.geteuid() == 0 else ()
        result = subprocess.run(
            [*prefix, *command], capture_output=True, timeout=START_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stderr.decode(errors='replace')}")

    def create(self) -> None:
        self._run(
            str(PG_BIN / "initdb"),
            *("-D", str(self.data), "-A", "trust", "-U", PG_USER, "--no-sync"),
        )
        self.start()
        self._run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "troop")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
            " -c max_connections=100"
        )
        self._run(
            str(PG_BIN / "pg_ctl"),
            *("-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"),
        )

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: open transactions roll back, sessions are terminated."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A redis-server on 127.0.0.1:<free port> that keeps nothing on disk."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)  # polling the server's readiness, not synchronising
        finally:
            client.close()

    def stop(self) -> None:
        """Killed: everything it held is gone, as after a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
