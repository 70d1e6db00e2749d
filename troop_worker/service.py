"""The InferenceService servicer: validate, admit, stream the engine, report a receipt.

The order of checks, each before any token: the ticket (interceptor) →
request shape (INVALID_ARGUMENT) → the ticket's model and token bounds → the
user's presentation of the ticket (UNAUTHENTICATED without it: the receipt
must carry it to be paid) → job limits (RESOURCE_EXHAUSTED) → single use (the
ticket is spent only when the job really starts, so a refused request can be
retried with the same ticket).
Errors are raised, never `abort`ed: the error interceptor maps them.

The first chunk's headers carry `x-troop-overhead-ms`: the worker's own time
before it, i.e. from the call reaching the interceptor chain to the first chunk
being handed to gRPC, less the engine's time from its start to that chunk
(docs/protocol.md). Until then the job is on the `hot` path: receipts wait.

The last chunk carries the job's output evidence, signed with the node key (every
token the engine generated, with its log-probability: troop_worker.evidence), and the
receipt its SHA-256.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass

import grpc

from troop_common import request_context
from troop_common.endpoint_proof import sign_endpoint
from troop_common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    TicketInvalid,
    TroopError,
    Unavailable,
)
from troop_common.keys import Identity
from troop_common.metrics import Metrics
from troop_common.node_proof import PROOF_HEADER, is_nonce, sign_node_proof
from troop_common.proto import common_pb2, inference_pb2, inference_pb2_grpc
from troop_common.request_context import OVERHEAD, add_initial_metadata, format_ms
from troop_common.tickets import Ticket
from troop_worker.auth import current_ticket
from troop_worker.engine.types import Engine, FinishReason, GenerationChunk, GenerationRequest
from troop_worker.evidence import EvidenceCollector, SignedEvidence
from troop_worker.limits import JobLimiter
from troop_worker.presentation import Presented, presentation_of
from troop_worker.read_ahead import ReadAhead
from troop_worker.receipts import JobRecord, ReceiptSender
from troop_worker.tickets import TicketVerifier
from troop_worker.validation import validate, within_ticket

log = logging.getLogger("troop.worker.service")
MAX_ENDPOINT_LENGTH = 300


@dataclass
class _FirstChunk:
    """A call before its first chunk: when it arrived, and what to do once that chunk goes."""

    arrived: float  # perf_counter when the interceptor chain saw the call
    leaves: Callable[[], None]  # the receipts' hot path: this job is past its first token


# Per call (each call is its own task): read by `_run` when the first chunk goes.
_first_chunk: ContextVar[_FirstChunk | None] = ContextVar("troop_first_chunk", default=None)


def _first_chunk_leaves(engine_started: float, engine_chunk: float) -> None:
    """Say this call's overhead in its first headers: all its time until now, less the
    engine's (from being asked for the stream to yielding this chunk); and take the call
    off the hot path."""
    pending = _first_chunk.get()
    if pending is None:
        return
    _first_chunk.set(None)
    ours_s = (time.perf_counter() - pending.arrived) - (engine_chunk - engine_started)
    add_initial_metadata(OVERHEAD, format_ms(ours_s * 1000))
    pending.leaves()


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(
        self,
        engine: Engine,
        *,
        verifier: TicketVerifier,
        limiter: JobLimiter,
        receipts: ReceiptSender,
        max_new_tokens: int,
        node: Identity | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.node = node
        self.metrics = metrics or Metrics("worker")
        self.engine = engine
        self.verifier = verifier
        self.limiter = limiter
        self.receipts = receipts
        self.max_new_tokens = max_new_tokens

    async def ListModels(
        self,
        request: inference_pb2.InferenceServiceListModelsRequest,
        context: grpc.aio.ServicerContext,
    ) -> inference_pb2.InferenceServiceListModelsResponse:
        return inference_pb2.InferenceServiceListModelsResponse(
            models=[common_pb2.ModelInfo(id=m) for m in self.engine.models]
        )

    async def ProveEndpoint(
        self,
        request: inference_pb2.ProveEndpointRequest,
        context: grpc.aio.ServicerContext,
    ) -> inference_pb2.ProveEndpointResponse:
        """Sign the coordinator's nonce for the endpoint it dialled (no ticket needed: it
        proves only that this node key answers here)."""
        violations = []
        if not is_nonce(request.nonce):
            violations.append(FieldViolation("nonce", "32-128 lowercase hex digits"))
        if not 0 < len(request.endpoint) <= MAX_ENDPOINT_LENGTH:
            violations.append(
                FieldViolation("endpoint", f"host:port, at most {MAX_ENDPOINT_LENGTH} characters")
            )
        if violations:
            raise InvalidArgument(violations)
        if self.node is None:
            raise Unavailable("this worker has no node key")
        return inference_pb2.ProveEndpointResponse(
            node_public_key=self.node.public_key_hex,
            signature=sign_endpoint(self.node, request.endpoint, request.nonce),
        )

    async def ChatCompletion(
        self,
        request: inference_pb2.ChatCompletionRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[inference_pb2.ChatCompletionResponse]:
        info = request_context.current.get()
        arrived = info.started if info is not None else time.perf_counter()
        leave = self.receipts.hot.enter()  # receipts wait until this job's first token
        try:
            ticket = current_ticket.get()
            if ticket is None:  # only if the interceptor was left out
                raise TicketInvalid("missing ticket")
            generation = validate(request, max_new_tokens=self.max_new_tokens)
            if request.model != ticket.model:
                raise TicketInvalid(
                    f"the ticket is for model {ticket.model!r}, not {request.model!r}"
                )
            if request.model not in self.engine.models:
                raise InvalidArgument([FieldViolation("model", "not served by this node")])
            if generation.continuation and not getattr(self.engine, "continues_answers", False):
                raise FailedPrecondition(
                    "this node's engine cannot continue an answer (continuation); "
                    "resume on another node"
                )
            generation = within_ticket(request, generation, ticket)
            presented = presentation_of(ticket, context.invocation_metadata() or ())
            async with self.limiter.admit(ticket.user):
                await self.verifier.consume(ticket)
                if self.node is not None:
                    # Answer the client's nonce with the node key, sent with the first chunk.
                    proof = sign_node_proof(self.node, ticket.job_id, presented.nonce)
                    add_initial_metadata(PROOF_HEADER, proof)
                _first_chunk.set(_FirstChunk(arrived, leave))
                first = True
                async for response in self._run(ticket, generation, presented):
                    if first:
                        first = False
                        self.metrics.first_token_seconds.labels(ticket.model).observe(
                            time.perf_counter() - arrived
                        )
                    yield response
        finally:
            leave()

    async def _run(
        self, ticket: Ticket, generation: GenerationRequest, presented: Presented
    ) -> AsyncIterator[inference_pb2.ChatCompletionResponse]:
        started = time.monotonic()
        engine_started = time.perf_counter()
        last = GenerationChunk("", None, 0, 0)
        finished = failed = sent = False
        collected = EvidenceCollector(min(generation.max_tokens, ticket.max_tokens))
        evidence = SignedEvidence()
        stream = ReadAhead(self.engine.stream(generation))
        try:
            while (chunk := await stream.next()) is not None:
                last = chunk
                collected.add(chunk.tokens)
                if chunk.text or chunk.finish_reason is not None:
                    engine_chunk = stream.first_at if not sent else 0.0
                    response = chunk.to_pb(ticket.job_id)
                    if chunk.finish_reason is not None:
                        evidence = self._evidence(collected, ticket, generation)
                        response.evidence = evidence.data
                        response.evidence_signature = evidence.signature
                    if not sent:
                        _first_chunk_leaves(engine_started, engine_chunk)
                    sent = True
                    yield response
                if chunk.finish_reason is not None:
                    finished = True
                    break
        except Exception as exc:
            failed = True
            if not sent:
                raise  # nothing sent yet: the caller gets the error as a status
            if isinstance(exc, TroopError):  # expected (an upstream went away): one line
                log.warning("job %s failed mid-stream: %s", ticket.job_id, exc)
            else:
                log.exception("job %s failed mid-stream", ticket.job_id)
            end = GenerationChunk(
                "", FinishReason.ERROR, last.prompt_tokens, last.completion_tokens
            ).to_pb(ticket.job_id)
            # What it generated before failing is its output all the same.
            evidence = self._evidence(collected, ticket, generation)
            end.evidence, end.evidence_signature = evidence.data, evidence.signature
            yield end
        finally:
            await stream.close()
            # A stream the client left early is charged for what it produced.
            completed = not failed and (finished or last.completion_tokens > 0)
            # An engine that cannot count before it works (a relay) is held to the
            # ticket's bounds here: the coordinator refuses a receipt beyond them.
            # Queued: signed and sent once no job is before its first token.
            tokens = min(last.completion_tokens, ticket.max_tokens)
            self.metrics.tokens.labels(ticket.model).inc(tokens)
            self.receipts.submit(
                JobRecord(
                    job_id=ticket.job_id,
                    completed=completed,
                    duration_ms=round((time.monotonic() - started) * 1000),
                    prompt_tokens=min(last.prompt_tokens, ticket.max_prompt_tokens),
                    completion_tokens=tokens,
                    presentation=presented.signature,
                    client_nonce=presented.nonce,
                    evidence_sha256=evidence.sha256,
                )
            )
            log.info(
                "job %s %s: %d+%d tokens in %.2f s",
                ticket.job_id,
                "finished" if finished else ("failed" if failed else "cancelled"),
                last.prompt_tokens,
                last.completion_tokens,
                time.monotonic() - started,
            )

    def _evidence(
        self, collected: EvidenceCollector, ticket: Ticket, generation: GenerationRequest
    ) -> SignedEvidence:
        return collected.seal(
            self.node,
            job_id=ticket.job_id,
            node_id=ticket.node_id,  # this node's: the ticket verifier checked it
            model=ticket.model,
            messages=[(m.role, m.content) for m in generation.messages],
        )
