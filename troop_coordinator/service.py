"""The CoordinatorService servicer: validate, call the ledger / registry / signer, convert.

Thin by design: no SQL, no policy beyond ordering the steps. Failures are
TroopErrors, mapped to status codes by the shared ErrorInterceptor; the
servicer never aborts by itself.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypeAlias

import grpc

from troop_common.admission import MAX_INVITE_LENGTH, MAX_NONCE_LENGTH, hash_invite, pow_ok
from troop_common.errors import (
    FailedPrecondition,
    NodeUnavailable,
    NotFound,
    PermissionDenied,
    RateLimited,
    SignatureInvalid,
)
from troop_common.presentation import verify_presentation
from troop_common.proto import common_pb2, coordinator_pb2_grpc
from troop_common.proto import coordinator_pb2 as pb
from troop_common.receipts import parse_receipt, verify_receipt_signature
from troop_common.tickets import TICKET_ALGORITHM, jwk, public_key_pem
from troop_coordinator import convert
from troop_coordinator.auth import current_caller
from troop_coordinator.db.models import JobStatus
from troop_coordinator.ledger import (
    ClientClaim,
    Ledger,
    NewJob,
    NodeClaim,
    NotJoined,
    Outcome,
    TooManyOpenJobs,
)
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.pricing import DEFAULT_MAX_TOKENS
from troop_coordinator.proof import ChallengeBook
from troop_coordinator.proof_rpcs import ProofRpcs
from troop_coordinator.reachability import EndpointProofs
from troop_coordinator.registry import LiveNode, NodeRegistry
from troop_coordinator.settings import CoordinatorSettings
from troop_coordinator.ticket_keys import TicketKeyRing
from troop_coordinator.validation import (
    DEFAULT_NODE_PAGE,
    MAX_DURATION_MS,
    MAX_NODE_PAGE,
    MAX_REPORTED_TOKENS,
    Violations,
    check_receipt_usage,
    decode_offset_token,
    encode_offset_token,
)

Context: TypeAlias = grpc.aio.ServicerContext
log = logging.getLogger("troop.coordinator.service")


class CoordinatorServicer(ProofRpcs, coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(
        self,
        *,
        settings: CoordinatorSettings,
        ledger: Ledger,
        nodes: NodeDirectory,
        registry: NodeRegistry,
        signer: TicketKeyRing,
        challenges: ChallengeBook,
        endpoint_proofs: EndpointProofs | None = None,
    ) -> None:
        self.endpoint_proofs = endpoint_proofs
        self.settings = settings
        self.ledger = ledger
        self.nodes = nodes
        self.registry = registry
        self.signer = signer
        self.challenges = challenges
        self.catalog = settings.catalog()

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
        now = time.time()
        node = LiveNode(
            node_id=request.node_id,
            node_public_key=current_caller(),
            endpoint=request.endpoint,
            models=tuple(request.models),
            load=convert.load_from_pb(request.load),
            hardware=convert.hardware_from_pb(request.hardware),
            last_seen=now,
            tls=request.tls,
        )
        standing = await self.nodes.record_heartbeat(
            node,
            request.owner_public_key,
            datetime.fromtimestamp(now, UTC),
            invite_code=request.invite_code,
        )
        live = replace(node, multiplier=standing.multiplier, reputation=standing.reputation)
        proofs = self.endpoint_proofs
        proven = proofs is None or standing.proves(node)
        if proofs is None or proven:
            await self.registry.heartbeat(live)
        else:
            # Listed only once its endpoint answered with its key (in the background).
            proofs.check(live, self._endpoint_proven)
        return pb.HeartbeatResponse(
            interval_seconds=self.settings.heartbeat_interval_s,
            multiplier=standing.multiplier,
            endpoint_proven=proven,
        )

    async def _endpoint_proven(self, node: LiveNode) -> None:
        await self.nodes.set_proven_endpoint(
            node.node_id, node.node_public_key, node.endpoint, node.tls
        )
        await self.registry.heartbeat(node)
        log.info("node %s proved its endpoint %s", node.node_id, node.endpoint)

    async def ListNodes(self, request: pb.ListNodesRequest, context: Context) -> object:
        check = Violations()
        if request.model:
            check.model("model", request.model)
        check.at_most("page_size", request.page_size, MAX_NODE_PAGE)
        offset = decode_offset_token(check, "page_token", request.page_token)
        check.raise_if_any()
        size = request.page_size or DEFAULT_NODE_PAGE
        # Best first (registry.rank, then node id), kept in that order as heartbeats arrive.
        page, total = await self.registry.ranked(time.time(), request.model, offset, size)
        more = offset + size < total
        return pb.ListNodesResponse(
            nodes=[convert.node_to_pb(n) for n in page],
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
        mode = {
            "open": pb.ADMISSION_MODE_OPEN,
            "invite": pb.ADMISSION_MODE_INVITE,
            "pow": pb.ADMISSION_MODE_POW,
        }[self.settings.admission]
        bits = self.settings.pow_bits if self.settings.admission == "pow" else 0
        return pb.GetAdmissionResponse(mode=mode, pow_bits=bits)

    def _admission_ticket(self, user: str, request: pb.JoinRequest) -> str | None:
        """The invite hash to spend, or None; PermissionDenied if the rule is not met."""
        check = Violations()
        if len(request.invite_code) > MAX_INVITE_LENGTH:
            check.add("invite_code", f"at most {MAX_INVITE_LENGTH} characters")
        if len(request.pow_nonce) > MAX_NONCE_LENGTH:
            check.add("pow_nonce", f"at most {MAX_NONCE_LENGTH} characters")
        check.raise_if_any()
        mode = self.settings.admission
        if mode == "invite":
            if not request.invite_code.strip():
                raise PermissionDenied("this coordinator admits by invite: join with invite_code")
            return hash_invite(request.invite_code)
        if mode == "pow" and not pow_ok(user, request.pow_nonce, self.settings.pow_bits):
            raise PermissionDenied(
                f"this coordinator admits by proof of work: pow_nonce must give "
                f"{self.settings.pow_bits} leading zero bits (see GetAdmission)"
            )
        return None

    async def Join(self, request: pb.JoinRequest, context: Context) -> object:
        user = current_caller()
        granted = False
        if not await self.ledger.has_joined(user):
            invite = self._admission_ticket(user, request)
            granted = await self.ledger.ensure_user_with_grant(
                user, datetime.now(UTC), invite_hash=invite
            )
        balance, _ = await self.ledger.balance(user)
        return pb.JoinResponse(
            public_key=user,
            granted_millicredits=self.ledger.starter_millicredits if granted else 0,
            balance_millicredits=balance,
            already_joined=not granted,
        )

    async def Authorize(self, request: pb.AuthorizeRequest, context: Context) -> object:
        check = Violations()
        check.model("model", request.model)
        check.excluded_nodes("exclude_node_ids", list(request.exclude_node_ids))
        price = self.catalog.price(request.model) if not check.found else None
        if price is not None:
            check.at_most("max_tokens", request.max_tokens, price.max_completion_tokens)
        check.raise_if_any()
        assert price is not None
        max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
        # A client's prompt bound is an estimate from above (bytes, without a
        # tokenizer): beyond the model's own bound it means that bound.
        max_prompt_tokens = min(
            request.max_prompt_tokens or price.max_prompt_tokens, price.max_prompt_tokens
        )
        user = current_caller()
        now = time.time()
        created = datetime.fromtimestamp(now, UTC)
        node = await self.registry.pick(request.model, now, set(request.exclude_node_ids))
        if node is None:
            # Off the hot path, so the refusals keep their order: not joined (or the
            # open admission's grant), over the cap, then no node.
            await self._admit(user, created)
            count, first_expiry = await self.ledger.open_jobs(user)
            if count >= self.settings.max_open_jobs_per_user:
                raise self._too_many_open_jobs(count, first_expiry, now)
            others = " other than those excluded" if request.exclude_node_ids else ""
            raise NodeUnavailable(
                f"no live node{others} serves model {request.model}", model=request.model
            )
        job_id = uuid.uuid4().hex
        ticket, expires = self.signer.issue(
            job_id=job_id,
            user=user,
            node_id=node.node_id,
            node_key=node.node_public_key,
            model=request.model,
            now=now,
            max_tokens=max_tokens,
            max_prompt_tokens=max_prompt_tokens,
        )
        # What the job can cost at most: the rest is released at settlement.
        reserved = price.charge(max_prompt_tokens, max_tokens)
        job = NewJob(
            job_id=job_id,
            user_public_key=user,
            node_id=node.node_id,
            model=request.model,
            reserved_millicredits=reserved,
            created_at=created,
            # A job may still be running when its ticket expires: its receipt is
            # accepted for a grace period before the sweeper returns the credits.
            expires_at=datetime.fromtimestamp(expires + self.settings.settle_grace_s, UTC),
            max_prompt_tokens=max_prompt_tokens,
            max_tokens=max_tokens,
            prompt_price_per_1k=price.prompt_per_1k,
            completion_price_per_1k=price.completion_per_1k,
        )
        # One call (on PostgreSQL one round trip) checks the join, the cap on open jobs
        # and the credits, and reserves; the cap is atomic (docs/adr/0034).
        try:
            await self._reserve(job, now)
        except NotJoined:
            if self.settings.admission != "open":
                raise self._not_joined() from None
            # A user's first Authorize under open admission: grant, then reserve.
            await self.ledger.ensure_user_with_grant(user, created)
            await self._reserve(job, now)
        return pb.AuthorizeResponse(
            job_id=job_id,
            ticket=ticket,
            node_id=node.node_id,
            endpoint=node.endpoint,
            expires_at=convert.timestamp(expires),
            reserved_millicredits=reserved,
            node_public_key=node.node_public_key,
            max_tokens=max_tokens,
            max_prompt_tokens=max_prompt_tokens,
            price=convert.price_to_pb(price),
            tls=node.tls,
        )

    async def _reserve(self, job: NewJob, now: float) -> None:
        """The ledger's reservation under this coordinator's cap on open jobs."""
        try:
            await self.ledger.reserve(job, max_open_jobs=self.settings.max_open_jobs_per_user)
        except TooManyOpenJobs as exc:
            raise self._too_many_open_jobs(exc.open_jobs, exc.first_expiry, now) from None

    async def _admit(self, user: str, created: datetime) -> None:
        """Open admission grants on first sight; otherwise the user must have joined."""
        if self.settings.admission == "open":
            await self.ledger.ensure_user_with_grant(user, created)
        elif not await self.ledger.has_joined(user):
            raise self._not_joined()

    def _not_joined(self) -> FailedPrecondition:
        # An implicit grant would bypass the invite or the puzzle.
        return FailedPrecondition(
            f"join first: this coordinator admits by {self.settings.admission} (see GetAdmission)"
        )

    def _too_many_open_jobs(
        self, count: int, first_expiry: datetime | None, now: float
    ) -> RateLimited:
        """RESOURCE_EXHAUSTED once the user holds the most open reservations allowed."""
        cap = self.settings.max_open_jobs_per_user
        wait_s = max(1.0, first_expiry.timestamp() - now) if first_expiry else 1.0
        return RateLimited(
            f"too many open jobs: {count} of at most {cap} per user; retry when one finishes "
            f"(settled or expired, in {wait_s:.0f} s at the latest); the coordinator's "
            "operator can raise TROOP_MAX_OPEN_JOBS_PER_USER",
            wait_s,
        )

    async def SubmitReceipt(self, request: pb.SubmitReceiptRequest, context: Context) -> object:
        receipt = parse_receipt(request)
        check = Violations()
        check.node_id("receipt.node_id", receipt.node_id)
        if receipt.outcome not in (pb.JOB_OUTCOME_COMPLETED, pb.JOB_OUTCOME_FAILED):
            check.add("receipt.outcome", "COMPLETED or FAILED")
        check.job_id("receipt.job_id", receipt.job_id)
        check.at_most("receipt.duration_ms", receipt.duration_ms, MAX_DURATION_MS)
        check.raise_if_any()
        job = await self.ledger.job_bounds(receipt.job_id)
        if job is None:
            raise NotFound(f"no job {receipt.job_id}")
        if job.node_id != receipt.node_id:
            raise PermissionDenied(f"job {receipt.job_id} was given to another node")
        key = await self.nodes.bound_key(receipt.node_id)
        if key is None:
            raise SignatureInvalid("the receipt's node has no key on record")
        verify_receipt_signature(request, key)
        # Signed by the node: now its numbers are worth checking against the ticket.
        check_receipt_usage(check, receipt.usage, job)
        check.raise_if_any()
        verify_presentation(
            job.user_public_key,
            receipt.job_id,
            receipt.node_id,
            receipt.client_nonce,
            receipt.presentation,
        )
        outcome = (
            Outcome.COMPLETED if receipt.outcome == pb.JOB_OUTCOME_COMPLETED else Outcome.FAILED
        )
        settlement = await self.ledger.record_receipt(
            NodeClaim(
                job_id=receipt.job_id,
                node_id=receipt.node_id,
                outcome=outcome,
                prompt_tokens=receipt.usage.prompt_tokens,
                completion_tokens=receipt.usage.completion_tokens,
                duration_ms=receipt.duration_ms,
            ),
            datetime.now(UTC),
        )
        # Settling may have moved the node's reputation or withdrawn its proof: its next
        # heartbeat reads its row instead of what this coordinator remembers (nodes.py).
        self.nodes.forget(receipt.node_id)
        return convert.settlement_to_pb(settlement)

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
