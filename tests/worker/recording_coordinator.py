"""A STAND-IN coordinator for the worker's tests — not the real one.

The real coordinator is built in parallel; end-to-end tests against it live
elsewhere. This is a tiny but real grpc.aio CoordinatorService on port 0 that
implements the calls a worker makes — GetKeySet (serving the public keys of
real RSA ticket signers), Heartbeat, SubmitReceipt, and the four proof steps
GetChallenge, StartChallenge, CommitProof and VerifyProof (a small product) —
and records them, verifying node assertions, receipt signatures and proofs
(with the real `troop_common.proof_check`) the way the coordinator must.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from troop_common.assertions import COORDINATOR_AUDIENCE, verify_assertion
from troop_common.errors import SignatureInvalid
from troop_common.proof_check import Commitment, check_openings
from troop_common.proto import COORDINATOR_SERVICE, coordinator_pb2, coordinator_pb2_grpc
from troop_common.receipts import parse_receipt, verify_receipt_signature
from troop_common.server import TroopServer
from troop_common.tickets import TicketSigner, jwk


@dataclass
class RecordedReceipt:
    receipt: coordinator_pb2.JobReceipt
    signature_valid: bool


@dataclass
class RecordedHeartbeat:
    request: coordinator_pb2.HeartbeatRequest
    node_public_key: str


@dataclass
class RecordingCoordinator(coordinator_pb2_grpc.CoordinatorServiceServicer):
    """Serves `signers`' keys; records heartbeats and receipts."""

    signers: list[TicketSigner]
    heartbeat_interval_s: int = 0
    key_set_calls: int = 0
    heartbeats: list[RecordedHeartbeat] = field(default_factory=list)
    receipts: list[RecordedReceipt] = field(default_factory=list)
    node_keys: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    address: str = ""
    server: TroopServer | None = None
    challenge_shape: tuple[int, int, int] = (32, 256, 24)
    challenges: dict[str, coordinator_pb2.GetChallengeResponse] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    commits: dict[str, tuple[coordinator_pb2.CommitProofRequest, list[int], list[int]]] = field(
        default_factory=dict
    )
    proofs: list[tuple[coordinator_pb2.VerifyProofRequest, bool]] = field(default_factory=list)

    async def GetKeySet(self, request, context):
        self.key_set_calls += 1
        return coordinator_pb2.GetKeySetResponse(
            keys=[coordinator_pb2.JsonWebKey(**jwk(s.public_key)) for s in self.signers]
        )

    async def Heartbeat(self, request, context):
        token = dict(context.invocation_metadata())["authorization"].removeprefix("Bearer ")
        node_key = verify_assertion(token, COORDINATOR_AUDIENCE).subject
        self.node_keys.setdefault(request.node_id, node_key)
        async with self.changed:
            self.heartbeats.append(RecordedHeartbeat(request, node_key))
            self.changed.notify_all()
        return coordinator_pb2.HeartbeatResponse(
            interval_seconds=self.heartbeat_interval_s, multiplier=1.0
        )

    async def SubmitReceipt(self, request, context):
        receipt = parse_receipt(request)
        try:
            verify_receipt_signature(request, self.node_keys.get(receipt.node_id, "00" * 32))
            valid = True
        except SignatureInvalid:
            valid = False
        async with self.changed:
            self.receipts.append(RecordedReceipt(receipt, valid))
            self.changed.notify_all()
        kind = (
            coordinator_pb2.SETTLEMENT_KIND_CHARGED
            if receipt.outcome == coordinator_pb2.JOB_OUTCOME_COMPLETED
            else coordinator_pb2.SETTLEMENT_KIND_REFUNDED
        )
        return coordinator_pb2.SubmitReceiptResponse(job_id=receipt.job_id, kind=kind)

    async def GetChallenge(self, request, context):
        rows, inner, cols = self.challenge_shape
        challenge = coordinator_pb2.GetChallengeResponse(
            challenge_id=f"ch-{len(self.challenges)}", rows=rows, inner=inner, cols=cols
        )
        self.challenges[challenge.challenge_id] = challenge
        return challenge

    async def StartChallenge(self, request, context):
        seed = 1234 + len(self.seeds)
        self.seeds[request.challenge_id] = seed
        return coordinator_pb2.StartChallengeResponse(seed=seed)

    async def CommitProof(self, request, context):
        challenge = self.challenges[request.challenge_id]
        draw = random.Random(7)
        rows = draw.sample(range(challenge.rows), min(8, challenge.rows))
        cols = [draw.randrange(challenge.cols) for _ in rows]
        self.commits[request.challenge_id] = (request, rows, cols)
        return coordinator_pb2.CommitProofResponse(rows=rows, cols=cols)

    async def VerifyProof(self, request, context):
        challenge = self.challenges[request.challenge_id]
        commit, rows, cols = self.commits[request.challenge_id]
        commitment = Commitment(
            seed=self.seeds[request.challenge_id],
            rows=challenge.rows,
            inner=challenge.inner,
            cols=challenge.cols,
            merkle_root=commit.merkle_root,
            precision=commit.precision,
            open_rows=tuple(rows),
            open_cols=tuple(cols),
        )
        valid = check_openings(commitment, list(request.openings)) is None
        async with self.changed:
            self.proofs.append((request, valid))
            self.changed.notify_all()
        return coordinator_pb2.VerifyProofResponse(
            multiplier=2.5 if valid else 0.1, tflops=0.23, tier="cpu", measured_ms=5
        )

    async def wait_for(self, predicate, timeout_s: float = 5.0) -> None:
        """Wait until `predicate(self)` holds (checked whenever something is recorded)."""
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: predicate(self)), timeout_s)

    def receipt_for(self, job_id: str) -> RecordedReceipt | None:
        return next((r for r in self.receipts if r.receipt.job_id == job_id), None)


def start_server(servicer: RecordingCoordinator) -> TroopServer:
    return TroopServer(
        registrars=[
            lambda s: coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, s)
        ],
        service_names=[COORDINATOR_SERVICE],
    )


__all__ = ["RecordedHeartbeat", "RecordedReceipt", "RecordingCoordinator", "start_server"]
