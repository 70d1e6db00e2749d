"""Engines: what turns a chat request into a stream of text.

`Engine` is the protocol; `FakeEngine` a deterministic one; `TorchEngine`
(imported lazily, it pulls in PyTorch) runs SmolLM2 with transformers;
`OpenAIUpstreamEngine` relays to an OpenAI-compatible server (Ollama, vLLM, ...).
"""

from __future__ import annotations

from troop_common.config import ConfigError
from troop_worker.engine.fake import FakeEngine
from troop_worker.engine.types import (
    Engine,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    Message,
)
from troop_worker.settings import WorkerSettings


def make_engine(settings: WorkerSettings) -> Engine:
    """The engine the settings name (not loaded yet)."""
    if settings.engine == "fake":
        return FakeEngine([settings.model], logprob_shift=settings.fake_logprob_shift)
    if settings.engine == "openai":
        from troop_worker.engine.openai_upstream import OpenAIUpstreamEngine

        if not settings.upstream_url:
            raise ConfigError("engine openai needs TROOP_WORKER_UPSTREAM_URL (or --upstream)")
        return OpenAIUpstreamEngine(
            settings.upstream_url,
            served=settings.model,
            upstream_model=settings.upstream_model,
            api_key=settings.upstream_api_key,
        )
    from troop_worker.engine.torch_engine import TorchEngine

    return TorchEngine(
        model_id=settings.model,
        model_path=settings.model_path,
        dtype=settings.torch_dtype,
        threads=settings.torch_threads,
        max_batch=settings.max_concurrent_jobs,
        prefill_chunk=settings.prefill_chunk,
    )


__all__ = [
    "Engine",
    "FakeEngine",
    "FinishReason",
    "GenerationChunk",
    "GenerationRequest",
    "Message",
    "make_engine",
]
