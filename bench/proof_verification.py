"""What checking a proof of hardware costs the coordinator, against what it costs the worker.

    .venv/bin/python -m bench.proof_verification [--target 2] [--device auto] [--runs 3]
        [--size 2048] [--inner N ...]

The worker's side (`troop_worker.proof_compute`): the seeded size × inner × size
product, tile by tile, and the Merkle tree over its rows, first at the
calibration size (inner 2048), then at the inner the coordinator would pick to
last `--target` seconds at that speed, and at the largest inner the default
settings allow (2^20, only timed for the coordinator), and at each `--inner`
given. The coordinator's side
(`troop_common.proof_check.check_openings`): 48 openings, each a Merkle path
and one exact entry (a row of A and a column of B, O(inner)). Medians of
`--runs`; the ratio is the coordinator's time over the worker's, measured in
the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import time

from troop_common.hardware_proof import OPENED_ROWS, flops
from troop_common.merkle import verify_path
from troop_common.proof_check import Commitment, check_openings
from troop_common.proof_matrices import exact_entry
from troop_worker.hardware_proof import openings
from troop_worker.proof_compute import Product, compute

SIZE = 2048  # rows = cols, the default TROOP_PROOF_ROWS/COLS


def _draw(size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    draw = secrets.SystemRandom()
    rows = tuple(draw.sample(range(size), OPENED_ROWS))
    return rows, tuple(draw.randrange(size) for _ in rows)


def verify_ms(product: Product, seed: int, inner: int, runs: int) -> float:
    """Median time of the coordinator's check of 48 openings of `product` (which passes)."""
    times = []
    for _ in range(runs):
        rows, cols = _draw(product.c.shape[0])
        commitment = Commitment(
            seed,
            product.c.shape[0],
            inner,
            product.c.shape[1],
            product.tree.root,
            product.precision,
            rows,
            cols,
        )
        opened = openings(product, rows)
        started = time.perf_counter()
        fault = check_openings(commitment, opened)
        times.append((time.perf_counter() - started) * 1000)
        assert fault is None, fault  # a passing check does all 48: the full cost
    return statistics.median(times)


def verify_cost_ms(product: Product, seed: int, inner: int) -> float:
    """The same work as a passing check, for an `inner` the worker did not compute:
    48 inclusion paths and 48 exact entries (the entries' comparison is not the cost)."""
    rows, cols = _draw(product.c.shape[0])
    opened = openings(product, rows)
    started = time.perf_counter()
    for opening, row, col in zip(opened, rows, cols, strict=True):
        assert verify_path(
            product.tree.root, row, product.c.shape[0], opening.values, list(opening.path)
        )
        exact_entry(seed, row, col, inner)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=2.0, help="seconds the worker should take")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=SIZE, help="rows = cols of the product")
    parser.add_argument(
        "--inner", type=int, action="append", default=[], help="also time the worker at this inner"
    )
    args = parser.parse_args()
    size = args.size
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        f"; product {args.size} x inner x {args.size}"
    )

    seed = secrets.randbits(64)
    calibration = compute(seed, size, 2048, size, device=args.device)
    speed = flops(size, 2048, size) / (calibration.elapsed_ms / 1000)
    target_inner = min(1 << 20, max(1024, round(args.target * speed / flops(size, 1, size))))
    rows = []
    for inner in (2048, target_inner, *args.inner):
        worker = [compute(seed, size, inner, size, device=args.device) for _ in range(args.runs)]
        worker_ms = statistics.median(p.elapsed_ms for p in worker)
        coordinator_ms = verify_ms(worker[0], seed, inner, args.runs)
        rows.append((inner, worker_ms, coordinator_ms, worker[0].device, worker[0].precision))
    # The largest inner: the coordinator's cost alone (the worker's would take minutes here).
    big = 1 << 20
    coordinator_big = verify_cost_ms(calibration, seed, big)
    worker_big = calibration.elapsed_ms * big / 2048  # extrapolated linearly from the calibration

    print("| inner | device | precision | worker ms | TFLOP/s | coordinator ms (48 openings) "
          "| coordinator / worker |")  # fmt: skip
    print("|---:|---|---|---:|---:|---:|---:|")
    for inner, worker_ms, coordinator_ms, device, precision in rows:
        tflops = flops(size, inner, size) / (worker_ms / 1000) / 1e12
        print(f"| {inner} | {device} | {precision} | {worker_ms:.1f} | {tflops:.4f} "
              f"| {coordinator_ms:.1f} | {coordinator_ms / worker_ms:.2%} |")  # fmt: skip
    print(f"| {big} | {rows[0][3]} | {rows[0][4]} | {worker_big:.0f} (extrapolated) | – "
          f"| {coordinator_big:.1f} | {coordinator_big / worker_big:.2%} |")  # fmt: skip


if __name__ == "__main__":
    main()
