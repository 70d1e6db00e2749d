"""The proof-of-hardware RPCs of the CoordinatorService (ADR 30), kept apart from the
accounts and jobs: validate, check the node key, call the `ChallengeBook`, convert.

Mixed into `troop_coordinator.service.CoordinatorServicer`, which provides
`challenges`, `nodes` and `registry`.
"""

from __future__ import annotations

from typing import TypeAlias

import grpc

from troop_common.proto import coordinator_pb2 as pb
from troop_coordinator import convert, proof_requests
from troop_coordinator.auth import current_caller
from troop_coordinator.nodes import NodeDirectory
from troop_coordinator.proof import ChallengeBook
from troop_coordinator.registry import NodeRegistry
from troop_coordinator.validation import Violations

Context: TypeAlias = grpc.aio.ServicerContext


class ProofRpcs:
    challenges: ChallengeBook
    nodes: NodeDirectory
    registry: NodeRegistry

    async def GetChallenge(self, request: pb.GetChallengeRequest, context: Context) -> object:
        check = Violations()
        check.node_id("node_id", request.node_id)
        check.raise_if_any()
        await self.nodes.require_bound_to(request.node_id, current_caller())
        challenge = await self.challenges.offer(request.node_id)
        return pb.GetChallengeResponse(
            challenge_id=challenge.challenge_id,
            rows=challenge.rows,
            inner=challenge.inner,
            cols=challenge.cols,
            expires_at=convert.timestamp(challenge.expires_at),
        )

    async def StartChallenge(self, request: pb.StartChallengeRequest, context: Context) -> object:
        check = Violations()
        proof_requests.check_ids(check, request.node_id, request.challenge_id)
        check.raise_if_any()
        await self.nodes.require_bound_to(request.node_id, current_caller())
        seed = await self.challenges.start(request.node_id, request.challenge_id)
        return pb.StartChallengeResponse(seed=seed)

    async def CommitProof(self, request: pb.CommitProofRequest, context: Context) -> object:
        proof_requests.check_commit(request)
        await self.nodes.require_bound_to(request.node_id, current_caller())
        challenge = await self.challenges.commit(
            request.node_id,
            request.challenge_id,
            request.merkle_root,
            request.precision,
            request.reported_ms,
        )
        return pb.CommitProofResponse(
            rows=list(challenge.open_rows), cols=list(challenge.open_cols)
        )

    async def VerifyProof(self, request: pb.VerifyProofRequest, context: Context) -> object:
        proof_requests.check_verify(request)
        await self.nodes.require_bound_to(request.node_id, current_caller())
        found = await self.challenges.peek(request.challenge_id)
        if found is not None and found.node_id == request.node_id:
            proof_requests.check_openings_shape(request, found)
        result = await self.challenges.verify(
            request.node_id, request.challenge_id, list(request.openings)
        )
        await self.nodes.set_multiplier(request.node_id, result.multiplier)
        await self.registry.set_multiplier(request.node_id, result.multiplier)
        return pb.VerifyProofResponse(
            multiplier=result.multiplier,
            tflops=result.tflops,
            tier=result.tier,
            measured_ms=result.measured_ms,
        )
