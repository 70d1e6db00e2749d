"""`troop worker benchmark`: the local half of the proof of hardware, without a coordinator.

Runs what a challenge asks of this machine — the seeded product of the default
shape (2048 × inner × 2048, `troop_worker.proof_compute`) and its Merkle root —
first at the calibration size, then at the inner size the coordinator would
pick from that speed to last `seconds`, with a progress bar on stderr. Prints
the device, the precision, the speed and the multiplier and tier a proof at
that speed would earn. The coordinator's figure will be a little lower: its
clock also counts the network and the openings' wait.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from typing import TextIO

from troop_common.hardware_proof import flops, multiplier_for, reference_tflops, tier_for
from troop_worker.proof_compute import Product, compute

ROWS = COLS = 2048
CALIBRATION_INNER = 2048
MIN_INNER, MAX_INNER = 1024, 1 << 20
REFERENCE_MS = 1500.0  # the coordinator's default TROOP_BENCHMARK_REFERENCE_MS
BAR = 30


@dataclass(frozen=True)
class BenchmarkResult:
    device: str
    precision: str
    inner: int
    seconds: float
    tflops: float
    multiplier: float
    tier: str


class ProgressBar:
    """`[#######.......] 12/40 tiles`, redrawn in place on `stream`."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream

    def __call__(self, done: int, total: int) -> None:
        filled = BAR * done // max(total, 1)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (BAR - filled)}] {done}/{total} tiles"
        )
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _run(inner: int, device: str, stream: TextIO) -> Product:
    bar = ProgressBar(f"{ROWS}×{inner}×{COLS}", stream)
    return compute(secrets.randbits(64), ROWS, inner, COLS, device=device, progress=bar)


def run_benchmark(
    seconds: float, device: str = "auto", stream: TextIO = sys.stderr
) -> BenchmarkResult:
    """Calibrate, then run once sized to last ~`seconds`; the second run's figures."""
    product, inner = _run(CALIBRATION_INNER, device, stream), CALIBRATION_INNER
    speed = flops(ROWS, inner, COLS) / (product.elapsed_ms / 1000)
    inner = min(MAX_INNER, max(MIN_INNER, round(seconds * speed / flops(ROWS, 1, COLS))))
    product = _run(inner, device, stream)
    tflops = flops(ROWS, inner, COLS) / (product.elapsed_ms / 1000) / 1e12
    return BenchmarkResult(
        device=product.device,
        precision=product.precision,
        inner=inner,
        seconds=product.elapsed_ms / 1000,
        tflops=tflops,
        multiplier=multiplier_for(tflops, reference_tflops(REFERENCE_MS)),
        tier=tier_for(tflops),
    )


def report(result: BenchmarkResult) -> str:
    """The result as `name: value` lines."""
    return "\n".join(
        [
            f"device: {result.device}",
            f"precision: {result.precision}",
            f"shape: {ROWS} x {result.inner} x {COLS}",
            f"seconds: {result.seconds:.3f}",
            f"tflops: {result.tflops:.4f}",
            f"multiplier: {result.multiplier:.3f}",
            f"tier: {result.tier}",
        ]
    )
