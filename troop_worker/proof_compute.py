"""The worker's side of the proof's work: build A and B tile by tile, multiply, commit.

C (rows × cols, float32) = Σ over tiles of `inner` of A[:, k0:k1] · B[k0:k1, :], so
memory stays ~(rows + cols) × tile + rows × cols however large `inner` is. On
a CUDA GPU (PyTorch) the tiles are generated on the device
(`troop_worker.proof_torch`) and multiplied in bf16 (exact for entries in
[−8, 8]) with each tile's product added into an fp32 C: precision "bf16". On
the CPU, numpy float32: precision "fp32", exact. The Merkle tree over C's rows
(`troop_common.merkle`) is part of the timed work: the coordinator's clock runs
until the root arrives.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from troop_common.merkle import MerkleTree
from troop_common.proof_matrices import a_tile, b_tile

CPU_TILE = 1024
GPU_TILE = 8192
DEVICES = ("auto", "cpu", "cuda")

Progress = Callable[[int, int], None]  # (tiles done, tiles in all)


@dataclass
class Product:
    c: np.ndarray
    tree: MerkleTree
    device: str
    precision: str
    elapsed_ms: float


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def pick_device(device: str = "auto") -> str:
    """ "cuda" when asked or available (auto), else "cpu"; ValueError for cuda without one."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}")
    if device == "cuda" and not cuda_available():
        raise ValueError("no CUDA device (PyTorch with CUDA) on this machine")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def _spans(inner: int, tile: int) -> list[tuple[int, int]]:
    return [(k0, min(inner, k0 + tile)) for k0 in range(0, inner, tile)]


def _numpy_product(
    seed: int, rows: int, inner: int, cols: int, progress: Progress | None
) -> np.ndarray:
    c = np.zeros((rows, cols), dtype=np.float32)
    spans = _spans(inner, CPU_TILE)
    for done, (k0, k1) in enumerate(spans, 1):
        a = a_tile(seed, rows, k0, k1).astype(np.float32)
        b = b_tile(seed, cols, k0, k1).astype(np.float32)
        c += a @ b
        if progress is not None:
            progress(done, len(spans))
    return c


def _torch_product(
    seed: int, rows: int, inner: int, cols: int, progress: Progress | None
) -> np.ndarray:
    import torch

    from troop_worker import proof_torch

    device = torch.device("cuda")
    matmul: Any = torch.backends.cuda.matmul
    saved = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = False  # bf16 products, fp32 reductions
    try:
        c = torch.zeros((rows, cols), dtype=torch.float32, device=device)
        spans = _spans(inner, GPU_TILE)
        for done, (k0, k1) in enumerate(spans, 1):
            a = proof_torch.a_tile(seed, rows, k0, k1, device).to(torch.bfloat16)
            b = proof_torch.b_tile(seed, cols, k0, k1, device).to(torch.bfloat16)
            c += (a @ b).float()
            if progress is not None:
                progress(done, len(spans))
        return c.cpu().numpy()  # waits for the device
    finally:
        matmul.allow_bf16_reduced_precision_reduction = saved


def compute(
    seed: int,
    rows: int,
    inner: int,
    cols: int,
    *,
    device: str = "auto",
    progress: Progress | None = None,
) -> Product:
    """C = A·B for the seed, its Merkle tree, and the wall time of both."""
    chosen = pick_device(device)
    started = time.perf_counter()
    if chosen == "cuda":
        c, precision = _torch_product(seed, rows, inner, cols, progress), "bf16"
    else:
        c, precision = _numpy_product(seed, rows, inner, cols, progress), "fp32"
    tree = MerkleTree.over_rows(c)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return Product(c, tree, chosen, precision, elapsed_ms)
