"""Proof of hardware, the rules both sides share: what is opened, what passes, what it is worth.

The protocol (docs/adr/0030-proof-of-hardware.md): GetChallenge offers a shape
(rows, inner, cols); StartChallenge hands out the seed and starts the
coordinator's clock; the worker computes C = A·B (`troop_common.proof_matrices`)
and commits the Merkle root of C's rows (`troop_common.merkle`) with CommitProof,
which stops the clock and names `OPENED_ROWS` random rows, each with one column;
VerifyProof opens them, and each opened entry is compared with the exact
product entry (`check_entry`).

Tolerance (`tolerance`): the exact entry E is an integer. For "fp32"/"tf32"
the worker's entry must be within 1e-6·(|E| + σ) of it, σ = 24·√inner the
entry's standard deviation (an honest fp32 accumulation is exact: error 0).
For "bf16"/"fp16", where each tile's product may be rounded to 8 (11)
significant bits before the fp32 accumulation, within 2⁻⁶·(|E| + σ): the
rounding error's standard deviation is ~2⁻⁹·σ/√3, so the window is ~14 of
them wide. A guess without the product lands inside with probability about
2·2⁻⁶/√(2π) ≈ 1.3 % per entry (bf16) or ~1e-6 (fp32).

Detection: a worker that skips a fraction f of the entries passes one opened
row with probability ≤ (1 − f) + f·0.013; with 48 rows and f = 10 % that is
≤ 0.9013⁴⁸ ≈ 0.68 %: caught ≥ 99.3 % of the time (0.9⁴⁸ ≈ 0.63 % for exact
precisions).

Speed: tflops = 2·rows·inner·cols / measured_s / 1e12, multiplier = tflops /
reference, clamped to [0.01, 100000]; tier from tflops (`tier_for`).
"""

from __future__ import annotations

import math

from troop_common.proof_matrices import entry_scale

OPENED_ROWS = 48
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
EXACT_PRECISIONS = frozenset({"fp32", "tf32"})
EXACT_REL_TOL = 1e-6
ROUNDED_REL_TOL = 2.0**-6
MIN_MULTIPLIER = 0.01
MAX_MULTIPLIER = 100_000.0
# The reference machine: a 4096³ float32 multiply in TROOP_BENCHMARK_REFERENCE_MS.
REFERENCE_SIZE = 4096
# (upper bound in TFLOP/s, tier), checked in order; above the last: "datacenter".
TIERS = ((1.0, "cpu"), (20.0, "gpu-small"), (200.0, "gpu"))
TOP_TIER = "datacenter"


def reference_tflops(reference_ms: float) -> float:
    """The reference machine's speed from its 4096³ time: 1500 ms → ≈ 0.0916 TFLOP/s."""
    return 2 * REFERENCE_SIZE**3 / (reference_ms / 1000) / 1e12


def flops(rows: int, inner: int, cols: int) -> int:
    """Floating-point operations of the product (a multiply and an add per term)."""
    return 2 * rows * inner * cols


def tflops_for(rows: int, inner: int, cols: int, measured_ms: float) -> float:
    return flops(rows, inner, cols) / (max(measured_ms, 1.0) / 1000) / 1e12


def multiplier_for(tflops: float, reference: float) -> float:
    """Speed over the reference machine's, clamped to [0.01, 100000]."""
    return min(MAX_MULTIPLIER, max(MIN_MULTIPLIER, tflops / reference))


def tier_for(tflops: float) -> str:
    """< 1 TFLOP/s "cpu", < 20 "gpu-small", < 200 "gpu", else "datacenter"."""
    return next((name for bound, name in TIERS if tflops < bound), TOP_TIER)


def tolerance(expected: int, inner: int, precision: str) -> float:
    """How far an opened entry may be from the exact one, for the declared precision."""
    rel = EXACT_REL_TOL if precision in EXACT_PRECISIONS else ROUNDED_REL_TOL
    return rel * (abs(expected) + entry_scale(inner))


def check_entry(got: float, expected: int, inner: int, precision: str) -> bool:
    """True if the worker's entry is the exact one within the precision's tolerance."""
    return math.isfinite(got) and abs(got - expected) <= tolerance(expected, inner, precision)
