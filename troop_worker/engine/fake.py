"""A deterministic engine with no model: a real implementation for tests and demos.

It answers "You said: <the last user message>" one word per chunk at a set
pace, honouring max_tokens (one word = one token) and stop sequences, so the
worker, the client and the economy can be exercised end to end in
milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from troop_worker.engine.stops import StopScanner
from troop_worker.engine.types import FinishReason, GenerationChunk, GenerationRequest


class FakeEngine:
    """Echo engine: `FakeEngine(["fake-model"], delay_s=0.02)`."""

    continues_answers = True

    def __init__(
        self, models: Sequence[str] = ("smollm2-135m-instruct",), *, delay_s: float = 0.02
    ):
        self.models = list(models)
        self.delay_s = delay_s
        self.loaded = False

    async def load(self) -> None:
        self.loaded = True

    async def close(self) -> None:
        self.loaded = False

    @staticmethod
    def answer(request: GenerationRequest) -> list[str]:
        """The words the engine will say, each with its leading space."""
        last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        words = ["You", "said:", *last.split()] if last.split() else ["Hello!"]
        return [words[0], *(" " + w for w in words[1:])]

    @classmethod
    def remaining(cls, request: GenerationRequest) -> list[str]:
        """The words still to say: after `request.continuation`, when the answer begins with
        it word for word (as one this engine started elsewhere does); else the whole answer."""
        words = cls.answer(request)
        said = ""
        for n, word in enumerate(words):
            if said == request.continuation:
                return words[n:]
            said += word
        return [] if said == request.continuation else words

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        prompt_tokens = sum(len(m.content.split()) + 1 for m in request.messages)
        prompt_tokens += len(request.continuation.split())
        request.check_prompt(prompt_tokens)
        words = self.remaining(request)
        if not words:  # the continuation was the whole answer
            yield GenerationChunk("", FinishReason.STOP, prompt_tokens, 0)
            return
        scanner = StopScanner(request.stop)
        count = min(len(words), request.max_tokens)
        reason = FinishReason.LENGTH if len(words) > count else FinishReason.STOP
        text = ""
        for n, word in enumerate(words[:count], start=1):
            await asyncio.sleep(self.delay_s)
            text += word
            piece = scanner.feed(text, final=n == count)
            if scanner.stopped:
                yield GenerationChunk(piece, FinishReason.STOP, prompt_tokens, n)
                return
            if n == count:
                yield GenerationChunk(piece, reason, prompt_tokens, n)
            elif piece:
                yield GenerationChunk(piece, None, prompt_tokens, n)
