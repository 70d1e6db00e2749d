"""Proof-of-hardware challenges: issue seeded ones, check answers once.

Challenges live in memory for `ttl_s` (a Redis store slots in for replicas)
and are consumed by their first answer, right or wrong, so a node cannot
retry one challenge until a guess lands. The check regenerates the matrices
(O(n²) memory, ~0.4 s at n = 4096), so it runs in a thread.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from troop_common import hardware_proof
from troop_common.errors import FailedPrecondition, NotFound, PermissionDenied


@dataclass(frozen=True)
class Challenge:
    challenge_id: str
    node_id: str
    seed: int
    matrix_size: int
    sample_indices: tuple[int, ...]
    expires_at: float


class ChallengeBook:
    def __init__(self, *, matrix_size: int, reference_ms: float, ttl_s: float) -> None:
        self.matrix_size = matrix_size
        self.reference_ms = reference_ms
        self.ttl_s = ttl_s
        self._open: dict[str, Challenge] = {}
        # Each check holds two n×n float32 matrices (128 MiB at 4096): bound how many at once.
        self._checking = asyncio.Semaphore(2)

    def issue(self, node_id: str, now: float | None = None) -> Challenge:
        now = time.time() if now is None else now
        self._open = {k: c for k, c in self._open.items() if c.expires_at >= now}
        seed = secrets.randbits(63)
        rng = np.random.default_rng(secrets.randbits(63))
        challenge = Challenge(
            challenge_id=secrets.token_urlsafe(16),
            node_id=node_id,
            seed=seed,
            matrix_size=self.matrix_size,
            sample_indices=tuple(hardware_proof.choose_sample_indices(rng, self.matrix_size)),
            expires_at=now + self.ttl_s,
        )
        self._open[challenge.challenge_id] = challenge
        return challenge

    async def verify(
        self,
        *,
        challenge_id: str,
        node_id: str,
        samples: Sequence[float],
        elapsed_ms: int,
        now: float | None = None,
    ) -> float:
        """The node's multiplier if the answer is right; NotFound / PermissionDenied /
        FailedPrecondition otherwise. The challenge is used up either way."""
        now = time.time() if now is None else now
        challenge = self._open.get(challenge_id)
        if challenge is None or challenge.expires_at < now:
            self._open.pop(challenge_id, None)
            raise NotFound("no such challenge, or it expired")
        if challenge.node_id != node_id:
            raise PermissionDenied("the challenge was issued to another node")
        del self._open[challenge_id]
        async with self._checking:
            right = await asyncio.to_thread(
                hardware_proof.check_samples,
                challenge.seed,
                challenge.matrix_size,
                challenge.sample_indices,
                list(samples),
            )
        if not right:
            raise FailedPrecondition("the proof does not match the challenge's product")
        return hardware_proof.multiplier_for(elapsed_ms, challenge.matrix_size, self.reference_ms)
