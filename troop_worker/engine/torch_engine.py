"""SmolLM2 on PyTorch: the worker's built-in engine.

The model is loaded once from its GGUF file (de-quantized by transformers,
~15 s on 2 cores). Generation runs on one engine thread that batches every
running job into one decode step (`batching.BatchLoop`: continuous batching,
chunked prefill, a KV cache row per sequence). Each decoded piece crosses to
the event loop as soon as it exists (`loop.call_soon_threadsafe` into an
`asyncio.Queue`), and closing the stream sets the sequence's cancel flag,
which the engine checks before every prefill chunk and decode step, so a
client that goes away stops the work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from troop_common.errors import FieldViolation, InvalidArgument
from troop_common.model_files import default_model_path
from troop_common.token_bytes import vocabulary_bytes
from troop_worker.engine.batching import BatchLoop, Emit, EngineStats, Sequence
from troop_worker.engine.detokenize import IncrementalDetokenizer
from troop_worker.engine.types import GenerationChunk, GenerationRequest, Message

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from transformers.tokenization_utils_base import BatchEncoding, PreTrainedTokenizerBase

log = logging.getLogger("troop.worker.engine")

DEFAULT_MAX_BATCH = 8
DEFAULT_PREFILL_CHUNK = 128


class TorchEngine:
    """`TorchEngine()` then `await load()`; `stream(request)` yields chunks as decoded."""

    continues_answers = True

    def __init__(
        self,
        model_id: str = "smollm2-135m-instruct",
        *,
        model_path: Path | None = None,
        dtype: str = "bfloat16",
        threads: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    ) -> None:
        self.models = [model_id]
        self.model_path = model_path
        self.dtype = getattr(torch, dtype)
        self.threads = threads or os.cpu_count() or 1
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.device_name = torch.cuda.get_device_name(0) if self.device.type == "cuda" else "cpu"
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._loop: BatchLoop | None = None
        self._token_bytes: list[bytes] = []

    @property
    def hf_model(self) -> torch.nn.Module | None:
        """The loaded transformers model (None before `load`)."""
        return self._model

    @property
    def tokenizer(self) -> object | None:
        return self._tokenizer

    @property
    def stats(self) -> EngineStats:
        """Prefill chunks, decode steps, largest batch, ... (zeros before `load`)."""
        return self._loop.stats if self._loop is not None else EngineStats()

    @property
    def idle(self) -> bool:
        """No job running or waiting in the engine."""
        return self._loop is None or (self._loop.running == 0 and self._loop.waiting == 0)

    @property
    def queue_depth(self) -> int:
        """Jobs accepted but waiting for a batch row."""
        return self._loop.waiting if self._loop is not None else 0

    @property
    def batch_size(self) -> int:
        """Sequences in the running batch now (prefilling or decoding)."""
        return self._loop.running if self._loop is not None else 0

    async def load(self) -> None:
        await asyncio.to_thread(self.load_sync)

    async def close(self) -> None:
        """Stop the engine thread; jobs still in it end with an error."""
        if self._loop is not None:
            await asyncio.to_thread(self._loop.close, 10.0)

    def load_sync(self) -> None:
        """Load tokenizer and model and start the engine thread (blocking; idempotent)."""
        if self._model is not None:
            return
        path = self.model_path or default_model_path()
        started = time.monotonic()
        hf_logging.disable_progress_bar()
        torch.set_num_threads(self.threads)
        options = {"gguf_file": path.name, "local_files_only": True}
        self._tokenizer = AutoTokenizer.from_pretrained(path.parent, **options)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=self.dtype, **options)
        # transformers wraps `to` with functools.wraps, which typeshed types as a plain
        # callable taking the model as its first argument.
        self._model = model.to(self.device).eval()  # type: ignore[arg-type]
        self._token_bytes = vocabulary_bytes(self._tokenizer)
        config = self._model.config
        self._context = int(getattr(config, "max_position_embeddings", 2048))
        eos = self._model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self._tokenizer.eos_token_id)
        self._loop = BatchLoop(
            self._model,
            self._prepare,
            {i for i in eos_ids if i is not None},
            device=self.device,
            max_batch=self.max_batch,
            prefill_chunk=self.prefill_chunk,
            threads=self.threads,
        )
        self._loop.start()
        # A tiny job now, so the first user does not pay the kernels' warm-up (~0.5 s on CPU).
        done = threading.Event()
        warm_up = GenerationRequest((Message("user", "Hi"),), temperature=0.0, max_tokens=4)
        self._loop.submit(self._sequence(warm_up, lambda item: _set_when_done(done, item)))
        done.wait()
        log.info(
            "loaded %s (%s, %s, %d threads, batches of %d) in %.1f s",
            path.name, self.device_name, self.dtype, self.threads, self.max_batch,
            time.monotonic() - started,
        )  # fmt: skip

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self._loop is None:
            raise RuntimeError("TorchEngine.load() must run before stream()")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()

        def emit(item: GenerationChunk | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening
                sequence.cancel.set()

        sequence = self._sequence(request, emit)
        self._loop.submit(sequence)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            sequence.cancel.set()

    def _sequence(self, request: GenerationRequest, emit: Emit) -> Sequence:
        assert self._tokenizer is not None
        return Sequence(
            request,
            emit,
            IncrementalDetokenizer(partial(_decode, self._tokenizer)),
            token_bytes=self._bytes_of,
        )

    def _bytes_of(self, token: int) -> bytes:
        return self._token_bytes[token] if 0 <= token < len(self._token_bytes) else b""

    def _prepare(self, request: GenerationRequest) -> tuple[torch.Tensor, int]:
        """The prompt's ids and the job's token budget (on the engine thread)."""
        tokenizer = self._tokenizer
        assert tokenizer is not None
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        # tokenize=True with return_dict=True gives a BatchEncoding (the stub returns a union).
        encoded = cast("BatchEncoding", tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt",
        ))  # fmt: skip
        inputs = encoded["input_ids"]
        if request.continuation:  # resuming: the reply so far, then what follows it
            continued = tokenizer(
                request.continuation, add_special_tokens=False, return_tensors="pt"
            )["input_ids"]
            inputs = torch.cat([inputs, continued], dim=1)
        inputs = inputs.to(self.device)
        prompt_tokens = int(inputs.shape[1])
        request.check_prompt(prompt_tokens)
        if prompt_tokens >= self._context:
            raise InvalidArgument(
                [FieldViolation("messages", f"{prompt_tokens} prompt tokens exceed the context")]
            )
        return inputs, min(request.max_tokens, self._context - prompt_tokens)


def _set_when_done(done: threading.Event, item: GenerationChunk | BaseException) -> None:
    if isinstance(item, BaseException) or item.finish_reason is not None:
        done.set()


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    # One flat list of ids decodes to one str (the stub also allows a batch's list[str]).
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return cast(str, text)
