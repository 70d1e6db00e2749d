"""Real server processes for the benchmarks: started on a free port, ready once serving."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
COORDINATOR = [sys.executable, "-m", "troop_coordinator"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def serving(address: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait (60 s at most) until the gRPC health check at `address` says SERVING."""
    deadline = time.monotonic() + 60
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{log.stem} did not start:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running(
    name: str, command: list[str], env: dict[str, str], data: Path, port: int
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """`command` (with `env` over this environment, its output in `data/<name>.log`),
    yielded as (address, process) once it serves on `port`; SIGTERM on leaving."""
    log_path = data / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; waited for below
            command, env={**os.environ, **env}, cwd=REPO_ROOT, stdout=log, stderr=log
        )
        address = f"127.0.0.1:{port}"
        try:
            await serving(address, process, log_path)
            yield address, process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 20)
            except subprocess.TimeoutExpired:
                process.kill()
