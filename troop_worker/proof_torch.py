"""The proof's matrices in PyTorch, bit-identical to `troop_common.proof_matrices`.

PyTorch has no uint64 arithmetic, so the same splitmix64 hash runs on int64:
addition and multiplication wrap to the same 64 bits in two's complement, XOR
is the same, and a logical right shift is an arithmetic one masked to the
low 64 − s bits. Constants above 2⁶³ are passed as their signed equivalents.
Used on the GPU (`troop_worker.proof_compute`); tests compare it with numpy's
on the CPU.
"""

from __future__ import annotations

from typing import Any

from troop_common.proof_matrices import (
    GOLDEN,
    MATRIX_A,
    MATRIX_B,
    MIX1,
    MIX2,
    VALUE_OFFSET,
    VALUE_RANGE,
    matrix_key,
)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _srl(x: Any, s: int) -> Any:
    """Logical right shift of an int64 tensor read as uint64."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x: Any) -> Any:
    x = x ^ _srl(x, 30)
    x = x * _signed(MIX1)
    x = x ^ _srl(x, 27)
    x = x * _signed(MIX2)
    return x ^ _srl(x, 31)


def _entries(key: int, high: Any, low: Any) -> Any:
    hi = (high << 32) * _signed(GOLDEN) + _signed(key)
    lo = low * _signed(GOLDEN)
    h = _srl(_mix(hi[:, None] + lo[None, :]), 32)
    return ((h * VALUE_RANGE) >> 32) - VALUE_OFFSET


def a_tile(seed: int, rows: int, k0: int, k1: int, device: Any) -> Any:
    """A[:, k0:k1] as an int64 tensor on `device`."""
    import torch

    high = torch.arange(rows, dtype=torch.int64, device=device)
    low = torch.arange(k0, k1, dtype=torch.int64, device=device)
    return _entries(matrix_key(seed, MATRIX_A), high, low)


def b_tile(seed: int, cols: int, k0: int, k1: int, device: Any) -> Any:
    """B[k0:k1, :] as an int64 tensor on `device`."""
    import torch

    high = torch.arange(k0, k1, dtype=torch.int64, device=device)
    low = torch.arange(cols, dtype=torch.int64, device=device)
    return _entries(matrix_key(seed, MATRIX_B), high, low)
