"""The CoordinatorService servicer: validate, convert protobuf <-> domain, call.

Thin by design: no SQL and no policy. Admission and Join are
`troop_coordinator.admission`, Authorize is `troop_coordinator.authorization`,
heartbeats are `troop_coordinator.heartbeats`, verdicts `troop_coordinator.verdicts`,
money is the ledger's. Failures are
TroopErrors, mapped to status codes by the shared ErrorInterceptor; the servicer
never aborts by itself.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import TypeAlias

import grpc

from troop_common.admission import MAX_INVITE_LENGTH
from troop_common.errors import NotFound, PermissionDenied
from troop_common.proto import common_pb2, coordinator_pb2_grpc
from troop_common.proto import coordinator_pb2 as pb
from troop_common.receipts import parse_receipt
from troop_common.tickets import TICKET_ALGORITHM, jwk, public_key_pem
from troop_coordinator import convert
from troop_coordinator.admission import Admission
from troop_coordinator.auth import current_caller
from troop_coordinator.authorization import JobAuthorizer, JobRequest
from troop_coordinator.db.models import JobStatus
from troop_coordinator.heartbeats import Heartbeats
from troop_coordinator.ledger import ClientClaim, Ledger
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.proof import ChallengeBook
from troop_coordinator.proof_rpcs import ProofRpcs
from troop_coordinator.receipts import Receipts
from troop_coordinator.registry import LiveNode, NodeRegistry
from troop_coordinator.ticket_keys import TicketKeyRing
from troop_coordinator.validation import (
    DEFAULT_NODE_PAGE,
    MAX_DURATION_MS,
    MAX_NODE_PAGE,
    MAX_REPORTED_TOKENS,
    Violations,
    decode_offset_token,
    encode_offset_token,
)
from troop_coordinator.verdicts import Verdicts

Context: TypeAlias = grpc.aio.ServicerContext
_ADMISSION_MODES = {
    "open": pb.ADMISSION_MODE_OPEN,
    "invite": pb.ADMISSION_MODE_INVITE,
    "pow": pb.ADMISSION_MODE_POW,
}


class CoordinatorServicer(ProofRpcs, coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(
        self,
        *,
        ledger: Ledger,
        nodes: NodeDirectory,
        registry: NodeRegistry,
        signer: TicketKeyRing,
        challenges: ChallengeBook,
        admission: Admission,
        authorizer: JobAuthorizer,
        heartbeats: Heartbeats,
        receipts: Receipts,
        verdicts: Verdicts,
        heartbeat_interval_s: int,
    ) -> None:
        self.ledger = ledger
        self.nodes = nodes
        self.registry = registry
        self.signer = signer
        self.challenges = challenges
        self.admission = admission
        self.authorizer = authorizer
        self.heartbeats = heartbeats
        self.receipts = receipts
        self.verdicts = verdicts
        self.heartbeat_interval_s = heartbeat_interval_s
        self.catalog = authorizer.catalog

    async def GetPublicKey(self, request: pb.GetPublicKeyRequest, context: Context) -> object:
        return pb.GetPublicKeyResponse(
            kid=self.signer.kid,
            algorithm=TICKET_ALGORITHM,
            public_key_pem=public_key_pem(self.signer.public_key),
        )

    async def GetKeySet(self, request: pb.GetKeySetRequest, context: Context) -> object:
        # The current key plus keys retired within the grace period (ticket_keys.py).
        keys = self.signer.published_keys()
        return pb.GetKeySetResponse(keys=[pb.JsonWebKey(**jwk(k)) for k in keys])

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Context) -> object:
        check = Violations()
        check.node_id("node_id", request.node_id)
        check.endpoint("endpoint", request.endpoint)
        check.models("models", list(request.models))
        check.public_key("owner_public_key", request.owner_public_key)
        check.node_load("load", request.load)
        check.node_hardware("hardware", request.hardware)
        if len(request.invite_code) > MAX_INVITE_LENGTH:
            check.add("invite_code", f"at most {MAX_INVITE_LENGTH} characters")
        check.raise_if_any()
        node = LiveNode(
            node_id=request.node_id,
            node_public_key=current_caller(),
            endpoint=request.endpoint,
            models=tuple(request.models),
            load=convert.load_from_pb(request.load),
            hardware=convert.hardware_from_pb(request.hardware),
            last_seen=time.time(),
            tls=request.tls,
        )
        beat = await self.heartbeats.beat(node, request.owner_public_key, request.invite_code)
        return pb.HeartbeatResponse(
            interval_seconds=self.heartbeat_interval_s,
            multiplier=beat.multiplier,
            endpoint_proven=beat.endpoint_proven,
        )

    async def ListNodes(self, request: pb.ListNodesRequest, context: Context) -> object:
        check = Violations()
        if request.model:
            check.model("model", request.model)
        check.at_most("page_size", request.page_size, MAX_NODE_PAGE)
        offset = decode_offset_token(check, "page_token", request.page_token)
        check.raise_if_any()
        size = request.page_size or DEFAULT_NODE_PAGE
        # Best first (registry.rank, then node id), kept in that order as heartbeats arrive.
        now = time.time()
        page, total = await self.registry.ranked(now, request.model, offset, size)
        more = offset + size < total
        return pb.ListNodesResponse(
            nodes=[convert.node_to_pb(n, now) for n in page],
            next_page_token=encode_offset_token(offset + size) if more else "",
        )

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> object:
        counts = Counter(m for n in await self.registry.live_nodes(time.time()) for m in n.models)
        return pb.ListModelsResponse(
            models=[
                common_pb2.ModelInfo(
                    id=m, node_count=c, price=convert.price_to_pb(self.catalog.price(m))
                )
                for m, c in sorted(counts.items())
            ]
        )

    async def GetAdmission(self, request: pb.GetAdmissionRequest, context: Context) -> object:
        return pb.GetAdmissionResponse(
            mode=_ADMISSION_MODES[self.admission.mode],
            pow_bits=self.admission.required_pow_bits,
        )

    async def Join(self, request: pb.JoinRequest, context: Context) -> object:
        joined = await self.admission.join(
            current_caller(),
            datetime.now(UTC),
            invite_code=request.invite_code,
            pow_nonce=request.pow_nonce,
        )
        return pb.JoinResponse(
            public_key=joined.public_key,
            granted_millicredits=joined.granted_millicredits,
            balance_millicredits=joined.balance_millicredits,
            already_joined=joined.already_joined,
        )

    async def Authorize(self, request: pb.AuthorizeRequest, context: Context) -> object:
        check = Violations()
        check.model("model", request.model)
        check.excluded_nodes("exclude_node_ids", list(request.exclude_node_ids))
        if request.node_id:
            check.node_id("node_id", request.node_id)
        if not check.found:
            bound = self.catalog.price(request.model).max_completion_tokens
            check.at_most("max_tokens", request.max_tokens, bound)
        check.raise_if_any()
        job = await self.authorizer.authorize(
            JobRequest(
                user=current_caller(),
                model=request.model,
                max_tokens=request.max_tokens,
                max_prompt_tokens=request.max_prompt_tokens,
                exclude_node_ids=frozenset(request.exclude_node_ids),
                node_id=request.node_id,
            ),
            time.time(),
        )
        return pb.AuthorizeResponse(
            job_id=job.job_id,
            ticket=job.ticket,
            node_id=job.node.node_id,
            endpoint=job.node.endpoint,
            expires_at=convert.timestamp(job.expires_at),
            reserved_millicredits=job.reserved_millicredits,
            node_public_key=job.node.node_public_key,
            max_tokens=job.max_tokens,
            max_prompt_tokens=job.max_prompt_tokens,
            price=convert.price_to_pb(job.price),
            tls=job.node.tls,
        )

    async def SubmitReceipt(self, request: pb.SubmitReceiptRequest, context: Context) -> object:
        receipt = parse_receipt(request)
        check = Violations()
        check.node_id("receipt.node_id", receipt.node_id)
        if receipt.outcome not in (pb.JOB_OUTCOME_COMPLETED, pb.JOB_OUTCOME_FAILED):
            check.add("receipt.outcome", "COMPLETED or FAILED")
        check.job_id("receipt.job_id", receipt.job_id)
        check.at_most("receipt.duration_ms", receipt.duration_ms, MAX_DURATION_MS)
        if len(receipt.evidence_sha256) not in (0, 32):
            check.add("receipt.evidence_sha256", "empty or a 32-byte SHA-256 digest")
        check.raise_if_any()
        settlement = await self.receipts.submit(request, receipt, datetime.now(UTC))
        return convert.settlement_to_pb(settlement)

    async def SubmitVerdict(self, request: pb.SubmitVerdictRequest, context: Context) -> object:
        # Checked and parsed by the domain service: the signed bytes are the bytes read.
        result = await self.verdicts.submit(request.verdict, request.signature, datetime.now(UTC))
        return pb.SubmitVerdictResponse(
            verification=convert.checks_to_pb(result.checks, time.time()),
            duplicate=result.duplicate,
        )

    async def ReportUsage(self, request: pb.ReportUsageRequest, context: Context) -> object:
        check = Violations()
        check.job_id("job_id", request.job_id)
        check.at_most("completion_tokens", request.completion_tokens, MAX_REPORTED_TOKENS)
        check.at_most("stream_ms", request.stream_ms, MAX_DURATION_MS)
        check.raise_if_any()
        settlement, new = await self.ledger.record_countersignature(
            ClientClaim(
                job_id=request.job_id,
                user_public_key=current_caller(),
                completion_tokens=request.completion_tokens,
                stream_ms=request.stream_ms,
            ),
            datetime.now(UTC),
        )
        settled = convert.settlement_to_pb(settlement)
        return pb.ReportUsageResponse(
            job_id=request.job_id,
            compared=new and settlement.status is not JobStatus.OPEN,
            disputed=settlement.disputed,
            already_reported=not new,
            kind=settled.kind,
            charged_millicredits=settlement.charged_millicredits,
        )

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> object:
        check = Violations()
        check.job_id("job_id", request.job_id)
        check.raise_if_any()
        job = await self.ledger.job(request.job_id)
        if job is None:
            raise NotFound(f"no job {request.job_id}")
        if job.user_public_key != current_caller():
            raise PermissionDenied("a user can only read their own jobs")
        return convert.job_to_pb(job)

    def _own_key(self, public_key: str) -> str:
        check = Violations()
        check.public_key("public_key", public_key)
        check.raise_if_any()
        if public_key != current_caller():
            raise PermissionDenied("a user can only read their own account")
        return public_key

    async def GetBalance(self, request: pb.GetBalanceRequest, context: Context) -> object:
        key = self._own_key(request.public_key)
        balance, reserved = await self.ledger.balance(key)
        return pb.GetBalanceResponse(
            public_key=key, balance_millicredits=balance, reserved_millicredits=reserved
        )

    async def ListTransactions(
        self, request: pb.ListTransactionsRequest, context: Context
    ) -> object:
        key = self._own_key(request.public_key)
        page = await self.ledger.transactions(key, request.page_size, request.page_token)
        return pb.ListTransactionsResponse(
            transactions=[convert.entry_to_pb(e) for e in page.entries],
            next_page_token=page.next_page_token,
        )
