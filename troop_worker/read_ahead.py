"""The engine's stream read ahead of the gRPC writes, in a task of its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from troop_worker.engine.types import GenerationChunk


class ReadAhead:
    """Reads an engine's stream in a task of its own, so the engine never waits for a gRPC
    write: what it made while a write was in flight goes out as one chunk (the text and the
    tokens joined, the counts and finish reason of the last). With a fast reader each chunk
    goes alone; a slow reader (or a busy loop) gets fewer, larger messages instead of a
    slower engine.
    An engine error reaches the reader after the chunks made before it. `close` stops the
    engine (cancelling the read in progress) and closes its stream."""

    def __init__(self, stream: AsyncIterator[GenerationChunk]) -> None:
        self._stream = stream
        self._ready: list[GenerationChunk] = []
        self._error: Exception | None = None
        self._done = False
        self._wake = asyncio.Event()
        self.first_at = 0.0  # perf_counter when the engine yielded its first sendable chunk
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for chunk in self._stream:
                if not self.first_at and (chunk.text or chunk.finish_reason is not None):
                    self.first_at = time.perf_counter()
                self._ready.append(chunk)
                self._wake.set()
                if chunk.finish_reason is not None:
                    break
        except Exception as exc:  # handed to the reader, in order
            self._error = exc
        finally:
            self._done = True
            self._wake.set()
            await self._stream.aclose()  # type: ignore[attr-defined]

    async def next(self) -> GenerationChunk | None:
        """Everything made since the last call, as one chunk; None once the stream ended."""
        while not self._ready:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._done:
                return None
            self._wake.clear()
            await self._wake.wait()
        ready, self._ready = self._ready, []
        if len(ready) == 1:
            return ready[0]
        last = ready[-1]
        text = "".join(c.text for c in ready)
        tokens = tuple(token for c in ready for token in c.tokens)
        return GenerationChunk(
            text, last.finish_reason, last.prompt_tokens, last.completion_tokens, tokens
        )

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
