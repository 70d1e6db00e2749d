"""Request validation: each check adds a FieldViolation; `raise_if_any` raises them together.

Every request field the coordinator acts on is checked here, before anything
is read or written, so bad input is INVALID_ARGUMENT and never INTERNAL.
"""

from __future__ import annotations

import re

from troop_common.errors import FieldViolation, InvalidArgument
from troop_common.keys import is_public_key_hex
from troop_common.proto import common_pb2, coordinator_pb2
from troop_coordinator import page_tokens
from troop_coordinator.ledger.types import JobBounds

NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The coordinator issues 32 hex digits; the check keeps bytes a database cannot store
# (NUL, invalid UTF-8 surrogates) out of every query.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
MAX_MODELS = 64
# How many unreachable nodes one Authorize may ask to skip.
MAX_EXCLUDED_NODES = 8
# Self-reported load and hardware are bounded (they rank nodes and show in discovery).
MAX_LOAD = 1024
MAX_DEVICE_NAME = 100
MAX_CPUS = 4096
MAX_MEMORY_BYTES = 1 << 50
DEFAULT_NODE_PAGE = 50
MAX_NODE_PAGE = 100
MAX_OFFSET = 1_000_000
# A day: no job's receipt or stream time is longer (tickets live minutes).
MAX_DURATION_MS = 86_400_000
# The most completion tokens a client may countersign (above any model's bound).
MAX_REPORTED_TOKENS = 1_000_000


class Violations:
    def __init__(self) -> None:
        self.found: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.found.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.found:
            raise InvalidArgument(self.found)

    def node_id(self, field: str, value: str) -> None:
        if not NODE_ID.fullmatch(value):
            self.add(field, "1-64 characters of A-Z a-z 0-9 . _ -")

    def job_id(self, field: str, value: str) -> None:
        if not JOB_ID.fullmatch(value):
            self.add(field, "a job id from Authorize: 1-64 characters of A-Z a-z 0-9 _ -")

    def model(self, field: str, value: str) -> None:
        if not MODEL_ID.fullmatch(value):
            self.add(field, "a model id: 1-200 characters of A-Z a-z 0-9 . _ : / @ + -")

    def public_key(self, field: str, value: str) -> None:
        if not is_public_key_hex(value):
            self.add(field, "a hex Ed25519 public key (64 hex digits)")

    def endpoint(self, field: str, value: str) -> None:
        host, sep, port = value.rpartition(":")
        if not sep or not HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
            self.add(field, "host:port with a port in 1-65535")

    def models(self, field: str, values: list[str]) -> None:
        if not values:
            self.add(field, "at least one model")
        elif len(values) > MAX_MODELS:
            self.add(field, f"at most {MAX_MODELS} models")
        for i, value in enumerate(values):
            self.model(f"{field}[{i}]", value)
        if len(set(values)) != len(values):
            self.add(field, "no duplicates")

    def node_load(self, field: str, load: coordinator_pb2.NodeLoad) -> None:
        for name in ("active_jobs", "queue_depth", "max_concurrent_jobs"):
            self.at_most(f"{field}.{name}", getattr(load, name), MAX_LOAD)

    def node_hardware(self, field: str, hardware: coordinator_pb2.NodeHardware) -> None:
        if len(hardware.device) > MAX_DEVICE_NAME or not hardware.device.isprintable():
            self.add(f"{field}.device", f"at most {MAX_DEVICE_NAME} printable characters")
        self.at_most(f"{field}.cpu_count", hardware.cpu_count, MAX_CPUS)
        self.at_most(f"{field}.memory_bytes", hardware.memory_bytes, MAX_MEMORY_BYTES)

    def at_most(self, field: str, value: int, bound: int) -> None:
        if value > bound:
            self.add(field, f"at most {bound}")

    def excluded_nodes(self, field: str, values: list[str]) -> None:
        if len(values) > MAX_EXCLUDED_NODES:
            self.add(field, f"at most {MAX_EXCLUDED_NODES} nodes")
        for i, value in enumerate(values):
            self.node_id(f"{field}[{i}]", value)


def check_receipt_usage(check: Violations, usage: common_pb2.Usage, job: JobBounds) -> None:
    """A receipt's token counts within its ticket's bounds, and a total that adds up."""
    check.at_most("receipt.usage.prompt_tokens", usage.prompt_tokens, job.max_prompt_tokens)
    check.at_most("receipt.usage.completion_tokens", usage.completion_tokens, job.max_tokens)
    if usage.total_tokens != usage.prompt_tokens + usage.completion_tokens:
        check.add("receipt.usage.total_tokens", "must be prompt_tokens + completion_tokens")


def encode_offset_token(offset: int) -> str:
    return page_tokens.encode("o", offset)


def decode_offset_token(check: Violations, field: str, token: str) -> int:
    """The offset a page token from this API holds (0 for none); a violation otherwise."""
    if not token:
        return 0
    offset = page_tokens.decode("o", token, MAX_OFFSET)
    if offset is None:
        check.add(field, "not a token from this API")
        return 0
    return offset
