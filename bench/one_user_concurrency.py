"""One user's concurrent requests through the OpenAI face: served, or refused?

    .venv/bin/python -m bench.one_user_concurrency [--requests 4,8]

A real coordinator (embedded state), one worker (the fake engine, 40 tokens at 10 ms
each) and the client sidecar with its Envoy, in this process. One user sends N chat
requests at once with the official `openai` SDK (streamed, no retries), the way an
OpenAI tool that parallelises does, and counts how many were served and how long their
first token took. Twice in the same run: the worker with the limits it had before
(4 running, 2 per user, excess refused: the baseline) and with today's defaults (8
running, a fair queue of 32). `run(...)` returns the rows as dicts (for scripts/bench);
`main()` prints them as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai

from troop_client.settings import ClientSettings
from troop_client.sidecar import ClientSidecar, SidecarSettings
from troop_common.coordinator_client import CoordinatorClient
from troop_coordinator.app import Coordinator
from troop_coordinator.settings import CoordinatorSettings
from troop_worker.app import Worker
from troop_worker.engine.fake import FakeEngine
from troop_worker.settings import WorkerSettings

MODEL = "smollm2-135m-instruct"
ANSWER_WORDS = 38  # + "You said:" = 40 tokens from the fake engine
LIMITS: dict[str, dict[str, Any]] = {
    "before (4 running, 2 per user, no queue)": {
        "max_concurrent_jobs": 4,
        "max_jobs_per_user": 2,
        "max_queued_jobs": 0,
    },
    "now (defaults)": {},
}


@contextlib.asynccontextmanager
async def _mesh(data: Path, limits: dict[str, Any]) -> AsyncIterator[str]:
    """The OpenAI base URL of a running coordinator + worker + sidecar."""
    settings = dataclasses.replace(
        CoordinatorSettings.from_env({}),
        port=0,
        data_dir=data / "coordinator",
        database_url=f"sqlite+aiosqlite:///{data / 'ledger.db'}",
        rate_limits="",
    )
    async with Coordinator(settings) as coordinator:
        worker_settings = dataclasses.replace(
            WorkerSettings.from_env({}),
            port=0,
            coordinator=coordinator.address,
            data_dir=data / "worker",
            engine="fake",
            heartbeat_interval_s=0.5,
            rate_limits="",
            **limits,
        )
        async with Worker(worker_settings, engine=FakeEngine([MODEL], delay_s=0.01)) as worker:
            async with CoordinatorClient(coordinator.address) as client:
                deadline = time.monotonic() + 30
                while not any(
                    n.endpoint == worker.advertise for n in (await client.list_nodes()).nodes
                ):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the worker was never listed")
                    await asyncio.sleep(0.1)
            sidecar_settings = SidecarSettings(
                client=ClientSettings(coordinator=coordinator.address, config_dir=data / "user"),
                http_port=0,
            )
            async with ClientSidecar(sidecar_settings) as sidecar:
                yield sidecar.url


async def _ask(api: openai.AsyncOpenAI, n: int) -> float | None:
    """Time to first token in seconds, or None if the request was refused or failed."""
    started = time.perf_counter()
    words = " ".join(f"w{n}-{i}" for i in range(ANSWER_WORDS))
    try:
        stream = await api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": words}], stream=True
        )
        first = None
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        return first
    except openai.APIError:
        return None


async def _measure(requests: list[int]) -> list[dict[str, Any]]:
    rows = []
    for name, limits in LIMITS.items():
        with tempfile.TemporaryDirectory(prefix="troop-bench-") as tmp:
            async with _mesh(Path(tmp), limits) as url:
                api = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
                await _ask(api, -1)  # warm up
                for count in requests:
                    results = await asyncio.gather(*(_ask(api, n) for n in range(count)))
                    ttfts = sorted(r * 1000 for r in results if r is not None)
                    rows.append(
                        {
                            "limits": name,
                            "requests": count,
                            "served": len(ttfts),
                            "ttft_p50_ms": round(statistics.median(ttfts), 1) if ttfts else None,
                            "ttft_max_ms": round(ttfts[-1], 1) if ttfts else None,
                        }
                    )
                await api.close()
    return rows


def run(*, requests: tuple[int, ...] = (4, 8)) -> list[dict[str, Any]]:
    return asyncio.run(_measure(list(requests)))


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| worker limits | concurrent requests | served | TTFT p50 ms | TTFT max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        p50 = "—" if r["ttft_p50_ms"] is None else f"{r['ttft_p50_ms']:.0f}"
        top = "—" if r["ttft_max_ms"] is None else f"{r['ttft_max_ms']:.0f}"
        lines.append(
            f"| {r['limits']} | {r['requests']} | {r['served']} of {r['requests']} "
            f"| {p50} | {top} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", default="4,8", help="comma-separated concurrency levels")
    args = parser.parse_args()
    print(table(run(requests=tuple(int(n) for n in args.requests.split(",")))))


if __name__ == "__main__":
    main()
