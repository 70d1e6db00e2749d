"""The `troop` command as a user runs it: `troop up`, then the client commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port


def troop(
    *args: str, env: dict[str, str], timeout: float = 60, stdin: str = ""
) -> subprocess.CompletedProcess:
    """`troop ARGS` as a subprocess; `stdin` is what is piped in (never a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "troop_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=stdin,
    )


def test_troop_up_then_chat_balance_history_nodes_models(
    troop_up, tmp_path: Path, grpcurl: str
) -> None:
    coordinator, env, banner = troop_up
    at = ["--coordinator", coordinator]

    joined = troop("join", *at, env=env)
    assert joined.returncode == 0, joined.stderr
    assert "3,600.000 starter credits" in joined.stdout

    chat = troop("chat", *at, "-v", "hello", "network", env=env)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip()
    assert "completion tokens" in chat.stdout

    balance = troop("balance", *at, "--settled", env=env)
    assert balance.returncode == 0, balance.stderr
    assert "(reserved 0.000)" in balance.stdout
    assert "3,600.000 credits" not in balance.stdout  # the job was charged

    history = troop("history", *at, env=env)
    assert history.returncode == 0, history.stderr
    for kind in ("grant", "reserve", "release"):
        assert kind in history.stdout

    # A question piped in; then a conversation, where each turn carries the earlier ones.
    piped = troop("chat", *at, env=env, stdin="what is piped in\n")
    assert piped.returncode == 0 and piped.stdout == "You said: what is piped in\n", piped.stderr
    talk = troop("chat", *at, "-i", "-v", env=env, stdin="first question\n\nsecond one\n/exit\n")
    assert talk.returncode == 0, talk.stderr
    lines = talk.stdout.splitlines()
    assert lines[0] == "You said: first question" and lines[2] == "You said: second one"
    first_prompt, second_prompt = (int(line[1:].split()[0]) for line in (lines[1], lines[3]))
    assert second_prompt > first_prompt + 2  # the first turn and its answer went along
    nothing = troop("chat", *at, env=env, stdin="")
    assert nothing.returncode == 2 and "nothing to ask" in nothing.stderr

    # An operator's signed call with grpcurl, the header from `troop auth-header`.
    header = troop("auth-header", *at, env=env)
    assert header.returncode == 0 and header.stdout.startswith("authorization: Bearer ")
    whoami = troop("whoami", *at, env=env).stdout.strip()
    body = json.dumps({"public_key": whoami})
    read = subprocess.run(
        [grpcurl, "-plaintext", "-H", header.stdout.strip(), "-d", body, coordinator,
         "troop.v1.CoordinatorService/GetBalance"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["publicKey"] == whoami

    # The whole job by hand, as an operator with grpcurl: Authorize, present the ticket
    # to the worker (`troop ticket-headers`), stream, countersign.
    def grpcurl_json(*args: str) -> dict:
        done = subprocess.run(
            [grpcurl, "-plaintext", *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}

    def signed() -> list[str]:
        return ["-H", troop("auth-header", *at, env=env).stdout.strip()]

    grant = grpcurl_json(
        *signed(), "-d", json.dumps({"model": "smollm2-135m-instruct", "max_tokens": 8}),
        coordinator, "troop.v1.CoordinatorService/Authorize",
    )  # fmt: skip
    headers = troop("ticket-headers", *at, grant["ticket"], env=env)
    assert headers.returncode == 0, headers.stderr
    present = [arg for line in headers.stdout.splitlines() for arg in ("-H", line)]
    request = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]}
    streamed = subprocess.run(
        [grpcurl, "-plaintext", *present, "-d", json.dumps(request), grant["endpoint"],
         "troop.v1.InferenceService/ChatCompletion"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert streamed.returncode == 0, streamed.stderr
    assert '"delta": " hi"' in streamed.stdout and "FINISH_REASON_STOP" in streamed.stdout
    report = grpcurl_json(
        *signed(), "-d", json.dumps({"job_id": grant["jobId"], "completion_tokens": 3}),
        coordinator, "troop.v1.CoordinatorService/ReportUsage",
    )  # fmt: skip
    assert report["jobId"] == grant["jobId"]

    nodes = troop("nodes", *at, env=env)
    assert nodes.returncode == 0 and "smollm2-135m-instruct" in nodes.stdout
    models = troop("models", *at, env=env)
    assert models.returncode == 0 and "smollm2-135m-instruct" in models.stdout

    # Each process logs what it does where `troop up` said its logs are.
    worker_log = (tmp_path / "up" / "worker.log").read_text()
    assert "serving smollm2-135m-instruct" in worker_log and " finished: " in worker_log
    assert "INFO" in (tmp_path / "up" / "coordinator.log").read_text()

    # The operator's checks, on the running network's own database.
    admin = ["--data-dir", str(tmp_path / "up" / "coordinator")]
    audited = troop("admin", "audit-ledger", *admin, env=env)
    assert audited.returncode == 0 and "ledger OK" in audited.stdout, audited.stdout
    verified = troop("admin", "verify-audit", *admin, env=env)
    assert verified.returncode == 0 and "audit chain OK" in verified.stdout, verified.stdout

    # `troop up` also serves the OpenAI API through Envoy, at the address it printed.
    base_url = next(w for w in banner.split() if w.startswith("http://") and w.endswith("/v1"))
    with urllib.request.urlopen(f"{base_url}/models", timeout=30) as response:
        listed = json.load(response)
    assert [m["id"] for m in listed["data"]] == ["smollm2-135m-instruct"]

    key = tmp_path / "user" / "identity.key"
    assert key.stat().st_mode & 0o077 == 0  # the identity is readable by its owner only


def test_a_client_command_without_a_coordinator_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "TROOP_CONFIG_DIR": str(tmp_path / "user")}
    address = f"127.0.0.1:{free_port()}"
    result = troop("balance", "--coordinator", address, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"troop: cannot reach the coordinator at {address} (connection refused)"
    )
    assert "troop up" in result.stderr  # and how to get one
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env_extra", "said"),
    [
        (["worker", "--engine", "openai"], {}, "engine openai needs TROOP_WORKER_UPSTREAM_URL"),
        (["worker"], {"TROOP_WORKER_PORT": "fifty"}, "TROOP_WORKER_PORT must be an integer"),
        (["worker", "--port", "fifty"], {}, "--port must be an integer, got 'fifty'"),
        (["client", "--port", "0", "--host", "0.0.0.0"], {}, "refusing to serve 0.0.0.0"),
        (["coordinator", "--port", "0", "--database-url", "mysql://db/troop"], {},
         "TROOP_DATABASE_URL must be postgresql://"),
        (["coordinator", "--port", "0"], {"TROOP_RATE_LIMITS": "ListNodes=lots"},
         "bad rate-limit rule"),
    ],
)  # fmt: skip
def test_a_setting_that_cannot_be_used_is_named_in_one_line(
    tmp_path: Path, args: list[str], env_extra: dict[str, str], said: str
) -> None:
    env = {**os.environ, "TROOP_DATA_DIR": str(tmp_path / "c"),
           "TROOP_WORKER_DATA_DIR": str(tmp_path / "w"), **env_extra}  # fmt: skip
    result = troop(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("troop: ") and said in result.stderr
    assert "Traceback" not in result.stderr
