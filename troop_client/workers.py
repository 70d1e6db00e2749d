"""The client's links to workers: one channel per endpoint and mode, one breaker per endpoint.

A channel is kept for the next job (no handshake per job) and gives up connecting after
`TROOP_CONNECT_TIMEOUT_SECONDS`. While an answer streams, the client pings its worker every
`TROOP_KEEPALIVE_SECONDS`: a worker whose link was cut (no reset, no close, nothing) fails the
stream once a ping goes unanswered as long again, and the answer resumes elsewhere
(ADR 55). A breaker counts an endpoint's transport failures in a
row (unreachable, connection broken, deadline passed; never a refusal, which is an
answer); once open (`TROOP_BREAKER_FAILURES`), a grant for that endpoint is skipped
before dialling, like an unreachable node, until the cooldown's trial call
(troop_common.resilience, ADR 49).
"""

from __future__ import annotations

import grpc

from troop_common.resilience import CircuitBreaker, ResilienceSettings
from troop_common.tls import TlsSettings


class WorkerLinks:
    """`channel(endpoint, tls)` and `breaker(endpoint)`; `close()` closes every channel."""

    def __init__(self, tls: TlsSettings, resilience: ResilienceSettings) -> None:
        self._tls = tls
        self._resilience = resilience
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._breakers: dict[str, CircuitBreaker] = {}

    def channel(self, endpoint: str, tls: bool) -> grpc.aio.Channel:
        """TLS exactly when the grant says the worker serves it; a plaintext worker off
        loopback is refused (FailedPrecondition, before the ticket is sent) unless
        plaintext was allowed (TlsSettings.insecure)."""
        key = f"{endpoint}|{tls}"
        channel = self._channels.get(key)
        if channel is None:
            channel = self._tls.dial(
                endpoint,
                tls,
                self._resilience.connect_timeout_s,
                keepalive_s=self._resilience.keepalive_s,
            )
            self._channels[key] = channel
        return channel

    def breaker(self, endpoint: str) -> CircuitBreaker:
        breaker = self._breakers.get(endpoint)
        if breaker is None:
            breaker = self._resilience.breaker(f"the node at {endpoint}")
            self._breakers[endpoint] = breaker
        return breaker

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
