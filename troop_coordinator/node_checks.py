"""A node's verification record as discovery and routing read it (docs/adr/0053).

Plain values, no database: the row's columns (`troop_coordinator.repositories.nodes`)
become a `NodeChecks` on the node's standing, and from there on the `LiveNode` the
registry ranks, so Authorize filters on it without a query. Times are unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A failed check multiplies the node's reputation, as routing ranks it, by this at
# first; the penalty fades linearly to nothing over the hold (`reputation_factor`).
VERDICT_FACTOR = 0.5


@dataclass(frozen=True)
class NodeChecks:
    checks_passed: int = 0
    checks_failed: int = 0
    last_checked: float | None = None
    # Until when a failed check holds the node's earnings (None: never failed).
    held_until: float | None = None
    # (model, until when it is not routed to the node), for each model it failed.
    failed_models: tuple[tuple[str, float], ...] = ()
    barred: bool = False

    @property
    def version(self) -> int:
        """Grows with every verdict: of two records of one node, the later one."""
        return self.checks_passed + self.checks_failed

    def held(self, now: float) -> bool:
        return self.held_until is not None and self.held_until > now

    def failed(self, now: float) -> list[str]:
        """The models not routed to the node at `now` (unless pinned)."""
        return sorted(model for model, until in self.failed_models if until > now)

    def blocks(self, model: str, now: float) -> bool:
        """Whether Authorize, choosing a node itself, skips this one for `model`."""
        return self.barred or model in self.failed(now)

    def reputation_factor(self, now: float, hold_s: float) -> float:
        """What a failed check leaves of the node's reputation at `now`: VERDICT_FACTOR
        right after it, back to 1.0 linearly by the end of its hold (a later failure
        starts it again)."""
        if not self.held(now) or hold_s <= 0:
            return 1.0
        assert self.held_until is not None
        remaining = min(1.0, (self.held_until - now) / hold_s)
        return 1.0 - (1.0 - VERDICT_FACTOR) * remaining

    def to_json(self) -> dict[str, Any]:
        return {
            "checks_passed": self.checks_passed,
            "checks_failed": self.checks_failed,
            "last_checked": self.last_checked,
            "held_until": self.held_until,
            "failed_models": [list(pair) for pair in self.failed_models],
            "barred": self.barred,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> NodeChecks:
        if not data:
            return cls()
        return cls(
            checks_passed=int(data.get("checks_passed", 0)),
            checks_failed=int(data.get("checks_failed", 0)),
            last_checked=data.get("last_checked"),
            held_until=data.get("held_until"),
            failed_models=tuple((str(m), float(u)) for m, u in data.get("failed_models", ())),
            barred=bool(data.get("barred", False)),
        )
