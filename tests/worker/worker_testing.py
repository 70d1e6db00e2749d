"""Helpers for the worker tests: tickets, requests, collecting a stream."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tests.conftest import require  # noqa: F401 - re-exported for the worker tests
from troop_common.keys import Identity
from troop_common.proto import inference_pb2, inference_pb2_grpc
from troop_common.tickets import TicketSigner
from troop_worker import Worker, WorkerSettings

MODEL = "smollm2-135m-instruct"


def make_issuer(signer: TicketSigner, worker: Worker) -> Callable[..., str]:
    def issue(
        *,
        model: str = MODEL,
        node_id: str | None = None,
        user: str | None = None,
        job_id: str | None = None,
        now: float | None = None,
        signer_: TicketSigner | None = None,
    ) -> str:
        token, _ = (signer_ or signer).issue(
            job_id=job_id or f"job-{secrets.token_hex(6)}",
            user=user or Identity.generate().public_key_hex,
            node_id=node_id or worker.node_id,
            model=model,
            now=now,
            node_key=worker.identity.public_key_hex if worker.identity else "",
        )
        return token

    return issue


def chat(text: str = "tell me a story", **fields: object) -> inference_pb2.ChatCompletionRequest:
    """A ChatCompletionRequest with one user message (fields override)."""
    request = inference_pb2.ChatCompletionRequest(
        model=MODEL, messages=[{"role": "user", "content": text}]
    )
    for name, value in fields.items():
        if isinstance(value, list):
            request.ClearField(name)
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    return request


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def collect(
    stub: inference_pb2_grpc.InferenceServiceStub,
    request: inference_pb2.ChatCompletionRequest,
    token: str | None,
) -> list[inference_pb2.ChatCompletionResponse]:
    """Every chunk of a call (raises AioRpcError at the end of a failed one)."""
    call = stub.ChatCompletion(request, metadata=bearer(token) if token else None)
    return [chunk async for chunk in call]


def worker_settings(tmp_path: Path, coordinator: str, **overrides: object) -> WorkerSettings:
    base = WorkerSettings(
        host="127.0.0.1",
        port=0,
        coordinator=coordinator,
        data_dir=tmp_path / "worker",
        engine="fake",
        model=MODEL,
        heartbeat_interval_s=0.2,
        coordinator_wait_s=5.0,
        receipt_backoff_s=0.05,
        shutdown_grace_s=1.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]
