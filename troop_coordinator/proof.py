"""Proof-of-hardware challenges, the coordinator's policy: size, time, open, check.

    offer   (GetChallenge)    shape (rows, inner, cols); no seed. inner is sized from the
                              node's last proven speed to last ~target_s (calibration
                              size the first time), clamped to [min_inner, max_inner].
    start   (StartChallenge)  a fresh 64-bit seed; the clock starts.
    commit  (CommitProof)     the clock stops; only now are OPENED_ROWS rows (distinct)
                              and one column each drawn with `secrets`.
    verify  (VerifyProof)     the challenge is used up, then the openings are checked
                              (`troop_common.proof_check`) in a thread, at most two at once.

Measured time = raw − min(started_at − offered_at, rtt_cap_s, raw × RTT_SHARE_CAP)
with raw = committed_at − started_at, floored at 1 ms: the time between offering
and the start request is one round trip, which the worker's compute window also
contains; a node that delays its start request to inflate it gains at most
`rtt_cap_s` (100 ms), and never more than a tenth of its time (so at most ~11%
speed, however short the run). The node's
`reported_ms` is kept for display only. State lives in a `ChallengeStore`
(in-process, or Redis for replicas) with every step atomic there.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from troop_common.config import ConfigError
from troop_common.errors import FailedPrecondition
from troop_common.hardware_proof import (
    OPENED_ROWS,
    flops,
    multiplier_for,
    reference_tflops,
    tflops_for,
    tier_for,
)
from troop_common.proof_check import Commitment, Opening, check_openings
from troop_coordinator.challenge_store import COMMIT, START, TAKE, Challenge, ChallengeStore

log = logging.getLogger("troop.coordinator.proof")

RTT_CAP_S = 0.1
# The round trip subtracted is at most this share of the measured time.
RTT_SHARE_CAP = 0.1
MAX_DIMENSION = 16384  # 48 opened rows of cols float32 must fit one 4 MiB gRPC message
CONCURRENT_CHECKS = 2


@dataclass(frozen=True)
class ProofShape:
    """The sizing policy (settings TROOP_PROOF_*)."""

    rows: int = 2048
    cols: int = 2048
    calibration_inner: int = 2048
    min_inner: int = 1024
    max_inner: int = 1 << 20
    target_s: float = 2.0

    def __post_init__(self) -> None:
        if not (0 < self.rows <= MAX_DIMENSION and 0 < self.cols <= MAX_DIMENSION):
            raise ConfigError(f"TROOP_PROOF_ROWS/COLS must be in 1-{MAX_DIMENSION}")
        if not 0 < self.min_inner <= self.max_inner or self.target_s <= 0:
            raise ConfigError("TROOP_PROOF_MIN_INNER must be in 1-TROOP_PROOF_MAX_INNER")

    def inner_for(self, tflops: float | None) -> int:
        """The inner size that lasts ~target_s at `tflops` (calibration size if unknown)."""
        if tflops is None or tflops <= 0:
            wanted = self.calibration_inner
        else:
            wanted = round(self.target_s * tflops * 1e12 / flops(self.rows, 1, self.cols))
        return min(self.max_inner, max(self.min_inner, wanted))


@dataclass(frozen=True)
class ProofResult:
    multiplier: float
    tflops: float
    tier: str
    measured_ms: int
    reported_ms: int


def measured_ms(challenge: Challenge, rtt_cap_s: float = RTT_CAP_S) -> float:
    """The coordinator's own timing of a committed challenge, round trip subtracted."""
    raw = challenge.committed_at - challenge.started_at
    rtt = min(max(0.0, challenge.started_at - challenge.offered_at), rtt_cap_s)
    return max(1.0, (raw - min(rtt, raw * RTT_SHARE_CAP)) * 1000)


class ChallengeBook:
    def __init__(
        self,
        store: ChallengeStore,
        *,
        shape: ProofShape,
        reference_ms: float,
        ttl_s: float,
        interval_s: float,
        rtt_cap_s: float = RTT_CAP_S,
    ) -> None:
        self.store = store
        self.shape = shape
        self.reference = reference_tflops(reference_ms)
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self.rtt_cap_s = rtt_cap_s
        self._checking = asyncio.Semaphore(CONCURRENT_CHECKS)

    async def offer(self, node_id: str) -> Challenge:
        """A new challenge for the node (RateLimited if it asked too recently)."""
        inner = self.shape.inner_for(await self.store.last_speed(node_id))
        challenge = Challenge(
            challenge_id=secrets.token_urlsafe(16),
            node_id=node_id,
            rows=self.shape.rows,
            inner=inner,
            cols=self.shape.cols,
            offered_at=0.0,
            expires_at=0.0,
        )
        return await self.store.offer(challenge, self.ttl_s, self.interval_s)

    async def start(self, node_id: str, challenge_id: str) -> int:
        """The seed; the clock starts."""
        seed = secrets.randbits(64)
        await self.store.advance(challenge_id, node_id, START, seed=seed)
        return seed

    async def commit(
        self, node_id: str, challenge_id: str, root: bytes, precision: str, reported_ms: int
    ) -> Challenge:
        """The clock stops; the returned challenge names the rows and columns to open."""
        found = await self.store.peek(challenge_id)
        rows, cols = (found.rows, found.cols) if found else (self.shape.rows, self.shape.cols)
        draw = secrets.SystemRandom()
        open_rows = tuple(draw.sample(range(rows), min(OPENED_ROWS, rows)))
        open_cols = tuple(draw.randrange(cols) for _ in open_rows)
        return await self.store.advance(
            challenge_id,
            node_id,
            COMMIT,
            merkle_root=root,
            precision=precision,
            reported_ms=reported_ms,
            open_rows=open_rows,
            open_cols=open_cols,
        )

    async def peek(self, challenge_id: str) -> Challenge | None:
        return await self.store.peek(challenge_id)

    async def verify(
        self, node_id: str, challenge_id: str, openings: Sequence[Opening]
    ) -> ProofResult:
        """Use the challenge up, then check it; FailedPrecondition names the first fault."""
        c = await self.store.advance(challenge_id, node_id, TAKE)
        commitment = Commitment(
            c.seed, c.rows, c.inner, c.cols, c.merkle_root, c.precision, c.open_rows, c.open_cols
        )
        async with self._checking:
            fault = await asyncio.to_thread(check_openings, commitment, list(openings))
        if fault is not None:
            raise FailedPrecondition(f"the proof does not hold: {fault}")
        ms = measured_ms(c, self.rtt_cap_s)
        tflops = tflops_for(c.rows, c.inner, c.cols, ms)
        await self.store.record_speed(node_id, tflops)
        log.info(
            "node %s proved %.4f TFLOP/s: %d×%d×%d in %.0f ms measured (%d ms reported)",
            node_id, tflops, c.rows, c.inner, c.cols, ms, c.reported_ms,
        )  # fmt: skip
        return ProofResult(
            multiplier=multiplier_for(tflops, self.reference),
            tflops=tflops,
            tier=tier_for(tflops),
            measured_ms=round(ms),
            reported_ms=c.reported_ms,
        )
