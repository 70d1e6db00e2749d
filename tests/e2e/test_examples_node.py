"""examples/node, the client a Node.js developer reads, is the gate that the contract holds in
another language: written from docs/protocol.md and the protos alone, it does the whole paid
journey against `troop up --engine fake` as a user starts it (join, price, authorize, dial as
the grant's `tls` says, check the node proof, countersign, GetJob until settled, and compare
what the user paid with what the worker's owner earned). And buf.gen.ts.yaml turns the same
protos into JavaScript modules that Node.js loads, offline (ADR 39)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "node"
MODEL = "smollm2-135m-instruct"
NODE_TIMEOUT_S = 60
NPM_TIMEOUT_S = 300


def _lock_installed() -> bool:
    """Whether node_modules holds what package-lock.json pins (npm's own record of it)."""
    hidden = EXAMPLE / "node_modules" / ".package-lock.json"
    if not hidden.exists():
        return False
    wanted = json.loads((EXAMPLE / "package-lock.json").read_text())["packages"]
    have = json.loads(hidden.read_text())["packages"]
    return all(
        have.get(name, {}).get("version") == entry.get("version")
        for name, entry in wanted.items()
        if name  # "" is the project itself
    )


@pytest.fixture(scope="session")
def node() -> str:
    """`node`, with examples/node's pinned dependencies installed (`npm ci`, once)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    require("Node.js", node is not None and npm is not None, "node and npm on PATH")
    assert node is not None and npm is not None
    if not _lock_installed():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--prefer-offline"],
            cwd=EXAMPLE,
            check=True,
            timeout=NPM_TIMEOUT_S,
        )
    return node


def _run_client(node: str, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [node, "client.mjs"],
        cwd=EXAMPLE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )
    assert done.returncode == 0, f"client failed:\n{done.stderr}\n{done.stdout}"
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


def charge(prompt_tokens: int, completion_tokens: int, price: dict) -> int:
    """docs/protocol.md, Prices and charges."""
    return (
        prompt_tokens * int(price["prompt_millicredits_per_1k_tokens"])
        + completion_tokens * int(price["completion_millicredits_per_1k_tokens"])
        + 500
    ) // 1000


def test_the_node_example_pays_what_the_owner_earns(node, troop_up, tmp_path: Path) -> None:
    coordinator, env, _ = troop_up
    data = tmp_path / "up"
    prompt = "hello from a client in another language"
    result = _run_client(
        node,
        {
            "COORDINATOR": coordinator,
            "MODEL": MODEL,
            "PROMPT": prompt,
            "OWNER_KEY": str(data / "worker" / "owner.key"),
        },
    )

    assert result["text"] == f"You said: {prompt}"
    assert result["finish_reason"] == "FINISH_REASON_STOP"
    assert result["node_id"] in (data / "worker.log").read_text()
    # `troop up`'s worker serves plaintext on loopback, and the grant says so.
    assert result["tls"] is False
    words = len(result["text"].split())
    assert result["worker_completion_tokens"] == words
    # The client vouches for the worker's count: it is below the client's byte bound.
    assert result["completion_tokens"] == words
    assert result["report"]["disputed"] is False

    # Authorize's bound is the client's estimate without a tokenizer, and the reservation
    # is that bound's charge.
    assert result["max_prompt_tokens"] == len(prompt.encode()) + 8 + 64
    assert int(result["reserved"]) == charge(result["max_prompt_tokens"], 16, result["price"])

    # The job is charged at the published price, for the counts both sides agree on; GetJob,
    # the user's ledger and the owner's ledger all say the same amount.
    assert result["authorized_price"] == result["price"]
    expected = charge(result["prompt_tokens"], result["completion_tokens"], result["price"])
    assert expected > 0
    assert result["job_state"] == "JOB_STATE_CHARGED"
    assert result["receipt_received"] is True and result["countersigned"] is True
    assert int(result["charged"]) == int(result["paid"]) == int(result["earned"]) == expected
    assert int(result["starter"]) - int(result["balance"]) == expected
    assert expected < int(result["reserved"])

    admin = [sys.executable, "-m", "troop_cli", "admin"]
    audited = subprocess.run(
        [*admin, "audit-ledger", "--data-dir", str(data / "coordinator")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert audited.returncode == 0 and "ledger OK" in audited.stdout, audited.stdout


def test_buf_generates_javascript_that_node_loads(node, tmp_path: Path) -> None:
    buf = shutil.which("buf")
    require("buf", buf is not None, "buf on PATH (the venv's, as scripts/generate uses)")
    assert buf is not None
    out = tmp_path / "ts"
    subprocess.run(
        [buf, "generate", "--template", "buf.gen.ts.yaml", "-o", str(out)],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    for name in ("common", "coordinator", "inference", "openai"):
        assert (out / "troop" / "v1" / f"{name}_pb.js").is_file(), name
        assert (out / "troop" / "v1" / f"{name}_pb.d.ts").is_file(), name
    # The generated modules import @bufbuild/protobuf: resolve it from the example.
    (out / "node_modules").symlink_to(EXAMPLE / "node_modules")
    (out / "package.json").write_text('{"type": "module"}\n')
    script = """
import { create, toBinary } from "@bufbuild/protobuf";
import { AuthorizeResponseSchema, CoordinatorService } from "./troop/v1/coordinator_pb.js";
import { InferenceService } from "./troop/v1/inference_pb.js";
import { file_troop_v1_openai } from "./troop/v1/openai_pb.js";
const grant = create(AuthorizeResponseSchema, { jobId: "j", endpoint: "h:1", tls: true });
console.log(JSON.stringify({
  grant: Buffer.from(toBinary(AuthorizeResponseSchema, grant)).toString("hex"),
  coordinator: Object.keys(CoordinatorService.method),
  inference: Object.keys(InferenceService.method),
  openai: file_troop_v1_openai.services.map((s) => s.typeName),
}));
"""
    done = subprocess.run(
        [node, "--input-type=module", "-e", script],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert {"authorize", "getJob", "reportUsage"} <= set(loaded["coordinator"])
    assert {"chatCompletion", "proveEndpoint"} <= set(loaded["inference"])
    assert loaded["openai"]
    # What Node.js encoded, Python decodes: one contract, the new field included.
    from troop_common.proto import coordinator_pb2

    grant = coordinator_pb2.AuthorizeResponse.FromString(bytes.fromhex(loaded["grant"]))
    assert (grant.job_id, grant.endpoint, grant.tls) == ("j", "h:1", True)
