"""The client's countersignatures (ReportUsage): sent off the hot path, and never lost.

Every job the client presented a ticket for is countersigned with the completion tokens it
can vouch it received (troop_client.chat.vouched_tokens). A report queues and goes once no
answer is waiting for its first chunk (troop_common.background); several go at once when
several are ready. With an `outbox` directory (the SDK built from settings keeps one per
identity under the config dir) each report is written to disk first and removed only once the
coordinator answered for it, so a coordinator outage, or the client stopping meanwhile, delays
it instead of losing it: it is tried again with backoff (1, 2, 4 … 60 s, with jitter) and sent
at the next start (`resume`). A report older than `max_age_s` no longer matters (the job
settled on the node's receipt alone long before) and is dropped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from troop_client.settings import ClientSettings
from troop_common.background import BackgroundSender, HotPath
from troop_common.coordinator_client import CoordinatorClient
from troop_common.errors import TroopError, Unavailable
from troop_common.keys import Identity
from troop_common.outbox import Outbox

log = logging.getLogger("troop.client.reports")

# The countersign window (60 s) and the settle grace (300 s) are long past by then.
MAX_AGE_S = 3600.0


def reports_outbox(settings: ClientSettings, identity: Identity) -> Path:
    """Where `identity`'s countersignatures wait: one directory per key in the config dir."""
    return settings.config_dir / "reports-outbox" / identity.public_key_hex[:16]


@dataclass(frozen=True)
class Report:
    """One countersignature, as kept in the outbox."""

    job_id: str
    completion_tokens: int
    stream_ms: int
    made_at: float  # unix seconds

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def parse(cls, data: bytes) -> Report:
        """From the outbox's bytes; ValueError if they are not a report."""
        try:
            fields = json.loads(data)
            report = cls(**fields)
        except (TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a usage report: {exc}") from exc
        if not (
            isinstance(report.job_id, str)
            and isinstance(report.completion_tokens, int)
            and isinstance(report.stream_ms, int)
            and isinstance(report.made_at, int | float)
        ):
            raise ValueError("a usage report with fields of the wrong types")
        return report


class UsageReports:
    """`submit` returns at once; `resume` queues what an earlier run left; `close` sends what
    it can before the client stops (the outbox keeps the rest)."""

    def __init__(
        self,
        coordinator: CoordinatorClient,
        *,
        outbox: Path | None = None,
        backoff_s: float = 1.0,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        self._coordinator = coordinator
        self._max_age_s = max_age_s
        self.outbox = Outbox(outbox) if outbox is not None else None
        self._resumed = False
        self._sender: BackgroundSender[Report] = BackgroundSender(
            self._send,
            name="usage reports",
            retries=None if self.outbox is not None else 0,
            backoff_s=backoff_s,
            describe=lambda report: f"the usage report for job {report.job_id}",
            durable=self.outbox is not None,
        )

    @property
    def hot(self) -> HotPath:
        """The answers still before their first chunk: reports wait for them."""
        return self._sender.hot

    @property
    def pending(self) -> int:
        return self._sender.pending

    def submit(self, job_id: str, completion_tokens: int, stream_ms: int) -> None:
        self.resume()
        report = Report(job_id, completion_tokens, stream_ms, time.time())
        if self.outbox is not None:
            self.outbox.put(job_id, report.to_bytes())
        self._sender.submit(report)

    def resume(self) -> int:
        """Queue (once) the reports an earlier run left in the outbox; how many."""
        if self._resumed or self.outbox is None:
            return 0
        self._resumed = True
        kept = self.outbox.load(Report.parse)
        for report in kept:
            self._sender.submit(report)
        if kept:
            log.info("%d usage report(s) left by an earlier run queued", len(kept))
        return len(kept)

    def _done(self, report: Report) -> None:
        if self.outbox is not None:
            self.outbox.remove(report.job_id)

    async def _send(self, report: Report) -> None:
        if time.time() - report.made_at > self._max_age_s:
            log.warning("the usage report for job %s is too old to matter: dropped", report.job_id)
            self._done(report)
            return
        try:
            await self._coordinator.report_usage(
                report.job_id, report.completion_tokens, report.stream_ms
            )
        except Unavailable:
            raise  # with an outbox: tried again later, kept on disk meanwhile
        except TroopError as exc:  # an answer: sending it again would get the same one
            log.warning("usage report for job %s not accepted: %s", report.job_id, exc)
        self._done(report)

    async def drain(self, timeout_s: float) -> None:
        await self._sender.drain(timeout_s)

    async def close(self, timeout_s: float) -> None:
        await self._sender.close(timeout_s)
