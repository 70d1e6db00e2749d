"""Proof of hardware, the worker's side: the four steps against the coordinator.

GetChallenge (the shape) → StartChallenge (the seed; the coordinator's clock
starts) → compute C = A·B and the Merkle root of its rows
(`troop_worker.proof_compute`, in a thread so heartbeats go on) →
CommitProof (the root; the clock stops; the answer names the rows to open) →
VerifyProof (those rows with their inclusion paths), which sets this node's
price multiplier from the coordinator's own timing. Runs in the background
after the first heartbeat when TROOP_WORKER_BENCHMARK=1.
"""

from __future__ import annotations

import asyncio
import logging

from troop_common.coordinator_client import CoordinatorClient
from troop_common.merkle import row_bytes
from troop_common.proto import coordinator_pb2
from troop_worker.proof_compute import Product, compute

log = logging.getLogger("troop.worker.proof")


def openings(
    product: Product, rows: list[int] | tuple[int, ...]
) -> list[coordinator_pb2.ProofOpening]:
    """The named rows of C with their inclusion paths."""
    return [
        coordinator_pb2.ProofOpening(
            row=row, values=row_bytes(product.c[row]), path=product.tree.path(row)
        )
        for row in rows
    ]


async def prove_hardware(client: CoordinatorClient, node_id: str, device: str = "auto") -> float:
    """Run one challenge; the node's new multiplier (TroopError if refused)."""
    challenge = await client.get_challenge(node_id)
    started = await client.start_challenge(node_id, challenge.challenge_id)
    product = await asyncio.to_thread(
        compute, started.seed, challenge.rows, challenge.inner, challenge.cols, device=device
    )
    named = await client.commit_proof(
        coordinator_pb2.CommitProofRequest(
            node_id=node_id,
            challenge_id=challenge.challenge_id,
            merkle_root=product.tree.root,
            precision=product.precision,
            reported_ms=max(1, round(product.elapsed_ms)),
        )
    )
    response = await client.verify_proof(
        coordinator_pb2.VerifyProofRequest(
            node_id=node_id,
            challenge_id=challenge.challenge_id,
            openings=openings(product, list(named.rows)),
        )
    )
    log.info(
        "hardware proof: %d×%d×%d on %s (%s) in %.0f ms here, %d ms at the coordinator → "
        "%.3f TFLOP/s, tier %s, multiplier %.3f",
        challenge.rows, challenge.inner, challenge.cols, product.device, product.precision,
        product.elapsed_ms, response.measured_ms, response.tflops, response.tier,
        response.multiplier,
    )  # fmt: skip
    return response.multiplier
