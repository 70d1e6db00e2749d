"""`troop status` as a user runs it, against a real coordinator on PostgreSQL and a worker
(fake engine): after one paid job, one frame shows the node, the model, the balance after
the charge and that job; without --once on a pipe, frames follow each other until Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import MODEL
from tests.e2e.test_cli import troop
from troop_cli import format as fmt
from troop_cli.status import ENTER, FRAME, LEAVE


def millicredits(printed: str) -> int:
    """'3,599.830' → 3599830."""
    return int(printed.replace(",", "").replace(".", ""))


async def test_status_once_shows_the_node_the_model_the_balance_and_the_job(
    start_mesh, postgres_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "TROOP_CONFIG_DIR": str(tmp_path / "user")}
    async with start_mesh(coordinator_overrides={"database_url": postgres_url}) as mesh:
        at = ["--coordinator", mesh.coordinator]

        def run(*args: str) -> str:
            done = troop(*args, *at, env=env)
            assert done.returncode == 0, done.stderr
            return done.stdout

        await asyncio.to_thread(run, "join")
        await asyncio.to_thread(run, "chat", "--model", MODEL, "hello", "status")
        balance = await asyncio.to_thread(run, "balance", "--settled")
        assert "(reserved 0.000)" in balance and "3,600.000 credits" not in balance
        credits = balance.split()[0]  # what is left after the charge
        status = await asyncio.to_thread(run, "status", "--once")
        node_id = mesh.worker.node_id

    assert "\x1b" not in status  # not a terminal: plain text
    sections = status.split("\n\n")
    nodes, models, account, jobs = sections[1:5]
    assert nodes.startswith("NODES (1 live)") and fmt.short_key(node_id) in nodes
    assert MODEL in nodes and "0/" in nodes  # its load: no job running now
    assert models.startswith("MODELS") and MODEL in models
    assert f"balance {credits} credits  reserved 0.000" in account
    assert jobs.startswith("YOUR RECENT JOBS (1)")
    (job,) = jobs.splitlines()[2:]
    assert MODEL in job and " charged " in job
    charged, tokens = job.split()[6:8]  # WHEN is two words: date, time
    assert millicredits(charged) == 3_600_000 - millicredits(credits)
    # The tokens the charge is for: the fake engine said "You said: hello status".
    prompt, completion = tokens.split("+")
    assert int(prompt) > 0 and completion == "4"


async def test_status_without_once_draws_frame_after_frame_until_ctrl_c(
    start_mesh, tmp_path: Path
) -> None:
    env = {**os.environ, "TROOP_CONFIG_DIR": str(tmp_path / "user"), "PYTHONUNBUFFERED": "1"}
    async with start_mesh() as mesh:
        out = tmp_path / "status.out"

        def watch() -> tuple[int, str]:
            with out.open("w") as sink:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "troop_cli", "status", "--interval", "0.2",
                     "--coordinator", mesh.coordinator],
                    stdout=sink, stderr=subprocess.STDOUT, env=env,
                )  # fmt: skip
            deadline = time.monotonic() + 60
            while out.read_text().count("troop status  coordinator") < 3:
                assert proc.poll() is None, out.read_text()
                assert time.monotonic() < deadline, out.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            return proc.wait(timeout=30), out.read_text()

        code, text = await asyncio.to_thread(watch)
    assert code == 130, text  # Ctrl-C, as the other commands
    assert "\x1b" not in text and "Traceback" not in text
    assert "NODES (1 live)" in text and "every 0.2 s" in text


async def test_on_a_terminal_it_redraws_full_screen_and_gives_the_screen_back_on_ctrl_c(
    start_mesh, tmp_path: Path
) -> None:
    env = {**os.environ, "TROOP_CONFIG_DIR": str(tmp_path / "user"), "COLUMNS": "100"}
    async with start_mesh() as mesh:

        def watch() -> tuple[int, bytes]:
            main, child = pty.openpty()
            proc = subprocess.Popen(
                [sys.executable, "-m", "troop_cli", "status", "--interval", "0.2",
                 "--coordinator", mesh.coordinator],
                stdin=subprocess.DEVNULL, stdout=child, stderr=child, env=env,
            )  # fmt: skip
            os.close(child)
            seen = b""
            deadline = time.monotonic() + 60
            try:
                while seen.count(FRAME.encode()) < 2:
                    assert proc.poll() is None and time.monotonic() < deadline, seen
                    if select.select([main], [], [], 0.1)[0]:
                        seen += os.read(main, 65536)
                proc.send_signal(signal.SIGINT)
                code = proc.wait(timeout=30)
                while select.select([main], [], [], 0.1)[0]:
                    try:
                        chunk = os.read(main, 65536)
                    except OSError:  # the terminal's other side is closed
                        break
                    if not chunk:
                        break
                    seen += chunk
            finally:
                os.close(main)
            return code, seen

        code, seen = await asyncio.to_thread(watch)
    assert code == 130
    assert seen.startswith(ENTER.encode()), seen[:40]
    assert seen.rstrip(b"\r\n").endswith(LEAVE.encode()), seen[-40:]  # the screen restored
    assert b"NODES (1 live)" in seen
    assert all(len(line) <= 100 for line in seen.decode().split("\x1b[2J")[1].splitlines())
