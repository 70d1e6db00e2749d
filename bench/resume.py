"""How long an answer stalls when its worker dies mid-stream and the SDK resumes it.

    .venv/bin/python -m bench.resume [--runs 10]

A real coordinator (embedded state) and two workers (the fake engine, one word every 20 ms),
all as processes. Each run streams one answer through the SDK; after 10 chunks the worker
serving it is killed with SIGKILL, the SDK resumes on the other worker (ADR 47), and the
killed worker is started again for the next run. Measured per run: the seam, from the last
chunk of the killed node to the first chunk of the resumed one (what the caller sees as a
stall), and from the kill to that first resumed chunk (the goal: within 2 s); the baseline
is the ordinary gap between two chunks of the same answer, measured in the same runs.
`run(...)` returns the rows (for scripts/bench); `main()` prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.processes import COORDINATOR, REPO_ROOT, free_port, running
from bench.streams import percentile
from troop_client import ChatOptions, ClientSettings, Message, TroopClient
from troop_common.keys import Identity

MODEL = "smollm2-135m-instruct"
PROMPT = " ".join(f"w{n}" for n in range(60))
KILL_AFTER = 10  # chunks


def _worker(coordinator: str, name: str, data: Path, run: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TROOP_COORDINATOR": coordinator,
        "TROOP_WORKER_ENGINE": "fake",
        "TROOP_WORKER_PORT": "0",
        "TROOP_NODE_ID": name,
        "TROOP_WORKER_DATA_DIR": str(data / name),
        "TROOP_WORKER_HEARTBEAT_S": "1",
    }
    log = (data / f"{name}-{run}.log").open("wb")
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "troop_worker"], env=env, cwd=REPO_ROOT, stdout=log, stderr=log
        )


async def _both_listed(client: TroopClient, deadline_s: float = 60) -> None:
    give_up = time.monotonic() + deadline_s
    while len(await client.nodes(MODEL)) < 2:
        if time.monotonic() > give_up:
            raise RuntimeError("the workers did not both come up")
        await asyncio.sleep(0.2)


async def _runs(runs: int, data: Path) -> list[dict[str, Any]]:
    port = free_port()
    env = {
        "TROOP_COORDINATOR_PORT": str(port),
        "TROOP_DATA_DIR": str(data / "coordinator"),
        "TROOP_HEARTBEAT_INTERVAL_SECONDS": "1",
        "TROOP_RATE_LIMITS": "",
    }
    async with running("coordinator", COORDINATOR, env, data, port) as (address, _):
        workers = {name: _worker(address, name, data, 0) for name in ("node-a", "node-b")}
        settings = ClientSettings(coordinator=address)
        rows = []
        try:
            async with TroopClient(address, Identity.generate(), settings) as client:
                await client.join()
                for run in range(1, runs + 1):
                    await _both_listed(client)
                    arrivals: list[tuple[float, str]] = []
                    killed_at = 0.0
                    options = ChatOptions(temperature=0.0, max_tokens=200)
                    async for chunk in client.chat([Message("user", PROMPT)], options=options):
                        arrivals.append((time.perf_counter(), chunk.job_id))
                        if len(arrivals) == KILL_AFTER:
                            name = (await client.job(chunk.job_id)).node_id
                            workers[name].send_signal(signal.SIGKILL)
                            await asyncio.to_thread(workers[name].wait)
                            killed_at = time.perf_counter()
                            workers[name] = _worker(address, name, data, run)
                    first_job = arrivals[0][1]
                    cut = next(i for i, (_, job) in enumerate(arrivals) if job != first_job)
                    gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
                    rows.append(
                        {
                            "run": run,
                            "seam_ms": (arrivals[cut][0] - arrivals[cut - 1][0]) * 1000,
                            "after_kill_ms": (arrivals[cut][0] - killed_at) * 1000,
                            "chunk_gap_ms": statistics.median(gaps) * 1000,
                        }
                    )
        finally:
            for process in workers.values():
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(process.wait)
    return rows


def run(runs: int = 10) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="troop-bench-resume-") as data:
        return asyncio.run(_runs(runs, Path(data)))


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    seams = [r["seam_ms"] for r in rows]
    after = [r["after_kill_ms"] for r in rows]
    return {
        "seam_p50_ms": percentile(seams, 0.5),
        "seam_max_ms": max(seams),
        "after_kill_p50_ms": percentile(after, 0.5),
        "after_kill_max_ms": max(after),
        "chunk_gap_p50_ms": statistics.median(r["chunk_gap_ms"] for r in rows),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | seam (last chunk → first resumed chunk) ms | kill → first resumed chunk ms "
        "| ordinary gap between chunks ms |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['run']} | {r['seam_ms']:.1f} | {r['after_kill_ms']:.1f} | {r['chunk_gap_ms']:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    rows = run(args.runs)
    print(table(rows))
    print(summary(rows))


if __name__ == "__main__":
    main()
