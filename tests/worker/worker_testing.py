"""Helpers for the worker tests: tickets, requests, collecting a stream."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import jwt

from tests.conftest import (
    require,  # noqa: F401 - re-exported for the worker tests
    ticket_metadata,
)
from troop_common.keys import Identity
from troop_common.proto import inference_pb2, inference_pb2_grpc
from troop_common.tickets import TicketSigner, unverified_ticket_claims
from troop_worker import Worker, WorkerSettings

MODEL = "smollm2-135m-instruct"
# The user every test ticket names unless a test brings its own: `bearer` signs the
# presentation a real client sends with it.
USERS: dict[str, Identity] = {}


def test_user(identity: Identity | None = None) -> Identity:
    """A user identity the helpers can present tickets for."""
    identity = identity or Identity.generate()
    USERS[identity.public_key_hex] = identity
    return identity


def make_issuer(signer: TicketSigner, worker: Worker) -> Callable[..., str]:
    def issue(
        *,
        model: str = MODEL,
        node_id: str | None = None,
        user: Identity | None = None,
        job_id: str | None = None,
        now: float | None = None,
        signer_: TicketSigner | None = None,
        max_tokens: int = 256,
        max_prompt_tokens: int = 4096,
    ) -> str:
        token, _ = (signer_ or signer).issue(
            job_id=job_id or f"job-{secrets.token_hex(6)}",
            user=test_user(user).public_key_hex,
            node_id=node_id or worker.node_id,
            model=model,
            now=now,
            node_key=worker.identity.public_key_hex if worker.identity else "",
            max_tokens=max_tokens,
            max_prompt_tokens=max_prompt_tokens,
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


def bearer(token: str, *, present: bool = True) -> list[tuple[str, str]]:
    """The metadata a real client sends with a ticket: the ticket, a fresh nonce and
    the user's signed presentation (when the ticket's user is a test user)."""
    metadata = [("authorization", f"Bearer {token}")]
    named = unverified_ticket_claims(token)
    try:
        user = USERS.get(str(jwt.decode(token, options={"verify_signature": False})["sub"]))
    except (jwt.PyJWTError, KeyError):
        user = None
    if not present or user is None or named is None:
        return metadata
    return ticket_metadata(token, user, *named)


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
