"""A client in another language, written from docs/protocol.md and the protos alone, does the
whole paid journey against the real coordinator and worker: join, price, authorize, present
the ticket, check the node proof, countersign, settle (tests/e2e/node_client/client.mjs)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MODEL, require

CLIENT_DIR = Path(__file__).parent / "node_client"
NODE_TIMEOUT_S = 45
NPM_TIMEOUT_S = 300


def _lock_installed() -> bool:
    """Whether node_modules holds what package-lock.json pins (npm's own record of it)."""
    hidden = CLIENT_DIR / "node_modules" / ".package-lock.json"
    lock = CLIENT_DIR / "package-lock.json"
    if not hidden.exists():
        return False
    wanted = json.loads(lock.read_text())["packages"]
    have = json.loads(hidden.read_text())["packages"]
    return all(
        have.get(name, {}).get("version") == entry.get("version")
        for name, entry in wanted.items()
        if name  # "" is the project itself
    )


@pytest.fixture(scope="session")
def node_client() -> list[str]:
    """`node client.mjs`, with its pinned dependencies installed (`npm ci`, once)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    require("Node.js", node is not None and npm is not None, "node and npm on PATH")
    assert node is not None and npm is not None
    if not _lock_installed():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=CLIENT_DIR,
            check=True,
            timeout=NPM_TIMEOUT_S,
        )
    return [node, str(CLIENT_DIR / "client.mjs")]


async def _run(command: list[str], env: dict[str, str]) -> dict:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=CLIENT_DIR,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"the Node.js client ran past {NODE_TIMEOUT_S} s")
    assert process.returncode == 0, f"client failed:\n{err.decode()}\n{out.decode()}"
    lines = out.decode().strip().splitlines()
    assert len(lines) == 1, out.decode()
    return json.loads(lines[0])


def charge(prompt_tokens: int, completion_tokens: int, price: dict) -> int:
    """docs/protocol.md, Prices and charges."""
    return (
        prompt_tokens * int(price["prompt_millicredits_per_1k_tokens"])
        + completion_tokens * int(price["completion_millicredits_per_1k_tokens"])
        + 500
    ) // 1000


async def test_node_client_pays_for_one_job(start_mesh, node_client) -> None:
    from troop_coordinator.admin import audit_ledger
    from troop_coordinator.settings import CoordinatorSettings

    prompt = "hello from a client in another language"
    async with start_mesh() as mesh:
        result = await _run(
            node_client, {"COORDINATOR": mesh.coordinator, "MODEL": MODEL, "PROMPT": prompt}
        )
        node_id = mesh.worker.node_id

    assert result["text"] == f"You said: {prompt}"
    assert result["finish_reason"] == "FINISH_REASON_STOP"
    assert result["node_id"] == node_id
    words = len(result["text"].split())
    assert result["worker_completion_tokens"] == words
    # The client vouches for the worker's count: it is below the client's byte bound.
    assert result["completion_tokens"] == words
    assert result["report"]["disputed"] is False

    # Authorize's bound is the client's estimate without a tokenizer, and the reservation
    # is that bound's charge.
    assert result["max_prompt_tokens"] == len(prompt.encode()) + 8 + 64
    assert int(result["reserved"]) == charge(result["max_prompt_tokens"], 16, result["price"])

    # The job is charged at the published price, for the counts both sides agree on.
    assert result["authorized_price"] == result["price"]
    expected = charge(result["prompt_tokens"], result["completion_tokens"], result["price"])
    assert expected > 0
    assert int(result["charged"]) == expected
    assert int(result["charged"]) < int(result["reserved"])

    out = io.StringIO()
    settings = CoordinatorSettings(database_url=f"sqlite+aiosqlite:///{mesh.data / 'ledger.db'}")
    assert await audit_ledger(settings, out=out) == 0, out.getvalue()
