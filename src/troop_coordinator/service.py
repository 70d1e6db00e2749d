"""The CoordinatorService servicer: validate, call the ledger / registry / signer, convert.

Thin by design: no SQL, no policy beyond ordering the steps. Failures are
TroopErrors, mapped to status codes by the shared ErrorInterceptor; the
servicer never aborts by itself.
"""

from __future__ import annotations

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
    SignatureInvalid,
)
from troop_common.proto import common_pb2, coordinator_pb2_grpc
from troop_common.proto import coordinator_pb2 as pb
from troop_common.receipts import parse_receipt, verify_receipt_signature
from troop_common.tickets import TICKET_ALGORITHM, jwk, public_key_pem
from troop_coordinator import convert
from troop_coordinator.auth import current_caller
from troop_coordinator.ledger import Ledger, NewJob, Outcome
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.proof import ChallengeBook
from troop_coordinator.registry import LiveNode, NodeRegistry
from troop_coordinator.settings import CoordinatorSettings
from troop_coordinator.ticket_keys import TicketKeyRing
from troop_coordinator.usage import UsageBook
from troop_coordinator.validation import Violations

Context: TypeAlias = grpc.aio.ServicerContext


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(
        self,
        *,
        settings: CoordinatorSettings,
        ledger: Ledger,
        nodes: NodeDirectory,
        registry: NodeRegistry,
        signer: TicketKeyRing,
        challenges: ChallengeBook,
        usage: UsageBook | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.nodes = nodes
        self.registry = registry
        self.signer = signer
        self.challenges = challenges
        self.usage = usage or UsageBook(
            ledger.sessions,
            token_slack=settings.usage_token_slack,
            time_slack_ms=settings.usage_time_slack_ms,
        )

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
        )
        multiplier, reputation = await self.nodes.record_heartbeat(
            node, request.owner_public_key, datetime.fromtimestamp(now, UTC)
        )
        await self.registry.heartbeat(replace(node, multiplier=multiplier, reputation=reputation))
        return pb.HeartbeatResponse(
            interval_seconds=self.settings.heartbeat_interval_s, multiplier=multiplier
        )

    async def ListNodes(self, request: pb.ListNodesRequest, context: Context) -> object:
        if request.model:
            check = Violations()
            check.model("model", request.model)
            check.raise_if_any()
        live = await self.registry.live_nodes(time.time(), request.model)
        return pb.ListNodesResponse(nodes=[convert.node_to_pb(n) for n in live])

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> object:
        counts = Counter(m for n in await self.registry.live_nodes(time.time()) for m in n.models)
        return pb.ListModelsResponse(
            models=[common_pb2.ModelInfo(id=m, node_count=c) for m, c in sorted(counts.items())]
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
        check.raise_if_any()
        user = current_caller()
        now = time.time()
        created = datetime.fromtimestamp(now, UTC)
        if self.settings.admission == "open":
            await self.ledger.ensure_user_with_grant(user, created)
        elif not await self.ledger.has_joined(user):
            # An implicit grant would bypass the invite or the puzzle.
            raise FailedPrecondition(
                f"join first: this coordinator admits by {self.settings.admission} "
                "(see GetAdmission)"
            )
        node = await self.registry.pick(request.model, now, set(request.exclude_node_ids))
        if node is None:
            others = " other than those excluded" if request.exclude_node_ids else ""
            raise NodeUnavailable(f"no live node{others} serves model {request.model}")
        job_id = uuid.uuid4().hex
        ticket, expires = self.signer.issue(
            job_id=job_id,
            user=user,
            node_id=node.node_id,
            node_key=node.node_public_key,
            model=request.model,
            now=now,
        )
        reserved = self.settings.reservation_millicredits
        await self.ledger.reserve(
            NewJob(
                job_id=job_id,
                user_public_key=user,
                node_id=node.node_id,
                model=request.model,
                reserved_millicredits=reserved,
                created_at=created,
                # A job may still be running when its ticket expires: its receipt is
                # accepted for a grace period before the sweeper returns the credits.
                expires_at=datetime.fromtimestamp(expires + self.settings.settle_grace_s, UTC),
            )
        )
        return pb.AuthorizeResponse(
            job_id=job_id,
            ticket=ticket,
            node_id=node.node_id,
            endpoint=node.endpoint,
            expires_at=convert.timestamp(expires),
            reserved_millicredits=reserved,
            node_public_key=node.node_public_key,
        )

    async def SubmitReceipt(self, request: pb.SubmitReceiptRequest, context: Context) -> object:
        receipt = parse_receipt(request)
        check = Violations()
        check.node_id("receipt.node_id", receipt.node_id)
        if receipt.outcome not in (pb.JOB_OUTCOME_COMPLETED, pb.JOB_OUTCOME_FAILED):
            check.add("receipt.outcome", "COMPLETED or FAILED")
        check.job_id("receipt.job_id", receipt.job_id)
        check.raise_if_any()
        job_node = await self.ledger.job_node(receipt.job_id)
        if job_node is None:
            raise NotFound(f"no job {receipt.job_id}")
        if job_node != receipt.node_id:
            raise PermissionDenied(f"job {receipt.job_id} was given to another node")
        key = await self.nodes.bound_key(receipt.node_id)
        if key is None:
            raise SignatureInvalid("the receipt's node has no key on record")
        verify_receipt_signature(request, key)
        outcome = (
            Outcome.COMPLETED if receipt.outcome == pb.JOB_OUTCOME_COMPLETED else Outcome.FAILED
        )
        now = datetime.now(UTC)
        settlement = await self.ledger.settle(
            receipt.job_id, receipt.node_id, outcome, receipt.duration_ms, now
        )
        # The node's claim, kept to be checked against the client's countersignature.
        await self.usage.record_node_claim(
            receipt.job_id, receipt.usage.completion_tokens, receipt.duration_ms, now
        )
        return convert.settlement_to_pb(settlement)

    async def ReportUsage(self, request: pb.ReportUsageRequest, context: Context) -> object:
        check = Violations()
        check.job_id("job_id", request.job_id)
        check.raise_if_any()
        verdict = await self.usage.record_client_claim(
            request.job_id,
            current_caller(),
            request.completion_tokens,
            request.stream_ms,
            datetime.now(UTC),
        )
        return pb.ReportUsageResponse(
            job_id=request.job_id,
            compared=verdict.compared,
            disputed=verdict.disputed,
            already_reported=verdict.already_reported,
        )

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

    async def GetChallenge(self, request: pb.GetChallengeRequest, context: Context) -> object:
        check = Violations()
        check.node_id("node_id", request.node_id)
        check.raise_if_any()
        await self.nodes.require_bound_to(request.node_id, current_caller())
        challenge = self.challenges.issue(request.node_id)
        return pb.GetChallengeResponse(
            challenge_id=challenge.challenge_id,
            seed=challenge.seed,
            matrix_size=challenge.matrix_size,
            sample_indices=list(challenge.sample_indices),
            expires_at=convert.timestamp(challenge.expires_at),
        )

    async def VerifyProof(self, request: pb.VerifyProofRequest, context: Context) -> object:
        check = Violations()
        check.node_id("node_id", request.node_id)
        if not request.challenge_id or len(request.challenge_id) > 64:
            check.add("challenge_id", "required, from GetChallenge")
        if not request.samples:
            check.add("samples", "required")
        if request.elapsed_ms == 0:
            check.add("elapsed_ms", "must be positive")
        check.raise_if_any()
        await self.nodes.require_bound_to(request.node_id, current_caller())
        multiplier = await self.challenges.verify(
            challenge_id=request.challenge_id,
            node_id=request.node_id,
            samples=list(request.samples),
            elapsed_ms=request.elapsed_ms,
        )
        await self.nodes.set_multiplier(request.node_id, multiplier)
        await self.registry.set_multiplier(request.node_id, multiplier)
        return pb.VerifyProofResponse(multiplier=multiplier)
