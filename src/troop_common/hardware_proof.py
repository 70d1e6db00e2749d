"""Proof of hardware: seeded matrices both sides can build, and a cheap check of the product.

The coordinator hands out (seed, n, sample indices). The worker builds

    rng = numpy.random.default_rng(seed)
    A = rng.standard_normal((n, n), dtype=numpy.float32)   # A first,
    B = rng.standard_normal((n, n), dtype=numpy.float32)   # then B, same generator

(`generate_matrices`), multiplies them however it likes (numpy, or PyTorch on
the GPU in float32 — TF32/bf16 lose too much precision), times the
multiplication, and reports `C.flat[i]` for each sample index
(`sample_product`). The coordinator regenerates A and B and checks each sample
against the float64 dot product of A's row and B's column (`check_samples`):
O(n) per sample instead of O(n³).

Tolerance: an entry of C may be near zero, so the error allowed is relative to
`|expected| + ‖row‖·‖col‖/√n` (the typical size of an entry), times
`rel_tol` (1e-3). Float32 accumulation errors are ~1e-5 of that; a guess lands
inside with probability ~1e-3 per sample, ~1e-24 for eight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

REFERENCE_MATRIX_SIZE = 4096
SAMPLE_COUNT = 8
DEFAULT_REL_TOL = 1e-3
MIN_MULTIPLIER = 0.1
MAX_MULTIPLIER = 10.0


def generate_matrices(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The challenge's A and B: float32 standard normals, A then B from one generator."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return a, b


def choose_sample_indices(rng: np.random.Generator, n: int, count: int = SAMPLE_COUNT) -> list[int]:
    """Distinct flat indices into the n×n product."""
    total = n * n
    return [int(i) for i in rng.choice(total, size=min(count, total), replace=False)]


def sample_product(c: np.ndarray, indices: Sequence[int]) -> list[float]:
    """What the worker reports: the product's entries at the flat indices, in order."""
    flat = np.asarray(c).reshape(-1)
    return [float(flat[i]) for i in indices]


def expected_samples(
    a: np.ndarray, b: np.ndarray, indices: Sequence[int]
) -> list[tuple[float, float]]:
    """(exact value, typical magnitude) of each sampled entry, in float64."""
    n = a.shape[0]
    found = []
    for index in indices:
        row, col = divmod(int(index), n)
        x = a[row, :].astype(np.float64)
        y = b[:, col].astype(np.float64)
        scale = float(np.linalg.norm(x) * np.linalg.norm(y)) / math.sqrt(n)
        found.append((float(np.dot(x, y)), scale))
    return found


def check_samples(
    seed: int,
    n: int,
    indices: Sequence[int],
    samples: Sequence[float],
    rel_tol: float = DEFAULT_REL_TOL,
) -> bool:
    """True if every reported sample matches the product of the seeded matrices."""
    if len(samples) != len(indices) or any(not 0 <= i < n * n for i in indices):
        return False
    a, b = generate_matrices(seed, n)
    for got, (want, scale) in zip(samples, expected_samples(a, b, indices), strict=True):
        if not math.isfinite(got) or abs(got - want) > rel_tol * (abs(want) + scale):
            return False
    return True


def multiplier_for(elapsed_ms: float, n: int, reference_ms_at_4096: float) -> float:
    """Price multiplier: reference time (scaled to this size, O(n³)) over the measured time,
    clamped to [0.1, 10]."""
    reference = reference_ms_at_4096 * (n / REFERENCE_MATRIX_SIZE) ** 3
    raw = reference / max(elapsed_ms, 1e-3)
    return min(MAX_MULTIPLIER, max(MIN_MULTIPLIER, raw))
