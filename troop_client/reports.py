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
from troop_common.coordinator_client import CoordinatorClient
from troop_common.keys import Identity
from troop_common.outbox import DurableSender

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


class UsageReports(DurableSender[Report]):
    """`submit` returns at once; `resume` queues what an earlier run left; `close` sends what
    it can before the client stops (the outbox keeps the rest)."""

    name = "usage reports"

    def __init__(
        self,
        coordinator: CoordinatorClient,
        *,
        outbox: Path | None = None,
        backoff_s: float = 1.0,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        # Without an outbox a report is tried once: the client cannot keep it anyway.
        super().__init__(
            outbox=outbox, max_age_s=max_age_s, backoff_s=backoff_s, retries=0, log=log
        )
        self._coordinator = coordinator
        self._resumed = False

    def submit(self, job_id: str, completion_tokens: int, stream_ms: int) -> None:
        self.resume()
        self.queue(Report(job_id, completion_tokens, stream_ms, time.time()))

    def resume(self) -> int:
        """Queue (once) the reports an earlier run left in the outbox; how many."""
        if self._resumed:
            return 0
        self._resumed = True
        return super().resume()

    def key(self, message: Report) -> str:
        return message.job_id

    def encode(self, message: Report) -> bytes:
        return message.to_bytes()

    def parse(self, data: bytes) -> Report:
        return Report.parse(data)

    def made_at(self, message: Report) -> float:
        return message.made_at

    def describe(self, message: Report) -> str:
        return f"the usage report for job {message.job_id}"

    async def deliver(self, message: Report) -> None:
        await self._coordinator.report_usage(
            message.job_id, message.completion_tokens, message.stream_ms
        )
