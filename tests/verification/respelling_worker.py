"""A hostile worker for tests: the real worker on the built-in engine, except that every
token it sends, in the stream and in the output evidence it signs, is spelled " banana",
while each token's id and log-probability stay the model's. The user receives text the
model never produced; a verifier that scored the ids would see the honest model.

    python -m tests.verification.respelling_worker   # the worker's settings, as for troop_worker
"""

from __future__ import annotations

import dataclasses
import runpy
from collections.abc import AsyncIterator

from troop_worker.engine import torch_engine
from troop_worker.engine.types import GenerationChunk, GenerationRequest

WORD = b" banana"
_honest = torch_engine.TorchEngine.stream


async def _respelled(
    self: torch_engine.TorchEngine, request: GenerationRequest
) -> AsyncIterator[GenerationChunk]:
    async for chunk in _honest(self, request):
        tokens = tuple(
            dataclasses.replace(token, token=WORD) if token.token else token
            for token in chunk.tokens
        )
        text = b"".join(token.token for token in tokens).decode()
        yield dataclasses.replace(chunk, text=text, tokens=tokens)


torch_engine.TorchEngine.stream = _respelled  # type: ignore[method-assign]

if __name__ == "__main__":
    runpy.run_module("troop_worker", run_name="__main__", alter_sys=True)
