"""A typed async client of the coordinator, shared by the worker and the client SDK.

Each call carries a fresh assertion signed by the caller's identity (user or
node) and maps a failed call to the matching TroopError. Connecting gives up after
`connect_timeout_s`, a call after `timeout_s` (or its own deadline); idempotent calls
are retried on transport failures; an optional circuit breaker makes calls fail at once
while the coordinator is known to be down (troop_common.resilience).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from troop_common.assertions import create_assertion
from troop_common.errors import TroopError, from_rpc_error
from troop_common.keys import Identity
from troop_common.proto import coordinator_pb2 as pb
from troop_common.proto import coordinator_pb2_grpc
from troop_common.request_context import REQUEST_ID, outgoing_request_id
from troop_common.resilience import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    CircuitBreaker,
    RetryPolicy,
    is_transient,
)
from troop_common.tls import TlsSettings

T = TypeVar("T")


class CoordinatorClient:
    """`async with CoordinatorClient(address, identity) as c: await c.get_balance()`."""

    def __init__(
        self,
        address: str,
        identity: Identity | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        tls: TlsSettings | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.breaker = breaker
        self.address = address
        self.identity = identity
        self._own_channel = channel is None
        self.channel = channel or (tls or TlsSettings()).channel(address, connect_timeout_s)
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(self.channel)
        self.timeout_s = timeout_s

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_channel:
            await self.channel.close()

    def _metadata(self, signed: bool, request_id: str) -> list[tuple[str, str]]:
        # The request id of the call being handled (or the caller's own) travels on.
        metadata = [(REQUEST_ID, request_id)]
        if not signed:
            return metadata
        if self.identity is None:
            raise ValueError("this call needs an identity")
        return [*metadata, ("authorization", f"Bearer {create_assertion(self.identity)}")]

    async def _call(
        self,
        rpc: Callable[..., Awaitable[T]],
        request: object,
        *,
        signed: bool,
        request_id: str | None = None,
        idempotent: bool = True,
        timeout_s: float | None = None,
    ) -> T:
        request_id = request_id or outgoing_request_id()  # the same id on every attempt
        delays = self.retry.delays() if idempotent else iter(())
        while True:
            if self.breaker is not None:
                self.breaker.before_call()  # open: fails at once, not retried
            try:
                # A fresh assertion per attempt: each is accepted once.
                metadata = self._metadata(signed, request_id)
                result = await rpc(request, metadata=metadata, timeout=timeout_s or self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc, f"the coordinator at {self.address}")
                self._record(error)
                delay = next(delays, None) if is_transient(error) else None
                if delay is None:
                    raise error from exc
                await asyncio.sleep(delay)
            else:
                self._record(None)
                return result

    def _record(self, error: TroopError | None) -> None:
        if self.breaker is not None:
            self.breaker.record(error)

    async def get_public_key(self) -> pb.GetPublicKeyResponse:
        return await self._call(self.stub.GetPublicKey, pb.GetPublicKeyRequest(), signed=False)

    async def get_key_set(self) -> pb.GetKeySetResponse:
        return await self._call(self.stub.GetKeySet, pb.GetKeySetRequest(), signed=False)

    async def heartbeat(
        self, request: pb.HeartbeatRequest, timeout_s: float | None = None
    ) -> pb.HeartbeatResponse:
        """`timeout_s`: this beat's deadline (the worker keeps it below the node TTL)."""
        # Not retried: the next beat is the retry.
        return await self._call(
            self.stub.Heartbeat, request, signed=True, idempotent=False, timeout_s=timeout_s
        )

    async def list_nodes(self, model: str = "") -> pb.ListNodesResponse:
        return await self._call(self.stub.ListNodes, pb.ListNodesRequest(model=model), signed=False)

    async def list_models(self) -> pb.ListModelsResponse:
        return await self._call(self.stub.ListModels, pb.ListModelsRequest(), signed=False)

    async def get_admission(self) -> pb.GetAdmissionResponse:
        return await self._call(self.stub.GetAdmission, pb.GetAdmissionRequest(), signed=False)

    async def join(self, invite_code: str = "", pow_nonce: str = "") -> pb.JoinResponse:
        request = pb.JoinRequest(invite_code=invite_code, pow_nonce=pow_nonce)
        return await self._call(self.stub.Join, request, signed=True)

    async def report_usage(
        self, job_id: str, completion_tokens: int, stream_ms: int
    ) -> pb.ReportUsageResponse:
        request = pb.ReportUsageRequest(
            job_id=job_id, completion_tokens=completion_tokens, stream_ms=stream_ms
        )
        return await self._call(self.stub.ReportUsage, request, signed=True)

    async def authorize(
        self,
        model: str,
        request_id: str | None = None,
        exclude_node_ids: Sequence[str] = (),
        *,
        max_tokens: int = 0,
        max_prompt_tokens: int = 0,
        node_id: str = "",
    ) -> pb.AuthorizeResponse:
        """A ticket for one job of at most these tokens (0: the coordinator's defaults), on
        `node_id` only when given."""
        request = pb.AuthorizeRequest(
            model=model,
            exclude_node_ids=list(exclude_node_ids),
            max_tokens=max_tokens,
            max_prompt_tokens=max_prompt_tokens,
            node_id=node_id,
        )
        return await self._call(
            self.stub.Authorize,
            request,
            signed=True,
            request_id=request_id,
            idempotent=False,  # it reserves credits: never sent twice
        )

    async def submit_verdict(self, request: pb.SubmitVerdictRequest) -> pb.SubmitVerdictResponse:
        """A verifier's signed verdict (the verdict carries its own signature)."""
        return await self._call(self.stub.SubmitVerdict, request, signed=False)

    async def submit_receipt(self, request: pb.SubmitReceiptRequest) -> pb.SubmitReceiptResponse:
        return await self._call(self.stub.SubmitReceipt, request, signed=False)

    async def get_job(self, job_id: str) -> pb.GetJobResponse:
        return await self._call(self.stub.GetJob, pb.GetJobRequest(job_id=job_id), signed=True)

    async def get_balance(self, public_key: str | None = None) -> pb.GetBalanceResponse:
        key = public_key or self._own_key()
        return await self._call(
            self.stub.GetBalance, pb.GetBalanceRequest(public_key=key), signed=True
        )

    async def list_transactions(
        self, public_key: str | None = None, page_size: int = 20, page_token: str = ""
    ) -> pb.ListTransactionsResponse:
        request = pb.ListTransactionsRequest(
            public_key=public_key or self._own_key(), page_size=page_size, page_token=page_token
        )
        return await self._call(self.stub.ListTransactions, request, signed=True)

    async def get_challenge(self, node_id: str) -> pb.GetChallengeResponse:
        return await self._call(
            self.stub.GetChallenge, pb.GetChallengeRequest(node_id=node_id), signed=True
        )

    async def start_challenge(self, node_id: str, challenge_id: str) -> pb.StartChallengeResponse:
        # Each proof step is taken once: a retry could only be refused.
        request = pb.StartChallengeRequest(node_id=node_id, challenge_id=challenge_id)
        return await self._call(self.stub.StartChallenge, request, signed=True, idempotent=False)

    async def commit_proof(self, request: pb.CommitProofRequest) -> pb.CommitProofResponse:
        return await self._call(self.stub.CommitProof, request, signed=True, idempotent=False)

    async def verify_proof(self, request: pb.VerifyProofRequest) -> pb.VerifyProofResponse:
        return await self._call(self.stub.VerifyProof, request, signed=True, idempotent=False)

    def _own_key(self) -> str:
        if self.identity is None:
            raise ValueError("this call needs an identity")
        return self.identity.public_key_hex
