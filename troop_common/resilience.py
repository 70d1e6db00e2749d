"""Retries with backoff and a circuit breaker, for calls to another Troop component.

The defaults: 3 retries after 1 s, 2 s and 4 s (±20 % jitter), only
for idempotent calls and only on transport failures — never on an answer, and
never for a call that spends (Authorize). What is a transport failure the error
says itself (`TroopError.transient`, rebuilt exactly from the wire's ErrorInfo):
Unavailable and Unreachable are; a refusal, "no node serves this model"
(NodeUnavailable) and a rate limit (RateLimited, which names its own wait) are not.
The breaker opens after 5 transport failures in a row and fails calls at once
for 60 s; then one trial call decides whether it closes again. An answer, any
answer, shows the server is up: it resets the count.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from troop_common.errors import TroopError, Unavailable


def is_transient(error: TroopError) -> bool:
    """A failure of the transport, not a decision: worth another try later."""
    return error.transient


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    base_delay_s: float = 1.0
    jitter: float = 0.2

    def delays(self) -> Iterator[float]:
        for attempt in range(self.retries):
            spread = random.uniform(1 - self.jitter, 1 + self.jitter)
            yield self.base_delay_s * 2**attempt * spread


NO_RETRY = RetryPolicy(retries=0)


class CircuitBreaker:
    """Closed → open after `threshold` transport failures in a row → half-open after
    `cooldown_s` (one trial call) → closed on its success, open again on its failure."""

    def __init__(
        self,
        name: str,
        threshold: int = 5,
        cooldown_s: float = 60.0,
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
