"""Continuous batching: one engine thread decodes every running sequence in one step.

On a few CPU cores a decode step costs about the same for 1 row as for 8
(it is bound by reading the weights), so the engine runs all running
sequences as one batch tensor (`BatchCache`), and a new request joins
between two steps instead of waiting for the others to finish:

- `submit` queues a `Sequence`; the loop takes it when a batch row is free.
- Its prompt is prefilled alone, in chunks of `prefill_chunk` tokens; between
  two chunks the running batch takes a decode step (their tokens keep
  flowing), and the sequence's cancel flag is checked, so a client that goes
  away stops the work within one chunk.
- Prefill done, its first token is sampled and it joins the batch; each row
  keeps its own sampling settings, generator (seed), stop sequences, budget
  and detokenizer; a finished or cancelled row leaves at the next step.
- Each sampled token goes with its log-probability under the raw logits
  (log_softmax in float32, before temperature or top-p: one log_softmax and
  one gather per step for the whole batch, under 1 ms for 8 rows on 2 cores,
  against ~55 ms for the step) and its bytes: the job's output evidence,
  passed on with the chunks (`GenerationChunk.tokens`).

Everything that touches torch runs on this one thread; chunks cross to the
caller through `Sequence.emit`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from troop_common.evidence import TokenEvidence
from troop_worker.engine.batch_cache import BatchCache
from troop_worker.engine.detokenize import IncrementalDetokenizer
from troop_worker.engine.stops import StopScanner
from troop_worker.engine.types import FinishReason, GenerationChunk, GenerationRequest

log = logging.getLogger("troop.worker.engine")

Emit = Callable[[GenerationChunk | BaseException], None]
# Turns a request into its prompt ids (raises InvalidArgument for a prompt
# that does not fit) and the number of new tokens it may generate.
Prepare = Callable[[GenerationRequest], tuple[torch.Tensor, int]]
# A token id's raw bytes (b"" for a special token).
TokenBytes = Callable[[int], bytes]


def _no_bytes(token: int) -> bytes:
    return b""


@dataclass
class EngineStats:
    """Counters a test or an operator can read (updated by the engine thread only)."""

    prefill_chunks: int = 0
    decode_steps: int = 0
    rows_decoded: int = 0  # summed over decode steps: / decode_steps = the mean batch
    largest_batch: int = 0
    cancelled_in_prefill: int = 0
    finished: int = 0


@dataclass(eq=False)
class Sequence:
    """One job's state in the engine: its request, sampling state and output."""

    request: GenerationRequest
    emit: Emit
    detokenizer: IncrementalDetokenizer
    cancel: threading.Event = field(default_factory=threading.Event)
    prompt: torch.Tensor | None = None  # (1, prompt_tokens), set when prefill starts
    budget: int = 0
    prefilled: int = 0
    cache: Any = None  # its own DynamicCache while it prefills
    generated: int = 0
    last: int = -1
    text: str = ""
    generator: torch.Generator | None = None
    token_bytes: TokenBytes = _no_bytes
    # Tokens generated since the last chunk emitted, with their log-probabilities.
    evidence: list[TokenEvidence] = field(default_factory=list)
    scanner: StopScanner = field(init=False)

    def __post_init__(self) -> None:
        self.scanner = StopScanner(self.request.stop)

    @property
    def prompt_tokens(self) -> int:
        return 0 if self.prompt is None else int(self.prompt.shape[1])

    def accept(self, token: int, eos: set[int], logprob: float = 0.0) -> bool:
        """Take one sampled token and its log-probability; emit what it completes. True
        when the job is done."""
        self.generated += 1
        self.last = token
        finish: FinishReason | None = None
        piece = ""
        if token in eos:
            self.evidence.append(TokenEvidence(b"", logprob, token))
            finish = FinishReason.STOP
        else:
            self.evidence.append(TokenEvidence(self.token_bytes(token), logprob, token))
            self.text += self.detokenizer.push(token)
            piece = self.scanner.feed(self.text)
            if self.scanner.stopped:
                self._emit(piece, FinishReason.STOP)
                return True
            if self.generated < self.budget:
                if piece:
                    self._emit(piece, None)
                return False
            finish = FinishReason.LENGTH
        # The last token's own piece, then whatever was held back.
        self.text += self.detokenizer.flush()
        self._emit(piece + self.scanner.feed(self.text, final=True), finish)
        return True

    def _emit(self, text: str, finish: FinishReason | None) -> None:
        tokens, self.evidence = tuple(self.evidence), []
        self.emit(GenerationChunk(text, finish, self.prompt_tokens, self.generated, tokens))


def token_logprobs(logits: torch.Tensor, tokens: list[int]) -> list[float]:
    """Each row's log-probability of its token under the raw logits (rows, vocabulary):
    log_softmax in float32, before any temperature or top-p."""
    chosen = torch.tensor(tokens, device=logits.device).unsqueeze(1)
    logprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # cast, then computed
    return [float(x) for x in logprobs.gather(1, chosen).squeeze(1).tolist()]


