"""A deterministic engine with no model: a real implementation for tests and demos.

It answers "You said: <the last user message>" one word per chunk at a set
pace, honouring max_tokens (one word = one token) and stop sequences, so the
worker, the client and the economy can be exercised end to end in
milliseconds. Its answer rule and each word's log-probability are
`troop_common.fake_model`'s, so its output evidence can be scored;
`logprob_shift` (TROOP_WORKER_FAKE_LOGPROB_SHIFT) adds to every log-probability
it reports: a cheating node, for tests of the verifier.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from troop_common.evidence import TokenEvidence
from troop_common.fake_model import echo_logprob, echo_words
from troop_worker.engine.stops import StopScanner
from troop_worker.engine.types import FinishReason, GenerationChunk, GenerationRequest


class FakeEngine:
    """Echo engine: `FakeEngine(["fake-model"], delay_s=0.02)`."""

    continues_answers = True

    def __init__(
        self,
        models: Sequence[str] = ("smollm2-135m-instruct",),
        *,
        delay_s: float = 0.02,
        logprob_shift: float = 0.0,
    ):
        self.models = list(models)
        self.delay_s = delay_s
        self.logprob_shift = logprob_shift
        self.loaded = False

    async def load(self) -> None:
        self.loaded = True

    async def close(self) -> None:
        self.loaded = False

    @staticmethod
    def answer(request: GenerationRequest) -> list[str]:
        """The words the engine will say, each with its leading space."""
        return echo_words([(m.role, m.content) for m in request.messages])

    @classmethod
    def remaining(cls, request: GenerationRequest) -> list[str]:
        """The words still to say: after `request.continuation`, when the answer begins with
        it word for word (as one this engine started elsewhere does); else the whole answer."""
        words = cls.answer(request)
        return words[cls._said(request, words) :]

    @staticmethod
    def _said(request: GenerationRequest, words: list[str]) -> int:
        """How many of the answer's words the continuation already said (0: none, or it is
        not this answer's beginning)."""
        said = ""
        for n, word in enumerate(words):
            if said == request.continuation:
                return n
            said += word
        return len(words) if said == request.continuation else 0

    def _evidence(self, position: int, word: str) -> TokenEvidence:
        return TokenEvidence(word.encode(), echo_logprob(position, word) + self.logprob_shift)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        prompt_tokens = sum(len(m.content.split()) + 1 for m in request.messages)
        prompt_tokens += len(request.continuation.split())
        request.check_prompt(prompt_tokens)
        answer = self.answer(request)
        start = self._said(request, answer)
        words = answer[start:]
        if not words:  # the continuation was the whole answer
            yield GenerationChunk("", FinishReason.STOP, prompt_tokens, 0)
            return
        scanner = StopScanner(request.stop)
        count = min(len(words), request.max_tokens)
        reason = FinishReason.LENGTH if len(words) > count else FinishReason.STOP
        text = ""
        tokens: list[TokenEvidence] = []  # since the last chunk (a stop may hold text back)
        for n, word in enumerate(words[:count], start=1):
            await asyncio.sleep(self.delay_s)
            text += word
            tokens.append(self._evidence(start + n - 1, word))
            piece = scanner.feed(text, final=n == count)
            finish = FinishReason.STOP if scanner.stopped else reason if n == count else None
            if piece or finish is not None:
                yield GenerationChunk(piece, finish, prompt_tokens, n, tuple(tokens))
                tokens = []
            if finish is not None:
                return
