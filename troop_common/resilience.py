"""Timeouts, retries with backoff and a circuit breaker, for calls to another Troop component:
one implementation, its numbers read from settings (`ResilienceSettings`, ADR 49).

Timeouts: dialling a coordinator or worker gives up after `connect_timeout_s` (5 s; a peer
that never completes its handshake is Unreachable then, not when the call's deadline
passes); a call to the coordinator has `request_timeout_s` (30 s; a worker's heartbeat at
most its interval, below the node TTL); an answer's stream has the client's inference
timeout (300 s).

Retries: 3 after 1 s, 2 s and 4 s (±20 % jitter), only for idempotent calls and only on
transport failures — never on an answer, and never for a call that spends (Authorize).
What is a transport failure the error says itself (`TroopError.transient`, rebuilt exactly
from the wire's ErrorInfo): Unavailable and Unreachable are; a refusal, "no node serves
this model" (NodeUnavailable) and a rate limit (RateLimited, which names its own wait)
are not. Loops that retry until something goes (receipts, the worker's first key fetch)
take their delays from the same `RetryPolicy`, capped.

The breaker opens after 5 transport failures in a row and fails calls at once for 60 s;
then one trial call decides whether it closes again. An answer, any answer, shows the
peer is up: it resets the count. One guards the client's coordinator, one the worker's
heartbeat, one each worker endpoint as the client sees it.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from troop_common.errors import TroopError, Unavailable
from troop_common.settings_spec import Settings, integer, number, setting

DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_INFERENCE_TIMEOUT_S = 300.0
DEFAULT_KEEPALIVE_S = 10.0
# The fastest pings a Troop server takes from a peer with a call open, even while it sends
# nothing (a long prefill): a client's keepalive is never faster (TROOP_KEEPALIVE_SECONDS).
MIN_KEEPALIVE_S = 1.0
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_COOLDOWN_S = 60.0


def is_transient(error: TroopError) -> bool:
    """A failure of the transport, not a decision: worth another try later."""
    return error.transient


def connect_options(connect_timeout_s: float) -> list[tuple[str, int]]:
    """gRPC channel options bounding each connection attempt (TCP, TLS and the HTTP/2
    SETTINGS exchange) by `connect_timeout_s`: a call waiting on it then fails UNAVAILABLE
    ("failed to connect to all addresses"). gRPC's name for that bound is
    `min_reconnect_backoff_ms` (its minimum connect timeout, 20 s unless set)."""
    return [("grpc.min_reconnect_backoff_ms", max(100, round(connect_timeout_s * 1000)))]


def keepalive_options(keepalive_s: float) -> list[tuple[str, int]]:
    """gRPC channel options pinging the peer (HTTP/2 PING) every `keepalive_s` while a call
    is open, and closing the connection when a ping is not answered within as long again:
    the open calls then fail UNAVAILABLE. A peer whose link was cut answers nothing, not even
    a reset, and would otherwise hold a stream until its deadline. No pings without a call
    (an idle channel costs the peer nothing); any number between two data frames."""
    milliseconds = round(max(keepalive_s, MIN_KEEPALIVE_S) * 1000)
    return [
        ("grpc.keepalive_time_ms", milliseconds),
        ("grpc.keepalive_timeout_ms", milliseconds),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def ping_tolerance_options() -> list[tuple[str, int]]:
    """gRPC server options accepting a client's keepalive pings (keepalive_options) down to
    MIN_KEEPALIVE_S apart while a call is open, even when the server sends nothing between
    them (by default a server answers the third such ping within 5 minutes with GOAWAY
    `too_many_pings`); half that, so that a ping a timer's jitter early is no strike."""
    return [("grpc.http2.min_ping_interval_without_data_ms", round(MIN_KEEPALIVE_S * 500))]


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    base_delay_s: float = 1.0
    jitter: float = 0.2
    max_delay_s: float | None = None  # cap of one delay, for loops that try until it goes

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (0: the first), jittered."""
        delay = self.base_delay_s * 2 ** min(attempt, 30)
        if self.max_delay_s is not None:
            delay = min(delay, self.max_delay_s)
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter)

    def delays(self) -> Iterator[float]:
        for attempt in range(self.retries):
            yield self.delay(attempt)


NO_RETRY = RetryPolicy(retries=0)


class CircuitBreaker:
    """Closed → open after `threshold` transport failures in a row → half-open after
    `cooldown_s` (one trial call) → closed on its success, open again on its failure."""

    def __init__(
        self,
        name: str,
        threshold: int = DEFAULT_BREAKER_FAILURES,
        cooldown_s: float = DEFAULT_BREAKER_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self.cooldown_s else "open"

    def before_call(self) -> None:
        """Unavailable at once while open; otherwise the call may go ahead."""
        if self.state == "open":
            assert self._opened_at is not None
            wait = self.cooldown_s - (self._clock() - self._opened_at)
            raise Unavailable(
                f"{self.name} is unreachable (circuit open after {self._failures} failures); "
                f"trying again in {wait:.0f} s"
            )

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def record_failure(self) -> None:
        self._failures += 1
        if self.state == "half-open" or self._failures >= self.threshold:
            self._opened_at = self._clock()

    def record(self, error: TroopError | None) -> None:
        """After a call: a transport failure counts; an answer (a result or a refusal)
        shows the peer is up."""
        if error is not None and is_transient(error):
            self.record_failure()
        else:
            self.record_success()

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """`with breaker.guard(): await call()`: refused at once while open, the
        outcome recorded."""
        self.before_call()
        try:
            yield
        except TroopError as exc:
            self.record(exc)
            raise
        self.record(None)


@dataclass(frozen=True, repr=False)
class ResilienceSettings(Settings):
    """Timeouts and breakers of every component's calls to another (a settings group)."""

    connect_timeout_s: float = setting(
        DEFAULT_CONNECT_TIMEOUT_S,
        env="TROOP_CONNECT_TIMEOUT_SECONDS",
        parse=number(positive=True),
        help="how long dialling the coordinator or a worker may take (TCP, TLS, HTTP/2) "
        "before it counts as unreachable",
    )
    request_timeout_s: float = setting(
        DEFAULT_REQUEST_TIMEOUT_S,
        env="TROOP_REQUEST_TIMEOUT_SECONDS",
        parse=number(positive=True),
        help="deadline of one call to the coordinator; a worker's heartbeat gets the lower of "
        "this and its interval (at least 1 s), so a beat ends well within the node TTL",
    )
    keepalive_s: float = setting(
        DEFAULT_KEEPALIVE_S,
        env="TROOP_KEEPALIVE_SECONDS",
        parse=number(positive=True),
        help="how often the client pings the worker an answer streams from (at least 1 s); "
        "one that does not answer within as long again is gone (a cut link, not only a "
        "closed one) and the answer resumes on another node "
        "([ADR 55](docs/adr/0055-keepalive-on-answer-streams.md))",
    )
    breaker_failures: int = setting(
        DEFAULT_BREAKER_FAILURES,
        env="TROOP_BREAKER_FAILURES",
        parse=integer(1),
        help="transport failures in a row that open a circuit breaker: the client's "
        "coordinator, each worker as the client sees it, the worker's heartbeat",
    )
    breaker_cooldown_s: float = setting(
        DEFAULT_BREAKER_COOLDOWN_S,
        env="TROOP_BREAKER_COOLDOWN_SECONDS",
        parse=number(positive=True),
        help="how long an open breaker fails calls at once before one trial call",
    )

    def breaker(self, name: str) -> CircuitBreaker:
        """A breaker for the peer `name` ("the coordinator at host:port") as set here."""
        return CircuitBreaker(name, self.breaker_failures, self.breaker_cooldown_s)
