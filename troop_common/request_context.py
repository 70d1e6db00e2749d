"""What one incoming call is: request id, peer, who the caller proved to be, and timing.

The tracing interceptor (outermost after errors) creates a RequestInfo and puts
it in a ContextVar; inner interceptors fill in fields (the principal once
authenticated, the action and reason of a refusal); the audit interceptor
reads it when the call ends. Outgoing calls made while handling a request
(the worker's receipt, the sidecar's authorize) carry the same `x-request-id`.
"""

from __future__ import annotations

import re
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field

REQUEST_ID = "x-request-id"
RESPONSE_TIME = "x-response-time"
# The protocol's own time before a response's first token, in milliseconds (the worker's
# in its first response headers, the client sidecar's total as an HTTP header; ADR 36).
OVERHEAD = "x-troop-overhead-ms"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class RequestInfo:
    request_id: str
    method: str = ""
    peer: str = ""
    principal: str = ""  # hex public key of the user or node, once authenticated
    started: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)
    reason: str = ""
    # Sent with the first response message (e.g. the worker's node proof).
    initial_metadata: list[tuple[str, str]] = field(default_factory=list)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def response_time(self) -> str:
        """The server time spent so far, as sent in `x-response-time` (milliseconds)."""
        return f"{self.elapsed_ms():.3f}ms"


current: ContextVar[RequestInfo | None] = ContextVar("troop_request", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> str:
    """The caller's id if it is a sane token, else a fresh one (ids end up in logs)."""
    if value and _VALID_ID.match(value):
        return value
    return new_request_id()


def outgoing_request_id() -> str:
    """The id to send on an outgoing call: the current request's, or a new one."""
    info = current.get()
    return info.request_id if info else new_request_id()


def format_ms(value: float) -> str:
    """A duration as `x-troop-overhead-ms` carries it: milliseconds, 3 decimals, never
    below 0 (clock granularity can make a difference of two readings slightly negative)."""
    return f"{max(0.0, value):.3f}"


# The most `x-troop-overhead-ms` is believed to say: a worker reports it, and a first
# token later than an hour is a lie (or a bug), not a figure to add into a header.
MAX_OVERHEAD_MS = 3_600_000.0


def parse_ms(value: object) -> float | None:
    """`x-troop-overhead-ms` read back: a number from 0 to MAX_OVERHEAD_MS, or None for
    anything else (text, NaN, negative, absurdly large)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or len(value) > 32:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0 <= number <= MAX_OVERHEAD_MS else None


def add_initial_metadata(key: str, value: str) -> None:
    """Have the tracing interceptor send this pair with the first response message."""
    info = current.get()
    if info is not None:
        info.initial_metadata.append((key, value))


def set_principal(principal: str) -> None:
    info = current.get()
    if info is not None:
        info.principal = principal


def peer_ip(peer: str) -> str:
    """'ipv4:127.0.0.1:5000' → '127.0.0.1'; 'ipv6:[::1]:5000' → '::1'."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit("]", 1)[0].lstrip("[")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return peer or "unknown"
