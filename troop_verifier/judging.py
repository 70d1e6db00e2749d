"""Judging a node's tokens against the trusted model's scores: pure functions.

Per position (docs/adr/0052 has the measurements behind every default):

- deviation: |node logprob - trusted logprob| beyond `absolute + relative * |trusted|`.
  The tolerance grows with |logprob| because a rare token's log-probability carries a
  larger error under bf16 or 4-bit kernels than a likely one's;
- implausible token: the trusted log-probability below `floor`; for a sampled job, more
  than `max_rank` tokens the trusted model prefers; for a greedy job (temperature 0),
  the token more than `greedy_margin` nats below the trusted model's first choice.

A job FAILS when its failing positions reach `fail_count` and `fail_fraction` of the
positions checked, or when the mean deviation over the job exceeds `mean_deviation`
(a systematic shift: a different model whose every token is a little off). Fewer than
`min_positions` scored positions decide nothing (INCONCLUSIVE, no verdict is sent).
"""

from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from troop_common.evidence import TokenEvidence
from troop_verifier.scoring import PositionScore


class Outcome(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Thresholds:
    """What a position and a job may show before they fail (see the module)."""

    # Measured (docs/adr/0052, bench/verification.py): honest engines (transformers bf16,
    # llama.cpp on the Q4_1 GGUF) never came within 1.8x of a tolerance on any position,
    # nor within 3.5x of `mean_deviation` on any job; llama.cpp's greedy tokens (its default
    # repeat penalty) came to 2.7 nats below the trusted top.
    absolute: float = 1.0
    relative: float = 0.25
    floor: float = -20.0
    max_rank: int = 2000
    greedy_margin: float = 4.0
    fail_count: int = 3
    fail_fraction: float = 0.1
    mean_deviation: float = 0.25
    min_positions: int = 8
    # Positions whose bytes are no token of the vocabulary, beyond this fraction: FAILED.
    max_unknown_fraction: float = 0.25

    def tolerance(self, trusted_logprob: float) -> float:
        """The largest honest |node - trusted| deviation at this trusted log-probability."""
        return self.absolute + self.relative * abs(trusted_logprob)


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class Finding:
    outcome: Outcome
    positions_checked: int
    positions_failed: int
    reason: str = ""


def deviation(token: TokenEvidence, trusted_logprob: float) -> float:
    """|node - trusted| log-probability; infinite for a claim no model makes (NaN, an
    infinity, or above 0), which every comparison with a NaN would otherwise let pass."""
    if not math.isfinite(token.logprob) or token.logprob > 0:
        return math.inf
    return abs(token.logprob - trusted_logprob)


def position_failure(
    token: TokenEvidence, score: PositionScore, temperature: float, thresholds: Thresholds
) -> str:
    """Why this position fails ("" when it passes). The score must be known."""
    assert score.logprob is not None and score.top_logprob is not None and score.rank is not None
    if deviation(token, score.logprob) > thresholds.tolerance(score.logprob):
        return f"logprob {token.logprob:.2f} vs trusted {score.logprob:.2f}"
    if score.logprob < thresholds.floor:
        return f"trusted logprob {score.logprob:.1f} below {thresholds.floor}"
    if temperature <= 0 and score.top_logprob - score.logprob > thresholds.greedy_margin:
        return f"greedy token {score.top_logprob - score.logprob:.2f} nats below the top"
    if temperature > 0 and score.rank > thresholds.max_rank:
        return f"rank {score.rank} beyond {thresholds.max_rank}"
    return ""


def judge(
    scores: Sequence[PositionScore],
    tokens: Sequence[TokenEvidence],
    temperature: float,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Finding:
    """The verdict on one job's tokens, given their trusted scores (one per token)."""
    if len(scores) != len(tokens):
        raise ValueError(f"{len(scores)} scores for {len(tokens)} tokens")
    unknown = sum(score.logprob is None for score in scores)
    checked = len(scores) - unknown
    if scores and unknown > thresholds.max_unknown_fraction * len(scores):
        return Finding(
            Outcome.FAILED,
            checked,
            unknown,
            f"{unknown} of {len(scores)} tokens are not in the model's vocabulary",
        )
    failures: list[str] = []
    deviations: list[float] = []
    for token, score in zip(tokens, scores, strict=True):
        if score.logprob is None:
            continue
        deviations.append(deviation(token, score.logprob))
        why = position_failure(token, score, temperature, thresholds)
        if why:
            failures.append(why)
    if checked < thresholds.min_positions:
        return Finding(
            Outcome.INCONCLUSIVE,
            checked,
            len(failures),
            f"{checked} positions, fewer than {thresholds.min_positions}",
        )
    failed = len(failures)
    if failed >= thresholds.fail_count and failed >= thresholds.fail_fraction * checked:
        return Finding(
            Outcome.FAILED,
            checked,
            failed,
            f"{failed} of {checked} positions off, e.g. {failures[0]}"[:200],
        )
    mean = statistics.fmean(deviations)
    if mean > thresholds.mean_deviation:
        return Finding(
            Outcome.FAILED,
            checked,
            failed,
            f"mean deviation {mean:.3f} beyond {thresholds.mean_deviation}",
        )
    return Finding(Outcome.PASSED, checked, failed)
