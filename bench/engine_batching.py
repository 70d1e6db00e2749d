"""The built-in torch engine: one request at a time against 4 and 8 at once (batched).

    .venv/bin/python -m bench.engine_batching [--dtype bfloat16] [--runs 1]

Loads SmolLM2 once in this process and streams the prompt set of `bench/prompts.py`
(greedy, 64 new tokens) straight to the engine — no network, so the figures are the
engine's own:

  1. one at a time: each prompt in turn (the baseline of the same run);
  2. 4 at once and 8 at once: that many prompts together, which the engine decodes as
     one batch (continuous batching, docs/adr/0038).

For each: tokens per second of wall time (all streams together; a token is a generated
token as the engine counts it), the ratio against one at a time, the median per-stream
decode rate, and time to first token (p50, max). `run(...)` returns the rows as dicts
(for scripts/bench); `main()` prints them as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from pathlib import Path
from typing import Any

from bench.profile import recording
from bench.prompts import MAX_TOKENS, PROMPTS, TEMPERATURE
from bench.streams import Stream, row, table
from troop_worker.engine.torch_engine import TorchEngine
from troop_worker.engine.types import GenerationRequest, Message


async def _stream(engine: TorchEngine, prompt: str, max_tokens: int) -> Stream:
    request = GenerationRequest(
        (Message("user", prompt),), temperature=TEMPERATURE, max_tokens=max_tokens, seed=0
    )
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async for chunk in engine.stream(request):
        if first is None:
            first = time.perf_counter() - started
        tokens = chunk.completion_tokens
    total = time.perf_counter() - started
    return Stream(first if first is not None else total, total, tokens)


async def measure(
    engine: TorchEngine,
    name: str,
    *,
    runs: int = 1,
    max_tokens: int = MAX_TOKENS,
    profile: Path | None = None,
) -> list[dict[str, Any]]:
    """One at a time, then 4 and 8 at once, on a loaded engine; one dict per mode.
    With `profile`, py-spy then records this process for 3 s of one more 8-at-once round,
    which is not measured (sampling slows the engine by ~15%)."""
    await _stream(engine, PROMPTS[0], 8)  # warm up
    single: list[Stream] = []
    for _ in range(runs):
        for prompt in PROMPTS:
            single.append(await _stream(engine, prompt, max_tokens))
    rows = [row(name, "one at a time", 1, single, sum(s.total_s for s in single))]
    for concurrency in (4, 8):
        together: list[Stream] = []
        wall = 0.0
        for _ in range(runs):
            for start in range(0, len(PROMPTS), concurrency):
                batch = PROMPTS[start : start + concurrency]
                began = time.perf_counter()
                together += await asyncio.gather(*(_stream(engine, p, max_tokens) for p in batch))
                wall += time.perf_counter() - began
        rows.append(row(name, f"{concurrency} at once", concurrency, together, wall))
    if profile is not None:
        with recording(profile, {"engine": os.getpid()}, 3):
            await asyncio.gather(*(_stream(engine, p, max_tokens) for p in PROMPTS))
    baseline = rows[0]["tokens_per_s"]
    for each in rows:
        each["vs_one_at_a_time"] = round(each["tokens_per_s"] / baseline, 2) if baseline else 0.0
    return rows


async def _run(
    dtype: str, runs: int, max_tokens: int, threads: int | None, profile: Path | None
) -> list[dict]:
    engine = TorchEngine(dtype=dtype, threads=threads, max_batch=8)
    await engine.load()
    try:
        name = f"troop torch {dtype}"
        return await measure(engine, name, runs=runs, max_tokens=max_tokens, profile=profile)
    finally:
        await engine.close()


def run(
    *,
    dtype: str = "bfloat16",
    runs: int = 1,
    max_tokens: int = MAX_TOKENS,
    threads: int | None = None,
    profile: Path | None = None,
) -> list[dict[str, Any]]:
    """Load the engine, measure the three modes, stop it (py-spy into `profile`/engine.txt)."""
    return asyncio.run(_run(dtype, runs, max_tokens, threads, profile))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--runs", type=int, default=1, help="passes over the prompt set")
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    args = parser.parse_args()
    rows = run(dtype=args.dtype, runs=args.runs, max_tokens=args.max_tokens, threads=args.threads)
    print(
        f"\nSmolLM2-135M Q4_1 in the torch engine, greedy, max_tokens={args.max_tokens}, "
        f"{len(PROMPTS)} prompts × {args.runs}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
