"""Rate limits per method, per client IP or per authenticated caller.

Rules are written once, e.g. the coordinator's default
`ListNodes+ListModels=100/3600@ip,Authorize=20/3600@user`: methods joined by
`+` share one bucket; `@ip` counts per peer address, `@user` per verified
caller (falling back to the IP before authentication). The IP is the peer's,
or, from a trusted proxy only (the local Envoy), the right-most `x-forwarded-for`
entry, the one that proxy wrote. Methods without a
rule, health and reflection are never limited. The limiter decides (GCRA, in
Redis across replicas); a refusal raises RateLimited, which the error
interceptor turns into RESOURCE_EXHAUSTED with RetryInfo and `retry-after`.
If the limiter's store is down, calls are allowed (limits degrade, service
does not) and the failure is logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import grpc

from troop_common import request_context
from troop_common.config import ConfigError
from troop_common.errors import RateLimited
from troop_common.interceptors.wrapping import CheckingInterceptor, is_exempt, metadata_value
from troop_common.metrics import Metrics
from troop_common.ratelimit import RateLimiter, TrustedProxies

log = logging.getLogger("troop.ratelimit")

_RULE = re.compile(r"^\s*([A-Za-z+]+)\s*=\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*@\s*(ip|user)\s*$")


@dataclass(frozen=True)
class Rule:
    bucket: str
    limit: int
    period_s: float
    per: str  # "ip" or "user"


def parse_rules(text: str) -> dict[str, Rule]:
    """'A+B=100/3600@ip,C=20/3600@user' → {method name: Rule}; ValueError if malformed."""
    rules: dict[str, Rule] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _RULE.match(part)
        if not match:
            raise ConfigError(
                f"bad rate-limit rule {part!r}: expected METHOD[+METHOD]=N/SECONDS@ip|user"
            )
        names, limit, period, per = match.groups()
        if int(limit) < 1:
            raise ConfigError(f"bad rate-limit rule {part!r}: the limit must be at least 1")
        for name in names.split("+"):
            rules[name] = Rule(bucket=names, limit=int(limit), period_s=float(period), per=per)
    return rules


def client_ip(context: grpc.aio.ServicerContext, trusted: TrustedProxies) -> str:
    """The calling client's IP: the peer, or what a trusted proxy put last in XFF."""
    info = request_context.current.get()
    peer = request_context.peer_ip(info.peer if info else (context.peer() or ""))
    return trusted.client_ip(peer, metadata_value(context, "x-forwarded-for"))


class RateLimitInterceptor(CheckingInterceptor):
    def __init__(
        self,
        limiter: RateLimiter,
        rules: Mapping[str, Rule],
        service: str,
        *,
        trusted_proxies: Collection[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self._limiter = limiter
        self._refusals = (metrics or Metrics("unnamed")).counter(
            "troop_rate_limit_refusals", "calls refused by a rate limit", "bucket"
        )
        self._rules = {f"/{service}/{name}": rule for name, rule in rules.items()}
        self._trusted = TrustedProxies(trusted_proxies)

    def _client_ip(self, context: grpc.aio.ServicerContext) -> str:
        """The peer's IP; behind a trusted proxy (the local Envoy), the address it saw."""
        return client_ip(context, self._trusted)

    async def check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        rule = self._rules[method]
        info = request_context.current.get()
        peer = self._client_ip(context)
        who = info.principal if (rule.per == "user" and info and info.principal) else f"ip:{peer}"
        try:
            decision = await self._limiter.acquire(
                f"{rule.bucket}:{who}", rule.limit, rule.period_s
            )
        except Exception:  # the store is down: limits degrade, service does not
            log.warning("rate limiter unavailable; allowing %s", rule.bucket, exc_info=True)
            return
        if not decision.allowed:
            self._refusals.labels(rule.bucket).inc()
            per = "hour" if rule.period_s == 3600 else f"{rule.period_s:g} s"
            raise RateLimited(
                f"rate limit: {rule.limit} {rule.bucket} calls per {per}; "
                f"retry in {decision.retry_after_s:.0f} s",
                decision.retry_after_s,
            )

    def covers(self, method: str) -> bool:
        return method in self._rules and not is_exempt(method)
