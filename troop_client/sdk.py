"""The async Python SDK: authorize with the coordinator, stream from the worker.

    async with TroopClient.from_settings(ClientSettings.from_env(os.environ)) as troop:
        async for chunk in troop.chat([Message("user", "Hi")]):
            print(chunk.text, end="")

The CLI is built on this, and so is the OpenAI face. The first chunk of each answer
carries `overhead` (troop_client.chat.Overhead): what the protocol cost before it. Usage
reports (countersignatures) queue and go once no answer is waiting for its first chunk,
several at once when several are ready (troop_common.background); `close` sends what
is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path

import grpc

from troop_client.answer import AnswerSoFar
from troop_client.chat import (
    ChatChunk,
    ChatOptions,
    Completion,
    Message,
    Overhead,
    Usage,
    vouched_tokens,
)
from troop_client.evidence import verified_evidence
from troop_client.reports import UsageReports, reports_outbox
from troop_client.results import (
    Balance,
    Grant,
    Job,
    Joined,
    ModelOffer,
    Node,
    Page,
    Transaction,
    transaction_page,
)
from troop_client.settings import ClientSettings
from troop_client.workers import WorkerLinks
from troop_common.admission import solve_pow
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import FailedPrecondition, TroopError, Unavailable, from_rpc_error
from troop_common.keys import Identity
from troop_common.node_proof import NONCE_HEADER, PROOF_HEADER, new_nonce, verify_node_proof
from troop_common.presentation import PRESENTATION_HEADER, sign_presentation
from troop_common.proto import coordinator_pb2, inference_pb2, inference_pb2_grpc
from troop_common.request_context import OVERHEAD, REQUEST_ID, outgoing_request_id, parse_ms

log = logging.getLogger("troop.client")
# How long close() waits for usage reports still in flight.
REPORT_DRAIN_S = 5.0


class TroopClient:
    """A user of the network: authorizes jobs with the coordinator, streams from workers.

    Built from an identity (`Identity.load_or_create(path)`) or from settings
    (`TroopClient.from_settings(ClientSettings.from_env(os.environ))`); use it
    as `async with`. Its methods return troop_client.results' dataclasses, never protobuf;
    failures raise TroopError subclasses, exported by `troop_client`. (`coordinator` is the
    wire client it shares with the worker, speaking protobuf: not part of this surface.)
    """

    def __init__(
        self,
        coordinator: str,
        identity: Identity,
        settings: ClientSettings | None = None,
        *,
        outbox: Path | None = None,
    ) -> None:
        """`outbox`: a directory where countersignatures wait until the coordinator answers
        (troop_client.reports); `from_settings` keeps one per identity in the config dir."""
        self.settings = settings or ClientSettings(coordinator=coordinator)
        self.identity = identity
        resilience = self.settings.resilience
        self.coordinator = CoordinatorClient(
            coordinator,
            identity,
            timeout_s=resilience.request_timeout_s,
            connect_timeout_s=resilience.connect_timeout_s,
            tls=self.settings.tls,
            # Long-running users (the OpenAI sidecar) fail fast while the coordinator is down.
            breaker=resilience.breaker(f"the coordinator at {coordinator}"),
        )
        self._reports = UsageReports(self.coordinator, outbox=outbox)
        self._workers = WorkerLinks(self.settings.tls, resilience)

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> TroopClient:
        identity = Identity.load_or_create(settings.identity_path)
        return cls(
            settings.coordinator, identity, settings, outbox=reports_outbox(settings, identity)
        )

    async def __aenter__(self) -> TroopClient:
        self._reports.resume()  # what an earlier run could not send
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._reports.close(REPORT_DRAIN_S)
        await self.coordinator.close()
        await self._workers.close()

    async def drain_reports(self, timeout_s: float) -> None:
        """Send the usage reports still queued now, and wait for them (at most `timeout_s`)."""
        await self._reports.drain(timeout_s)

    def _report_usage(self, job_id: str, completion_tokens: int, stream_ms: int) -> None:
        """Countersign the job in the background: no stream, this one or the next, waits."""
        self._reports.submit(job_id, completion_tokens, stream_ms)

    @property
    def public_key(self) -> str:
        return self.identity.public_key_hex

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: ChatOptions | None = None,
        node_id: str = "",
    ) -> AsyncIterator[ChatChunk]:
        """Stream the answer as the worker produces it. Raises TroopError subclasses.

        `node_id`: only that node may serve it (a verifier checking one node's output):
        no other node is tried.

        A node that cannot be reached (within the connect timeout), whose breaker is open
        (troop_client.workers), or whose connection fails before the first token, is
        skipped for another (up to `settings.node_attempts` nodes); its reservation
        returns at once (the client countersigns 0). After a token, troop_client.answer
        decides whether the answer resumes elsewhere. `node_id` pins every attempt to
        that node (no other is asked).
        """
        model = model or self.settings.model
        options = options or ChatOptions()
        request_id = outgoing_request_id()  # one id across coordinator and worker
        began = time.perf_counter()
        leave = self._reports.hot.enter()  # usage reports wait for this first chunk
        try:
            attempts = self._attempts(
                messages, model, options, request_id, began, leave, node_id=node_id
            )
            async with contextlib.aclosing(attempts):
                async for chunk in attempts:
                    yield chunk
        finally:
            leave()

    async def _attempts(
        self,
        messages: Sequence[Message],
        model: str,
        options: ChatOptions,
        request_id: str,
        began: float,
        first_chunk: Callable[[], None],
        *,
        node_id: str = "",
    ) -> AsyncGenerator[ChatChunk, None]:
        """The answer from one node, or several (troop_client.answer: skip before the first
        token, resume after it)."""
        answer = AnswerSoFar(
            messages,
            options,
            node_attempts=self.settings.node_attempts,
            resume_attempts=self.settings.resume_attempts,
        )
        first_failure: TroopError | None = None
        while True:
            max_tokens, max_prompt_tokens = answer.next_bounds()
            try:
                grant = await self.authorize(
                    model,
                    request_id=request_id,
                    exclude_node_ids=answer.excluded,
                    max_tokens=max_tokens,
                    max_prompt_tokens=max_prompt_tokens,
                    node_id=node_id,
                )
            except TroopError as exc:
                if first_failure is not None and not exc.transient:
                    # No other node (or no other try allowed): the node's failure says why.
                    raise first_failure from exc
                raise
            node_options = answer.next_options()
            try:
                chunks = self._stream(
                    grant, messages, model, node_options, request_id, began, answer.text
                )
                async with contextlib.aclosing(chunks):
                    async for chunk in chunks:
                        if not answer.text:
                            first_chunk()
                        yield answer.shown(chunk)
                return
            except TroopError as exc:
                if node_id or not answer.go_elsewhere(exc, grant.node_id):
                    raise
                first_failure = first_failure or exc
                # The failed job was countersigned with what arrived from it (0 returns its
                # whole reservation at once).
                what = "resuming the answer" if answer.text else "asking for another node"
                log.warning("%s; %s", exc.message, what)

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        options: ChatOptions | None = None,
        node_id: str = "",
    ) -> Completion:
        """The whole answer at once (`node_id`: only from that node, as `chat`)."""
        parts: list[str] = []
        job_id, reason, usage, overhead, evidence = "", None, Usage(), None, None
        async for chunk in self.chat(messages, model=model, options=options, node_id=node_id):
            job_id = chunk.job_id
            parts.append(chunk.text)
            reason = chunk.finish_reason or reason
            usage = chunk.usage or usage
            overhead = overhead or chunk.overhead
            evidence = chunk.evidence or evidence
        return Completion(
            job_id=job_id,
            text="".join(parts),
            finish_reason=reason,
            usage=usage,
            overhead=overhead,
            evidence=evidence,
        )

    async def _stream(
        self,
        grant: Grant,
        messages: Sequence[Message],
        model: str,
        options: ChatOptions,
        request_id: str,
        began: float | None = None,
        continuation: str = "",
    ) -> AsyncGenerator[ChatChunk, None]:
        """One node's stream; `began` (perf_counter) is when the caller's `chat` started;
        `continuation`: the reply so far, when this node resumes it."""
        began = time.perf_counter() if began is None else began
        request = inference_pb2.ChatCompletionRequest(
            model=model,
            messages=[m.to_pb() for m in messages],
            temperature=options.temperature,
            top_p=options.top_p,
            max_tokens=options.max_tokens,
            stop=list(options.stop),
            seed=options.seed,
            continuation=continuation,
        )
        nonce = new_nonce()
        metadata = [
            ("authorization", f"Bearer {grant.ticket}"),
            (REQUEST_ID, request_id),
            (NONCE_HEADER, nonce),
            # What the node's receipt must carry to be paid: this user started the job.
            (
                PRESENTATION_HEADER,
                sign_presentation(self.identity, grant.job_id, grant.node_id, nonce),
            ),
        ]
        breaker = self._workers.breaker(grant.endpoint)
        try:
            breaker.before_call()  # open: skipped for another node, nothing dialled
            channel = self._workers.channel(grant.endpoint, grant.tls)
        except (FailedPrecondition, Unavailable):
            # Refused before the ticket left: countersigning nothing returns the reservation.
            self._report_usage(grant.job_id, 0, 0)
            raise
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        opened = time.perf_counter()
        call = stub.ChatCompletion(
            request, metadata=metadata, timeout=self.settings.inference_timeout_s
        )
        proven = False
        started = time.monotonic()
        received_bytes = 0
        shown_tokens: int | None = None
        finish_reason: str | None = None
        try:
            async for chunk in call:
                overhead = None
                if not proven:
                    breaker.record(None)  # it answered: up, whatever its answer says
                    waited_ms = (time.perf_counter() - opened) * 1000
                    # Before any token reaches the caller: is this the ticket's node?
                    initial = dict(await call.initial_metadata() or ())
                    verify_node_proof(
                        grant.node_public_key, grant.job_id, nonce, initial.get(PROOF_HEADER)
                    )
                    proven = True
                    overhead = Overhead(
                        client_ms=(time.perf_counter() - began) * 1000 - waited_ms,
                        waited_ms=waited_ms,
                        worker_ms=parse_ms(initial.get(OVERHEAD)),
                    )
                received_bytes += len(chunk.delta.encode())
                piece = ChatChunk.from_pb(chunk)
                if overhead is not None:
                    piece = dataclasses.replace(piece, overhead=overhead)
                evidence = verified_evidence(
                    chunk,
                    job_id=grant.job_id,
                    node_id=grant.node_id,
                    node_public_key=grant.node_public_key,
                )
                if evidence is not None:
                    piece = dataclasses.replace(piece, evidence=evidence)
                if chunk.completion_tokens:  # the worker's running count (cut: the bound)
                    shown_tokens = chunk.completion_tokens
                if chunk.HasField("usage"):
                    shown_tokens = chunk.usage.completion_tokens
                    finish_reason = piece.finish_reason
                yield piece
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc, f"node {grant.node_id} at {grant.endpoint}")
            breaker.record(error)  # only a transport failure counts
            raise error from exc
        finally:
            call.cancel()
            # Countersign every job this client presented, even one that brought nothing
            # (0): the node is paid the lower of its receipt and this, so a node that
            # aborts, or is not the ticket's node, is paid for nothing it did not deliver.
            tokens = 0
            if proven:
                tokens = vouched_tokens(received_bytes, shown_tokens, finish_reason, options.stop)
            stream_ms = round((time.monotonic() - started) * 1000)
            self._report_usage(grant.job_id, tokens, stream_ms)

    async def authorize(
        self,
        model: str | None = None,
        *,
        max_tokens: int = 0,
        max_prompt_tokens: int = 0,
        exclude_node_ids: Sequence[str] = (),
        request_id: str | None = None,
        node_id: str = "",
    ) -> Grant:
        """Reserve credits for one job and get its ticket for a node: what `chat` does
        before it streams. The reservation is held until the job settles, or returns when
        the ticket expires unused. 0 bounds mean the coordinator's defaults; `node_id`:
        that node only (UNAVAILABLE when it is not live for the model)."""
        reply = await self.coordinator.authorize(
            model or self.settings.model,
            request_id=request_id,
            exclude_node_ids=exclude_node_ids,
            max_tokens=max_tokens,
            max_prompt_tokens=max_prompt_tokens,
            node_id=node_id,
        )
        return Grant.from_pb(reply)

    async def join(self, invite_code: str = "") -> Joined:
        """Create this identity's account with its starter credits (once; idempotent).

        Meets the coordinator's admission rule: `invite_code` where it admits by
        invite; where it asks for proof of work, the puzzle is solved here (in a
        thread; ~1 s at 20 bits) before joining."""
        admission = await self.coordinator.get_admission()
        nonce = ""
        if admission.mode == coordinator_pb2.ADMISSION_MODE_POW:
            nonce = await asyncio.to_thread(solve_pow, self.public_key, admission.pow_bits)
        return Joined.from_pb(await self.coordinator.join(invite_code=invite_code, pow_nonce=nonce))

    async def job(self, job_id: str) -> Job:
        """One of your jobs: whether it settled, and for how much."""
        return Job.from_pb(await self.coordinator.get_job(job_id))

    async def balance(self) -> Balance:
        """Your spendable credits, and those open reservations hold."""
        return Balance.from_pb(await self.coordinator.get_balance())

    async def history(self, page_size: int = 20, page_token: str = "") -> Page[Transaction]:
        """Your ledger entries, newest first, `page_size` (at most 100) at a time: pass a
        page's `next_page_token` for the next."""
        reply = await self.coordinator.list_transactions(page_size=page_size, page_token=page_token)
        return transaction_page(reply)

    async def nodes(self, model: str = "") -> list[Node]:
        """The live nodes (serving `model`, when given), best ranked first."""
        return [Node.from_pb(n) for n in (await self.coordinator.list_nodes(model)).nodes]

    async def models(self) -> list[ModelOffer]:
        """The models live nodes serve, with their node counts and prices."""
        reply = await self.coordinator.list_models()
        return [ModelOffer.from_pb(m) for m in reply.models]


__all__ = ["TroopClient"]
