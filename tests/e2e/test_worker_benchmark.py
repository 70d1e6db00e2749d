"""`troop worker benchmark`, run as a user runs it: the installed `troop` entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TROOP = Path(sys.executable).parent / "troop"


def test_worker_benchmark_prints_speed_multiplier_and_tier() -> None:
    done = subprocess.run(
        [str(TROOP), "worker", "benchmark", "--seconds", "0.2", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert fields["device"] == "cpu" and fields["precision"] == "fp32"
    assert float(fields["tflops"]) > 0 and float(fields["multiplier"]) >= 0.01
    assert fields["tier"] in ("cpu", "gpu-small", "gpu", "datacenter")
    assert fields["shape"].startswith("2048 x ")
    assert "tiles" in done.stderr and "[" in done.stderr  # the progress bar


def test_worker_benchmark_on_cuda_without_one_says_so() -> None:
    done = subprocess.run(
        [str(TROOP), "worker", "benchmark", "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode == 0:  # this machine has a GPU
        assert "device: cuda" in done.stdout
    else:
        assert done.returncode == 2 and "no CUDA device" in done.stderr
