"""Where proof-of-hardware challenges live between their four steps, atomically per step.

A challenge moves offered → started → committed → used, each step once: a
step from the wrong state is FAILED_PRECONDITION and changes nothing. Per node
the store also keeps when it was last offered a challenge (the rate limit), the
id of its one open challenge (a new offer supersedes the old one: a later step
on it is NOT_FOUND) and its last proven speed (how the next challenge is
sized). The store stamps each step with its own clock, so on Redis every
replica measures with Redis's `TIME` and clock skew between replicas does not
enter a measurement.

`MemoryChallengeStore` serves one process; `RedisChallengeStore`
(`troop_coordinator.redis_challenges`) serves replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import NoReturn, Protocol

from troop_common.errors import FailedPrecondition, NotFound, PermissionDenied, RateLimited

OFFERED, STARTED, COMMITTED, USED = "offered", "started", "committed", "used"
# Steps: (from state, to state, the field stamped with the store's clock).
START = (OFFERED, STARTED, "started_at")
COMMIT = (STARTED, COMMITTED, "committed_at")
TAKE = (COMMITTED, USED, "")
_WRONG_STATE = {
    STARTED: "the challenge is already started",
    COMMITTED: "the challenge is already committed",
    USED: "the challenge is used up",
    OFFERED: "the challenge is not started",
}


@dataclass(frozen=True)
class Challenge:
    """One challenge as the store holds it (times in the store's clock, seconds)."""

    challenge_id: str
    node_id: str
    rows: int
    inner: int
    cols: int
    offered_at: float
    expires_at: float
    state: str = OFFERED
    seed: int = 0
    started_at: float = 0.0
    committed_at: float = 0.0
    merkle_root: bytes = b""
    precision: str = ""
    reported_ms: int = 0
    open_rows: tuple[int, ...] = ()
    open_cols: tuple[int, ...] = ()

    def to_fields(self) -> dict[str, str]:
        """The record as flat strings (a Redis hash)."""
        return {
            "challenge_id": self.challenge_id,
            "node_id": self.node_id,
            "rows": str(self.rows),
            "inner": str(self.inner),
            "cols": str(self.cols),
            "offered_at": repr(self.offered_at),
            "expires_at": repr(self.expires_at),
            "state": self.state,
            "seed": str(self.seed),
            "started_at": repr(self.started_at),
            "committed_at": repr(self.committed_at),
            "merkle_root": self.merkle_root.hex(),
            "precision": self.precision,
            "reported_ms": str(self.reported_ms),
            "open_rows": ",".join(map(str, self.open_rows)),
            "open_cols": ",".join(map(str, self.open_cols)),
        }

    @classmethod
    def from_fields(cls, f: Mapping[str, str]) -> Challenge:
        def ints(text: str) -> tuple[int, ...]:
            return tuple(int(x) for x in text.split(",")) if text else ()

        return cls(
            challenge_id=f["challenge_id"],
            node_id=f["node_id"],
            rows=int(f["rows"]),
            inner=int(f["inner"]),
            cols=int(f["cols"]),
            offered_at=float(f["offered_at"]),
            expires_at=float(f["expires_at"]),
            state=f.get("state", OFFERED),
            seed=int(f.get("seed") or 0),
            started_at=float(f.get("started_at") or 0),
            committed_at=float(f.get("committed_at") or 0),
            merkle_root=bytes.fromhex(f.get("merkle_root", "")),
            precision=f.get("precision", ""),
            reported_ms=int(f.get("reported_ms") or 0),
            open_rows=ints(f.get("open_rows", "")),
            open_cols=ints(f.get("open_cols", "")),
        )


def refuse(outcome: str, state: str = "") -> NoReturn:
    """Raise the error a failed step outcome stands for ("missing", "other", …)."""
    if outcome in ("missing", "superseded"):
        raise NotFound(
            "no such challenge, or it expired"
            if outcome == "missing"
            else "the challenge was superseded by a newer one"
        )
    if outcome == "other":
        raise PermissionDenied("the challenge was issued to another node")
    raise FailedPrecondition(_WRONG_STATE.get(state, f"the challenge is {state}"))


class ChallengeStore(Protocol):
    async def offer(self, challenge: Challenge, ttl_s: float, interval_s: float) -> Challenge:
        """Record a new challenge (its times stamped here) as the node's one open
        challenge; RateLimited if the node was offered one less than interval_s ago."""
        ...

    async def advance(
        self, challenge_id: str, node_id: str, step: tuple[str, str, str], **fields: object
    ) -> Challenge:
        """Move the challenge one step (START, COMMIT, TAKE), setting `fields`, atomically;
        NotFound / PermissionDenied / FailedPrecondition otherwise."""
        ...

    async def peek(self, challenge_id: str) -> Challenge | None:
        """The challenge as it stands, or None (no step taken)."""
        ...

    async def last_speed(self, node_id: str) -> float | None:
        """The node's last proven speed in TFLOP/s, or None."""
        ...

    async def record_speed(self, node_id: str, tflops: float) -> None: ...


@dataclass
class _NodeState:
    last_offer: float = float("-inf")
    open_id: str = ""
    speed: float | None = None


@dataclass
class MemoryChallengeStore:
    """The in-process store: dicts; every step runs without an await, hence atomically."""

    clock: Callable[[], float] = time.time
    _challenges: dict[str, Challenge] = field(default_factory=dict)
    _nodes: dict[str, _NodeState] = field(default_factory=dict)

    async def offer(self, challenge: Challenge, ttl_s: float, interval_s: float) -> Challenge:
        now = self.clock()
        self._challenges = {k: c for k, c in self._challenges.items() if c.expires_at >= now}
        node = self._nodes.setdefault(challenge.node_id, _NodeState())
        if now - node.last_offer < interval_s:
            raise RateLimited(
                "a new challenge is offered at most once per "
                f"{interval_s:g} s", interval_s - (now - node.last_offer)
            )  # fmt: skip
        node.last_offer, node.open_id = now, challenge.challenge_id
        stamped = replace(challenge, offered_at=now, expires_at=now + ttl_s, state=OFFERED)
        self._challenges[challenge.challenge_id] = stamped
        return stamped

    async def advance(
        self, challenge_id: str, node_id: str, step: tuple[str, str, str], **fields: object
    ) -> Challenge:
        now = self.clock()
        before, after, stamp = step
        found = self._challenges.get(challenge_id)
        if found is None or found.expires_at < now:
            refuse("missing")
        if found.node_id != node_id:
            refuse("other")
        if self._nodes[node_id].open_id != challenge_id:
            refuse("superseded")
        if found.state != before:
            refuse("state", found.state)
        changes: dict[str, object] = {**fields, "state": after}
        if stamp:
            changes[stamp] = now
        moved = replace(found, **changes)  # type: ignore[arg-type]
        self._challenges[challenge_id] = moved
        return moved

    async def peek(self, challenge_id: str) -> Challenge | None:
        return self._challenges.get(challenge_id)

    async def last_speed(self, node_id: str) -> float | None:
        node = self._nodes.get(node_id)
        return None if node is None else node.speed

    async def record_speed(self, node_id: str, tflops: float) -> None:
        self._nodes.setdefault(node_id, _NodeState()).speed = tflops
