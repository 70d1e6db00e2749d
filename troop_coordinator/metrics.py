"""The coordinator's own metrics: live nodes by model, and credits as the ledger moves them.

Credits are counted where the ledger service returns: `MeteredLedger` is the `Ledger`
with each money-moving call observed after it commits (reserve; a receipt, a
countersignature or a sweep that settles), in millicredits. A settlement the ledger
reports as `already_settled` (a repeated receipt) is not counted again.
Live nodes are asked of the node registry at each scrape, from the metrics endpoint's
thread, on the coordinator's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from troop_common.metrics import Metrics
from troop_coordinator.db.models import JobStatus
from troop_coordinator.ledger import Ledger
from troop_coordinator.ledger.types import ClientClaim, NewJob, NodeClaim, Settlement
from troop_coordinator.registry import NodeRegistry

log = logging.getLogger("troop.coordinator.metrics")
SCRAPE_TIMEOUT_S = 2.0


class CreditMetrics:
    """Millicredits reserved, charged, refunded (released back to the user), and disputes."""

    def __init__(self, metrics: Metrics) -> None:
        self.reserved = metrics.counter(
            "troop_credits_reserved_millicredits", "millicredits held at Authorize"
        ).labels()
        self.charged = metrics.counter(
            "troop_credits_charged_millicredits", "millicredits paid for settled jobs"
        ).labels()
        self.refunded = metrics.counter(
            "troop_credits_refunded_millicredits",
            "reserved millicredits returned to users at settlement or expiry",
        ).labels()
        self.disputed = metrics.counter(
            "troop_jobs_disputed", "jobs whose node and client disagreed beyond the slack"
        ).labels()

    def settled(self, settlement: Settlement) -> None:
        if settlement.already_settled:
            return
        if settlement.disputed:
            self.disputed.inc()
        if settlement.status != JobStatus.OPEN:
            self.charged.inc(settlement.charged_millicredits)
            self.refunded.inc(settlement.released_millicredits)


class MeteredLedger(Ledger):
    """The ledger, counting into `credits` what each call moved (set after construction)."""

    credits: CreditMetrics | None = None

    def _settled(self, settlements: list[Settlement]) -> None:
        if self.credits is not None:
            for settlement in settlements:
                self.credits.settled(settlement)

    async def reserve(self, job: NewJob, *, max_open_jobs: int | None = None) -> None:
        await super().reserve(job, max_open_jobs=max_open_jobs)
        if self.credits is not None:
            self.credits.reserved.inc(job.reserved_millicredits)

    async def record_receipt(self, claim: NodeClaim, now: datetime) -> Settlement:
        settlement = await super().record_receipt(claim, now)
        self._settled([settlement])
        return settlement

    async def record_countersignature(
        self, claim: ClientClaim, now: datetime
    ) -> tuple[Settlement, bool]:
        settlement, new = await super().record_countersignature(claim, now)
        self._settled([settlement])
        return settlement, new

    async def settle_overdue(self, now: datetime) -> list[Settlement]:
        settlements = await super().settle_overdue(now)
        self._settled(settlements)
        return settlements

    async def expire_stale(self, now: datetime) -> list[Settlement]:
        settlements = await super().expire_stale(now)
        self._settled(settlements)
        return settlements


class LiveNodes(Collector):
    """`troop_live_nodes{model=...}`: the registry's live nodes, asked on its event loop."""

    def __init__(self, registry: NodeRegistry, loop: asyncio.AbstractEventLoop) -> None:
        self._registry = registry
        self._loop = loop

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily(
            "troop_live_nodes", "nodes heard from within the TTL, by model", labels=["model"]
        )
        try:
            ask = self._registry.live_nodes(time.time())
            nodes = asyncio.run_coroutine_threadsafe(ask, self._loop).result(SCRAPE_TIMEOUT_S)
        except Exception:  # the loop is stopping, or Redis is away: no sample this scrape
            log.warning("live nodes unavailable for metrics", exc_info=True)
            yield family
            return
        for model, count in sorted(Counter(m for n in nodes for m in n.models).items()):
            family.add_metric([model], count)
        yield family