def pick(logits: torch.Tensor, request: GenerationRequest, generator: torch.Generator) -> int:
    """Greedy at temperature 0, else nucleus sampling with the job's generator."""
    if request.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / request.temperature, dim=-1)
    if request.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < request.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class BatchLoop:
    """The engine thread: prefill newcomers chunk by chunk, decode the batch step by step."""

    def __init__(
        self,
        model: Any,
        prepare: Prepare,
        eos: set[int],
        *,
        device: torch.device,
        max_batch: int,
        prefill_chunk: int,
        threads: int,
    ) -> None:
        self.model = model
        self.prepare = prepare
        self.eos = eos
        self.device = device
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.threads = threads
        self.stats = EngineStats()
        self._pending: deque[Sequence] = deque()
        self._prefilling: Sequence | None = None
        self._running: list[Sequence] = []
        self._batch = BatchCache(model.config, device)
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="troop-engine", daemon=True)

    @property
    def waiting(self) -> int:
        """Sequences accepted but not yet prefilling."""
        return len(self._pending)

    @property
    def running(self) -> int:
        return len(self._running) + (self._prefilling is not None)

    def start(self) -> None:
        self._thread.start()

    def submit(self, sequence: Sequence) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._pending.append(sequence)
            self._wake.notify()

    def close(self, timeout: float | None = None) -> None:
        """Stop after the current step; sequences still queued or running end with an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while self._next_round():
                try:
                    self._round()
                except Exception as exc:  # a failed step fails the jobs in it, not the engine
                    log.exception("engine step failed")
                    self._fail_all(exc)
        self._fail_all(RuntimeError("the engine stopped"))

    def _next_round(self) -> bool:
        with self._wake:
            while not (self._closed or self._pending or self._prefilling or self._running):
                self._wake.wait()
            return not self._closed

    def _round(self) -> None:
        self._drop_cancelled()
        if self._prefilling is None and len(self._running) < self.max_batch:
            self._start_prefill()
        if self._prefilling is not None:
            self._prefill_chunk(self._prefilling)
        if self._running:
            self._decode_step()

    def _start_prefill(self) -> None:
        with self._wake:
            while self._pending and self._pending[0].cancel.is_set():
                self._pending.popleft()
            if not self._pending:
                return
            sequence = self._pending.popleft()
        try:
            sequence.prompt, sequence.budget = self.prepare(sequence.request)
        except Exception as exc:  # an invalid prompt fails this job before any token
            sequence.emit(exc)
            return
        sequence.generator = torch.Generator(device=self.device)
        if sequence.request.seed is None:
            sequence.generator.seed()
        else:
            sequence.generator.manual_seed(sequence.request.seed)
        self._prefilling = sequence

    def _prefill_chunk(self, sequence: Sequence) -> None:
        assert sequence.prompt is not None and sequence.generator is not None
        end = min(sequence.prefilled + self.prefill_chunk, sequence.prompt_tokens)
        out = self.model(
            input_ids=sequence.prompt[:, sequence.prefilled : end],
            cache=sequence.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.stats.prefill_chunks += 1
        sequence.cache, sequence.prefilled = out.cache, end
        if end < sequence.prompt_tokens:
            return
        self._prefilling = None
        logits = out.logits[0, -1]
        token = pick(logits, sequence.request, sequence.generator)
        (logprob,) = token_logprobs(logits.unsqueeze(0), [token])
        if sequence.accept(token, self.eos, logprob):
            self.stats.finished += 1
            return
        self._batch.join(sequence.cache)
        sequence.cache = None
        self._running.append(sequence)
        self.stats.largest_batch = max(self.stats.largest_batch, len(self._running))

    def _decode_step(self) -> None:
        inputs = torch.tensor([[s.last] for s in self._running], device=self.device)
        mask, positions = self._batch.step_inputs()
        out = self.model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=positions,
            cache=self._batch.cache,
            use_cache=True,
        )
        self.stats.decode_steps += 1
        self.stats.rows_decoded += len(self._running)
        self._batch.cache = out.cache
        logits = out.logits[:, -1]
        greedy = logits.argmax(dim=-1).tolist()  # one call for every greedy row
        tokens: list[int] = []
        for row, sequence in enumerate(self._running):
            assert sequence.generator is not None
            request = sequence.request
            sampled = request.temperature > 0 and not sequence.cancel.is_set()
            token = pick(logits[row], request, sequence.generator) if sampled else greedy[row]
            tokens.append(token)
        logprobs = token_logprobs(logits, tokens)  # one gather for every row
        keep: list[int] = []
        for row, sequence in enumerate(self._running):
            if sequence.cancel.is_set():
                continue
            if sequence.accept(tokens[row], self.eos, logprobs[row]):
                self.stats.finished += 1
            else:
                keep.append(row)
        self._keep(keep)

    def _drop_cancelled(self) -> None:
        if self._prefilling is not None and self._prefilling.cancel.is_set():
            self.stats.cancelled_in_prefill += 1
            self._prefilling = None
        keep = [row for row, s in enumerate(self._running) if not s.cancel.is_set()]
        self._keep(keep)

    def _keep(self, rows: list[int]) -> None:
        if len(rows) == len(self._running):
            return
        self._running = [self._running[row] for row in rows]
        self._batch.keep(rows)

    def _fail_all(self, exc: BaseException) -> None:
        with self._wake:
            doomed = [*self._pending, *self._running]
            if self._prefilling is not None:
                doomed.append(self._prefilling)
            self._pending.clear()
        self._prefilling = None
        self._running = []
        self._batch.keep([])
        for sequence in doomed:
            sequence.emit(exc)
