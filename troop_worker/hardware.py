"""What this node runs on, for heartbeats."""

from __future__ import annotations

import os

from troop_common.proto import coordinator_pb2


def memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def detect_hardware(device: str = "cpu") -> coordinator_pb2.NodeHardware:
    """`device` is the engine's ("cpu", or the accelerator's name)."""
    return coordinator_pb2.NodeHardware(
        device=device, cpu_count=os.cpu_count() or 1, memory_bytes=memory_bytes()
    )
