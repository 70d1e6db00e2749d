"""Security events, limited per source address before they reach the audit table.

Every refused identity (a garbage bearer token, a bad signature) is a security
event, and the coordinator keeps those in an append-only, hash-chained table.
Unlimited, anyone could grow that table by thousands of rows a second for free.
So, per fixed window (a minute by default), at most `per_source` events from one
address and `total` from all addresses together are stored as they are; the rest
are counted, and when the window ends one summary row per address says
"suppressed K security events from ADDR" (for at most `max_summaries` addresses;
one more row counts the events of every other address). Under any flood the table
grows by at most `SecurityEventLimits.rows_per_window` rows per window.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SUPPRESSED_ACTION = "SecurityEventsSuppressed"


@dataclass(frozen=True)
class SecurityEventLimits:
    """How many security events one window stores as they are."""

    per_source: int = 10
    total: int = 100
    window_s: float = 60.0
    max_summaries: int = 20

    @property
    def rows_per_window(self) -> int:
        """The most rows one window can add: the events let through, then the summaries."""
        return self.total + self.max_summaries + 1


def _summary(source: str, count: int, started: float, window_s: float) -> dict[str, Any]:
    what = source or "other addresses"
    return {
        "action": SUPPRESSED_ACTION,
        "method": "",
        "outcome": "SUPPRESSED",
        "peer_ip": source,
        "principal": "",
        "suppressed": count,
        "window_start": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "window_s": window_s,
        "reason": f"suppressed {count} security events from {what}",
    }


class SecurityEventThrottle:
    """`admit(event)` → the events to store now; `flush()` → the window's summaries."""

    def __init__(self, limits: SecurityEventLimits, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self._clock = clock
        self._window_start = clock()
        self._admitted: Counter[str] = Counter()
        self._suppressed: Counter[str] = Counter()  # at most max_summaries addresses
        self._let_through = 0
        self._others = 0

    @property
    def suppressing(self) -> bool:
        """Whether this window has suppressed anything (a summary is owed)."""
        return bool(self._suppressed) or self._others > 0

    def window_left_s(self) -> float:
        return max(0.0, self._window_start + self.limits.window_s - self._clock())

    def admit(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        out = self.flush() if self.window_left_s() <= 0 else []
        source = str(event.get("peer_ip") or "unknown")
        if (
            self._admitted[source] < self.limits.per_source
            and self._let_through < self.limits.total
        ):
            self._admitted[source] += 1
            self._let_through += 1
            out.append(event)
        elif source in self._suppressed or len(self._suppressed) < self.limits.max_summaries:
            self._suppressed[source] += 1
        else:
            self._others += 1
        return out

    def flush(self) -> list[dict[str, Any]]:
        """The summaries of the window so far, and a fresh window."""
        started, window = self._window_start, self.limits.window_s
        out = [_summary(s, n, started, window) for s, n in self._suppressed.items()]
        if self._others:
            out.append(_summary("", self._others, started, window))
        self._window_start = self._clock()
        self._admitted.clear()
        self._suppressed.clear()
        self._let_through = self._others = 0
        return out
