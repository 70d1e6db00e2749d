"""The proof of hardware's matrices: every entry is a counter-based hash of the seed.

    A[i, k] = small(mix(key(seed, 0) + ((i << 32) | k) · GOLDEN))     (rows × inner)
    B[k, j] = small(mix(key(seed, 1) + ((k << 32) | j) · GOLDEN))     (inner × cols)

with all arithmetic on uint64, wrapping: `mix` is the splitmix64 finaliser,
`key(seed, m) = mix(seed + (m + 1) · GOLDEN)`, and `small(h) = ((h >> 32) · 17 >> 32) − 8`
maps the high half of the hash onto [−8, 8] (Lemire's multiply-shift range
reduction, no division). Because an entry depends only on (seed, matrix, index),
anyone can build one row of A or one column of B in O(inner) without the rest
(`a_row`, `b_col`, `exact_entry`: what the coordinator does), and the worker can
build A and B tile by tile over `inner` (`a_tile`, `b_tile`) so its memory stays
bounded however large `inner` is. The worker's PyTorch generator
(`troop_worker.proof_torch`) reproduces these integers bit for bit.

Entries in [−8, 8] are exact in fp32, tf32, bf16 and fp16, every product is an
integer of magnitude ≤ 64, so an fp32 accumulation is exact while partial sums
stay below 2^24. An entry of C has standard deviation `entry_scale(inner)` =
24·√inner (E[a²] = 24 for a uniform on [−8, 8]): 24,576 at inner = 2^20, 680×
below 2^24.
"""

from __future__ import annotations

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
MASK64 = (1 << 64) - 1
VALUE_RANGE = 17  # entries are in [-8, 8]
VALUE_OFFSET = 8
ENTRY_VARIANCE = 24.0  # E[a²] for a uniform on [-8, 8]: 2·(1² + … + 8²) / 17
MATRIX_A = 0
MATRIX_B = 1

_U64 = np.uint64


def mix_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (the reference the vectorised versions follow)."""
    x &= MASK64
    x ^= x >> 30
    x = (x * MIX1) & MASK64
    x ^= x >> 27
    x = (x * MIX2) & MASK64
    x ^= x >> 31
    return x


def matrix_key(seed: int, matrix: int) -> int:
    """The per-matrix key: mix(seed + (matrix + 1) · GOLDEN)."""
    return mix_int((seed + (matrix + 1) * GOLDEN) & MASK64)


def _mix(x: np.ndarray) -> np.ndarray:
    # In place on a uint64 array: numpy's uint64 arithmetic wraps.
    x ^= x >> _U64(30)
    x *= _U64(MIX1)
    x ^= x >> _U64(27)
    x *= _U64(MIX2)
    x ^= x >> _U64(31)
    return x


def _small(h: np.ndarray) -> np.ndarray:
    """High 32 bits of each hash onto [-8, 8], as int64."""
    h >>= _U64(32)
    h *= _U64(VALUE_RANGE)
    h >>= _U64(32)
    return h.astype(np.int64) - VALUE_OFFSET


def _entries(key: int, high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """small(mix(key + ((high << 32) | low) · GOLDEN)) for the outer grid high × low."""
    with np.errstate(over="ignore"):
        hi = (high.astype(_U64) << _U64(32)) * _U64(GOLDEN) + _U64(key)
        lo = low.astype(_U64) * _U64(GOLDEN)
        grid = hi[:, None] + lo[None, :]
        return _small(_mix(grid))


def a_tile(seed: int, rows: int, k0: int, k1: int) -> np.ndarray:
    """A[:, k0:k1] as int64 (rows × (k1 - k0))."""
    return _entries(matrix_key(seed, MATRIX_A), np.arange(rows), np.arange(k0, k1))


def b_tile(seed: int, cols: int, k0: int, k1: int) -> np.ndarray:
    """B[k0:k1, :] as int64 ((k1 - k0) × cols)."""
    return _entries(matrix_key(seed, MATRIX_B), np.arange(k0, k1), np.arange(cols))


def a_row(seed: int, row: int, inner: int) -> np.ndarray:
    """Row `row` of A, O(inner)."""
    return _entries(matrix_key(seed, MATRIX_A), np.array([row]), np.arange(inner))[0]


def b_col(seed: int, col: int, inner: int) -> np.ndarray:
    """Column `col` of B, O(inner)."""
    return _entries(matrix_key(seed, MATRIX_B), np.arange(inner), np.array([col]))[:, 0]


def exact_entry(seed: int, row: int, col: int, inner: int) -> int:
    """C[row, col] = A[row, :] · B[:, col], exactly (int64)."""
    return int(np.dot(a_row(seed, row, inner), b_col(seed, col, inner)))


def entry_scale(inner: int) -> float:
    """The standard deviation of an entry of C: 24·√inner."""
    return ENTRY_VARIANCE * float(np.sqrt(inner))
