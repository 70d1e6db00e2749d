"""judge(): honest-like scores pass, cheat-like scores fail, short jobs decide nothing."""

from __future__ import annotations

import random

import pytest

from troop_common.evidence import TokenEvidence
from troop_verifier.judging import Outcome, Thresholds, judge
from troop_verifier.scoring import PositionScore

Job = tuple[list[PositionScore], list[TokenEvidence]]


def job(
    trusted: list[float],
    node: list[float],
    *,
    ranks: list[int] | None = None,
    tops: list[float] | None = None,
) -> Job:
    """Scores with these trusted logprobs (and ranks, tops) for tokens with these node ones."""
    ranks = ranks or [0] * len(trusted)
    tops = tops or [t if r == 0 else -0.1 for t, r in zip(trusted, ranks, strict=True)]
    rows = zip(trusted, tops, ranks, strict=True)
    scores = [PositionScore(n, t, top, r) for n, (t, top, r) in enumerate(rows)]
    tokens = [TokenEvidence(b"x", lp, n) for n, lp in enumerate(node)]
    return scores, tokens


def honest(count: int, seed: int, noise: float = 0.05) -> Job:
    rng = random.Random(seed)
    trusted = [-rng.expovariate(1.5) for _ in range(count)]
    node = [min(0.0, t + rng.gauss(0, noise) * (1 + abs(t) / 4)) for t in trusted]
    return job(trusted, node)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_honest_noise_passes(temperature: float) -> None:
    for seed in range(50):
        scores, tokens = honest(48, seed)
        finding = judge(scores, tokens, temperature)
        assert finding.outcome == Outcome.PASSED, finding
        assert finding.positions_checked == 48


def test_another_models_logprobs_fail() -> None:
    rng = random.Random(1)
    trusted = [-rng.expovariate(1.5) for _ in range(40)]
    node = [min(0.0, t + rng.gauss(0, 1.0)) for t in trusted]
    finding = judge(*job(trusted, node), 0.8)
    assert finding.outcome == Outcome.FAILED
    assert finding.positions_failed >= 3
    assert "positions off" in finding.reason


def test_a_systematic_small_shift_fails_on_the_mean() -> None:
    trusted = [-0.5] * 40
    node = [-0.5 + 0.4 if n % 2 else -0.5 - 0.4 for n in range(40)]  # each within tolerance
    finding = judge(*job(trusted, node), 0.0, Thresholds(mean_deviation=0.25))
    assert finding.outcome == Outcome.FAILED
    assert finding.positions_failed == 0
    assert "mean deviation" in finding.reason


def test_tokens_the_trusted_model_finds_implausible_fail_even_with_matching_logprobs() -> None:
    # A node that copies plausible-looking logprobs but emits tokens far down the ranking.
    trusted = [-25.0] * 10 + [-0.2] * 30
    finding = judge(*job(trusted, trusted, ranks=[30000] * 10 + [0] * 30), 0.8)
    assert finding.outcome == Outcome.FAILED
    assert finding.positions_failed == 10


def test_greedy_tokens_must_be_near_the_trusted_top() -> None:
    trusted = [-5.0] * 10 + [-0.1] * 30
    tops = [-0.2] * 10 + [-0.1] * 30
    scores, tokens = job(trusted, trusted, ranks=[1] * 10 + [0] * 30, tops=tops)
    assert judge(scores, tokens, 0.0).outcome == Outcome.FAILED
    assert judge(scores, tokens, 0.8).outcome == Outcome.PASSED  # sampled: rank 1 is fine


def test_a_near_tie_in_greedy_decoding_passes() -> None:
    # bf16 may pick the runner-up of a near tie; llama.cpp's repeat penalty, a token ~3 nats
    # below the top.
    trusted, tops = [-3.0] * 40, [-0.1] * 40
    scores, tokens = job(trusted, trusted, ranks=[1] * 40, tops=tops)
    assert judge(scores, tokens, 0.0).outcome == Outcome.PASSED


def test_too_few_positions_decide_nothing() -> None:
    trusted = [-0.1] * 5
    finding = judge(*job(trusted, [-5.0] * 5), 0.0)
    assert finding.outcome == Outcome.INCONCLUSIVE


def test_unknown_tokens_beyond_a_quarter_fail() -> None:
    scores, tokens = honest(40, 3)
    scores[:11] = [PositionScore(None, None, None, None)] * 11
    finding = judge(scores, tokens, 0.0)
    assert finding.outcome == Outcome.FAILED
    assert "vocabulary" in finding.reason
    scores, tokens = honest(40, 3)
    scores[:2] = [PositionScore(None, None, None, None)] * 2
    assert judge(scores, tokens, 0.0).outcome == Outcome.PASSED


def test_the_tolerance_grows_with_the_logprob() -> None:
    thresholds = Thresholds()
    assert thresholds.tolerance(-10.0) > thresholds.tolerance(-0.1) >= thresholds.absolute


def test_scores_and_tokens_must_pair_up() -> None:
    scores, tokens = honest(10, 0)
    with pytest.raises(ValueError):
        judge(scores[:-1], tokens, 0.0)
