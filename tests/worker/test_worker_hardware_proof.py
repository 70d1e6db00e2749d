"""Proof of hardware against the stand-in coordinator (a small product), and the
worker's generators: numpy and PyTorch build the same integers."""

from __future__ import annotations

import numpy as np
import pytest

from troop_common import proof_matrices
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_worker import proof_torch
from troop_worker.hardware_proof import prove_hardware
from troop_worker.proof_compute import compute


async def test_prove_hardware(recording_coordinator) -> None:
    async with CoordinatorClient(recording_coordinator.address, Identity.generate()) as client:
        assert await prove_hardware(client, "node-x") == 2.5
    (request, valid), *_ = recording_coordinator.proofs
    assert valid and request.node_id == "node-x"
    commit, rows, _ = recording_coordinator.commits[request.challenge_id]
    assert [o.row for o in request.openings] == rows
    assert len(commit.merkle_root) == 32 and commit.precision == "fp32"
    assert commit.reported_ms >= 1


async def test_worker_proves_at_start_when_asked(start_worker, recording_coordinator) -> None:
    async with start_worker(benchmark=True) as worker:
        await recording_coordinator.wait_for(lambda c: len(c.proofs) == 1, 30)
    request, valid = recording_coordinator.proofs[0]
    assert valid and request.node_id == worker.node_id


@pytest.mark.parametrize("seed", [0, 1, 2**63 - 1, 2**64 - 1, 0x1234_5678_9ABC_DEF0])
def test_torch_generator_is_bit_identical_to_numpy(seed: int) -> None:
    import torch  # the engine extra: installed wherever the worker's tests run

    a = proof_matrices.a_tile(seed, 40, 1000, 1300)
    b = proof_matrices.b_tile(seed, 33, 7, 400)
    assert np.array_equal(a, proof_torch.a_tile(seed, 40, 1000, 1300, torch.device("cpu")).numpy())
    assert np.array_equal(b, proof_torch.b_tile(seed, 33, 7, 400, torch.device("cpu")).numpy())
    assert a.min() >= -8 and a.max() <= 8 and b.min() >= -8 and b.max() <= 8


def test_entries_match_the_scalar_definition() -> None:
    seed, row, k = 99, 3, 17
    x = proof_matrices.matrix_key(seed, 0) + ((row << 32) | k) * proof_matrices.GOLDEN
    h = proof_matrices.mix_int(x & proof_matrices.MASK64)
    assert ((h >> 32) * 17 >> 32) - 8 == proof_matrices.a_tile(seed, 4, 0, 20)[row, k]


def test_tiled_product_is_exact_and_rows_and_columns_stand_alone() -> None:
    seed, rows, inner, cols = 5, 6, 2500, 7  # inner spans several tiles
    a = proof_matrices.a_tile(seed, rows, 0, inner)
    b = proof_matrices.b_tile(seed, cols, 0, inner)
    product = compute(seed, rows, inner, cols, device="cpu")
    assert np.array_equal(product.c, (a @ b).astype(np.float32))
    assert np.array_equal(proof_matrices.a_row(seed, 2, inner), a[2])
    assert np.array_equal(proof_matrices.b_col(seed, 4, inner), b[:, 4])
    assert proof_matrices.exact_entry(seed, 2, 4, inner) == int((a @ b)[2, 4])
