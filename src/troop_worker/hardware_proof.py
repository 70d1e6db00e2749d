"""Proof of hardware, the worker's side: answer the coordinator's seeded challenge.

GetChallenge → build the seeded matrices (`troop_common.hardware_proof`) →
multiply them, timed, with PyTorch on the GPU when there is one (float32,
TF32 off: it loses too much precision for the check), else PyTorch or numpy
on the CPU → report the sampled entries and the time → VerifyProof, which
sets this node's price multiplier. Runs in the background after the first
heartbeat when TROOP_WORKER_BENCHMARK=1.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections.abc import Sequence

import numpy as np

from troop_common.coordinator_client import CoordinatorClient
from troop_common.hardware_proof import generate_matrices, sample_product
from troop_common.proto import coordinator_pb2

log = logging.getLogger("troop.worker.proof")


def multiply(a: np.ndarray, b: np.ndarray, indices: Sequence[int]) -> tuple[list[float], float]:
    """The product's samples and the multiplication's wall time in ms (transfers excluded)."""
    if importlib.util.find_spec("torch") is None:
        started = time.perf_counter()
        c = a @ b
        return sample_product(c, indices), (time.perf_counter() - started) * 1000
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        c = ta @ tb
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed_ms = (time.perf_counter() - started) * 1000
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    return sample_product(c.cpu().numpy(), indices), elapsed_ms


def _solve(challenge: coordinator_pb2.GetChallengeResponse) -> tuple[list[float], float]:
    a, b = generate_matrices(challenge.seed, challenge.matrix_size)
    return multiply(a, b, list(challenge.sample_indices))


async def prove_hardware(client: CoordinatorClient, node_id: str) -> float:
    """Run one challenge; the node's new multiplier (TroopError if refused)."""
    challenge = await client.get_challenge(node_id)
    samples, elapsed_ms = await asyncio.to_thread(_solve, challenge)
    response = await client.verify_proof(
        coordinator_pb2.VerifyProofRequest(
            node_id=node_id,
            challenge_id=challenge.challenge_id,
            samples=samples,
            elapsed_ms=max(1, round(elapsed_ms)),
        )
    )
    log.info(
        "hardware proof: %d×%d in %.0f ms → multiplier %.3f",
        challenge.matrix_size, challenge.matrix_size, elapsed_ms, response.multiplier,
    )  # fmt: skip
    return response.multiplier
