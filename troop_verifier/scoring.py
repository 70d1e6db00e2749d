"""The trusted side of a check: what the real model says about a node's tokens.

`TorchScorer` loads the GGUF with transformers in float32 on the CPU (the
reference: no bf16 rounding, no 4-bit kernel), applies the chat template the
worker applies, and runs ONE teacher-forced forward pass over the prompt and
the node's tokens. Per generated position it returns the trusted
log-probability of the node's token, the trusted top log-probability and the
token's rank (0: the model's first choice). `FakeScorer` does the same for
the fake engine's echo model (`troop_common.fake_model`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from troop_common.evidence import TokenEvidence
from troop_common.fake_model import echo_logprob, echo_words
from troop_common.token_bytes import vocabulary_bytes

if TYPE_CHECKING:
    import torch

Messages = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class PositionScore:
    """The trusted model's view of one generated position.

    `token_id` is None when the node's bytes are no token of the vocabulary
    (then the other fields are None too and the position cannot be scored)."""

    token_id: int | None
    logprob: float | None  # trusted log-probability of the node's token
    top_logprob: float | None  # trusted log-probability of its first choice
    rank: int | None  # tokens the trusted model prefers to the node's (0: none)


class Scorer(Protocol):
    """Scores a node's tokens for a job's messages on a trusted model."""

    @property
    def models(self) -> list[str]: ...

    def score(self, messages: Messages, tokens: Sequence[TokenEvidence]) -> list[PositionScore]:
        """One PositionScore per token, in order (blocking: run it off the event loop)."""
        ...


class TorchScorer:
    """`TorchScorer(model_id, model_path=None)`, `load()` once (~15 s), then `score(...)`."""

    def __init__(
        self,
        model_id: str = "smollm2-135m-instruct",
        *,
        model_path: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self._models = [model_id]
        self.model_path = model_path
        self.threads = threads
        self._model: torch.nn.Module | None = None
        self._tokenizer: object | None = None
        self._bytes_of: list[bytes] = []  # each id's bytes, as the worker spells them
        self._ids_by_bytes: dict[bytes, int] = {}
        self._lock = threading.Lock()

    @property
    def models(self) -> list[str]:
        return self._models

    @property
    def hf_model(self) -> torch.nn.Module | None:
        return self._model

    def load(self) -> None:
        """Load tokenizer and float32 model (blocking; idempotent)."""
        with self._lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            from troop_common.model_files import default_model_path

            path = self.model_path or default_model_path()
            hf_logging.disable_progress_bar()
            if self.threads:
                torch.set_num_threads(self.threads)
            options = {"gguf_file": path.name, "local_files_only": True}
            tokenizer = AutoTokenizer.from_pretrained(path.parent, **options)
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, dtype=torch.float32, **options
            )
            self._bytes_of = vocabulary_bytes(tokenizer)
            self._ids_by_bytes = _ids_by_bytes(tokenizer, self._bytes_of)
            self._tokenizer = tokenizer
            self._model = model.eval()

    def token_id(self, token: TokenEvidence) -> int | None:
        """The vocabulary id of an evidence token: its own id when that id's bytes are its
        bytes, else the id whose bytes are its bytes; None when none is. The bytes decide:
        they are what the user received, and an id that spells something else would have
        the trusted model score a token the node never sent."""
        claimed = token.token_id
        if claimed is not None and 0 <= claimed < len(self._bytes_of):
            if self._bytes_of[claimed] == token.token:
                return claimed
        return self._ids_by_bytes.get(token.token) if token.token else None

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The prompt's ids after the worker's chat template."""
        from transformers.tokenization_utils_base import BatchEncoding

        assert self._tokenizer is not None, "load() first"
        tokenizer = cast("object", self._tokenizer)
        encoded = cast(BatchEncoding, tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [{"role": role, "content": content} for role, content in messages],
            add_generation_prompt=True, tokenize=True, return_dict=True,
        ))  # fmt: skip
        return list(encoded["input_ids"])

    def score(self, messages: Messages, tokens: Sequence[TokenEvidence]) -> list[PositionScore]:
        import torch

        self.load()
        model = self._model
        assert model is not None
        ids = [self.token_id(token) for token in tokens]
        if not tokens:
            return []
        prompt = self.prompt_ids(messages)
        # A token the vocabulary lacks is scored as nothing; the context goes on with the
        # end-of-text id in its place (positions after it are judged in a shifted context,
        # which only makes a failure likelier: a node cannot hide behind unknown bytes).
        filler = int(getattr(self._tokenizer, "eos_token_id", 0) or 0)
        context = prompt + [i if i is not None else filler for i in ids]
        with torch.inference_mode():
            logits = model(torch.tensor([context])).logits[0, len(prompt) - 1 : -1]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
        top = logprobs.max(dim=-1).values
        scores = []
        for n, token_id in enumerate(ids):
            if token_id is None:
                scores.append(PositionScore(None, None, None, None))
                continue
            value = logprobs[n, token_id]
            rank = int((logprobs[n] > value).sum())
            scores.append(PositionScore(token_id, float(value), float(top[n]), rank))
        return scores


def _ids_by_bytes(tokenizer: object, table: Sequence[bytes]) -> dict[bytes, int]:
    """Each token's bytes → its id (the lowest id where two share bytes), and each special
    token's text → its id (an upstream may spell one so)."""
    ids: dict[bytes, int] = {}
    for token_id, data in enumerate(table):
        if data:
            ids.setdefault(data, token_id)
    for text in getattr(tokenizer, "all_special_tokens", []):
        token_id = tokenizer.convert_tokens_to_ids(text)  # type: ignore[attr-defined]
        if isinstance(token_id, int):
            ids.setdefault(text.encode(), token_id)
    return ids


class FakeScorer:
    """The fake engine's model: it says `echo_words(messages)`, each with probability
    exp(echo_logprob(position, word)); any other word has log-probability -inf."""

    def __init__(self, models: Sequence[str] = ("smollm2-135m-instruct",)) -> None:
        self._models = list(models)

    @property
    def models(self) -> list[str]:
        return self._models

    def score(self, messages: Messages, tokens: Sequence[TokenEvidence]) -> list[PositionScore]:
        words = echo_words(messages)
        scores = []
        for n, token in enumerate(tokens):
            expected = words[n] if n < len(words) else None
            # Past the answer, the model is certain to end it: any word is impossible.
            top = echo_logprob(n, expected) if expected is not None else 0.0
            if expected is not None and token.token == expected.encode():
                scores.append(PositionScore(n, top, top, 0))
            else:
                scores.append(PositionScore(n, -1000.0, top, 1))
        return scores
