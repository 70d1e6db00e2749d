"""`troop up`: a coordinator and one worker on this machine, on the embedded default.

Each runs as its own process (as on a real network), logging to a file in the
data directory. `up` waits until the coordinator answers health checks and
the worker has registered, prints where everything listens, and stops both on
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

import grpc

from troop_client.sidecar import ClientSidecar, SidecarSettings
from troop_common.coordinator_client import CoordinatorClient
from troop_common.health import health_problem
from troop_common.shutdown import Stopping, stop_processes, until_signalled

READY_TIMEOUT_S = 180.0
CHILD_GRACE_S = 10.0  # after SIGTERM, then SIGKILL (the children drain within 5 s)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "troop" / "up"


async def _healthy(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        return await health_problem(channel) is None


class _Failed(Exception):
    pass


async def _wait_for(
    what: str,
    check,
    procs: list[asyncio.subprocess.Process],
    logs: list[Path],
    interval_s: float = 0.25,
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while not await check():
        for proc, log in zip(procs, logs, strict=True):
            if proc.returncode is not None:
                tail = log.read_text(errors="replace").splitlines()[-15:]
                raise _Failed(f"{what} did not start; the end of {log}:\n" + "\n".join(tail))
        if loop.time() > deadline:
            raise _Failed(f"{what} not ready after {READY_TIMEOUT_S:.0f} s; see {logs[-1]}")
        await asyncio.sleep(interval_s)


async def _spawn(args: list[str], log: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    handle = log.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "troop_cli", *args, stdout=handle, stderr=handle, env=env
        )
    finally:
        handle.close()


async def run_up(args: argparse.Namespace) -> int:
    """Start both, serve until SIGTERM/SIGINT (0) or until a component exits (1)."""
    async with until_signalled() as stopping:
        return await _up(args, stopping)


async def _up(args: argparse.Namespace, stopping: Stopping) -> int:
    data = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    data.mkdir(parents=True, exist_ok=True)
    coordinator = f"127.0.0.1:{args.coordinator_port}"
    worker = f"127.0.0.1:{args.worker_port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    logs = [data / "coordinator.log", data / "worker.log"]
    procs: list[asyncio.subprocess.Process] = []
    sidecar: ClientSidecar | None = None
    try:
        procs.append(
            await _spawn(
                [
                    "coordinator",
                    "--port",
                    str(args.coordinator_port),
                    "--data-dir",
                    str(data / "coordinator"),
                ],
                logs[0],
                env,
            )
        )
        await _wait_for("the coordinator", lambda: _healthy(coordinator), procs, logs[:1])
        procs.append(
            await _spawn(
                [
                    "worker",
                    "--port",
                    str(args.worker_port),
                    "--coordinator",
                    coordinator,
                    "--data-dir",
                    str(data / "worker"),
                    "--engine",
                    args.engine,
                    "--model",
                    args.model,
                    *(["--upstream", args.upstream] if args.upstream else []),
                    *(["--upstream-model", args.upstream_model] if args.upstream_model else []),
                ],
                logs[1],
                env,
            )
        )
        # Health first (the model loads meanwhile), then one look at discovery: polling
        # ListNodes would spend the discovery rate limit of this machine's IP.
        await _wait_for("the worker", lambda: _healthy(worker), procs, logs)
        async with CoordinatorClient(coordinator) as client:

            async def registered() -> bool:
                try:
                    nodes = (await client.list_nodes()).nodes
                except Exception:  # not up yet
                    return False
                return any(n.endpoint == worker for n in nodes)

            # Once a second: the first heartbeat is on its way, and each look is a
            # discovery call counted against this machine's IP.
            await _wait_for("the worker's registration", registered, procs, logs, interval_s=1.0)
        # The OpenAI face runs in this process: a gRPC service behind its Envoy.
        settings = SidecarSettings.from_env(os.environ)
        user = dataclasses.replace(settings.client, coordinator=coordinator)
        sidecar = ClientSidecar(
            dataclasses.replace(settings, http_port=args.http_port, client=user)
        )
        await sidecar.start()
        print(
            f"troop is up (embedded default: SQLite and in-process liveness in {data})\n"
            f"  coordinator  {coordinator}   grpcurl -plaintext {coordinator} list\n"
            f"  worker       {worker}   engine {args.engine}, model {args.model}\n"
            f"  openai       {sidecar.url}   (base_url for OpenAI SDKs and tools)\n"
            f"  owner key    {data / 'worker' / 'owner.key'} (earns the worker's credits)\n"
            f"  logs         {logs[0]}, {logs[1]}\n"
            "ready: press Ctrl-C to stop",
            flush=True,
        )
        ending = await stopping.wait(*(p.wait() for p in procs), sidecar.wait())
        if not ending.signalled:
            print("troop up: a component exited; stopping", file=sys.stderr)
        return ending.exit_code
    except _Failed as exc:
        print(f"troop up: {exc}", file=sys.stderr)
        return 1
    finally:  # the sidecar, then the worker, then the coordinator
        if sidecar is not None:
            await sidecar.stop()
        await stop_processes(procs, CHILD_GRACE_S)
