"""TorchScorer against a direct forward pass: the same logprobs, ranks and ids, whether
the evidence names token ids (the built-in engine) or only bytes (a relayed upstream)."""

from __future__ import annotations

import dataclasses

import pytest

from troop_common.evidence import TokenEvidence
from troop_common.token_bytes import vocabulary_bytes
from troop_verifier.scoring import FakeScorer

MESSAGES = (("user", "What is the capital of France?"),)


def greedy_with_logprobs(scorer, steps: int) -> list[TokenEvidence]:
    """Greedy decoding one token at a time with a KV cache, as an engine does."""
    import torch

    model, tokenizer = scorer.hf_model, scorer._tokenizer
    vocabulary = vocabulary_bytes(tokenizer)
    ids = torch.tensor([scorer.prompt_ids(MESSAGES)])
    tokens = []
    with torch.inference_mode():
        out = model(ids, use_cache=True)
        for _ in range(steps):
            logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            token = int(logprobs.argmax())
            tokens.append(TokenEvidence(vocabulary[token], float(logprobs[token]), token))
            out = model(torch.tensor([[token]]), cache=out.cache, use_cache=True)
    return tokens


def test_one_teacher_forced_pass_matches_decoding_step_by_step(scorer) -> None:
    tokens = greedy_with_logprobs(scorer, 12)
    scores = scorer.score(MESSAGES, tokens)
    assert [s.token_id for s in scores] == [t.token_id for t in tokens]
    for token, score in zip(tokens, scores, strict=True):
        assert score.logprob == pytest.approx(token.logprob, abs=1e-3)
        assert score.top_logprob == pytest.approx(score.logprob, abs=1e-6)
        assert score.rank == 0
    assert "Paris" in b"".join(t.token for t in tokens).decode()
    # Bytes only, as an OpenAI-compatible upstream sends them (a special token, which has
    # no bytes, as its text): the same ids and scores.
    spell = scorer._tokenizer.convert_ids_to_tokens
    by_bytes = [
        dataclasses.replace(t, token=t.token or spell(t.token_id).encode(), token_id=None)
        for t in tokens
    ]
    assert scorer.score(MESSAGES, by_bytes) == scores


def test_a_token_the_model_would_not_say_scores_low_with_its_rank(scorer) -> None:
    tokens = greedy_with_logprobs(scorer, 4)
    odd = TokenEvidence(b" banana", -0.1)
    scores = scorer.score(MESSAGES, [*tokens[:2], odd])
    assert scores[2].token_id is not None
    assert scores[2].rank > 100
    assert scores[2].logprob < scores[2].top_logprob - 5


def test_bytes_that_are_no_token_score_as_unknown(scorer) -> None:
    scores = scorer.score(MESSAGES, [TokenEvidence(b"\xff\xfe not a token", -0.1)])
    assert scores[0].token_id is None and scores[0].logprob is None
    assert scorer.score(MESSAGES, []) == []


def test_fake_scorer_knows_the_echo_answer() -> None:
    from troop_common.fake_model import echo_logprob, echo_words

    messages = (("user", "hello there"),)
    words = echo_words(messages)
    assert words == ["You", " said:", " hello", " there"]
    right = [TokenEvidence(w.encode(), echo_logprob(n, w)) for n, w in enumerate(words)]
    scores = FakeScorer().score(messages, right)
    assert [s.logprob for s in scores] == [t.logprob for t in right]
    assert all(s.rank == 0 for s in scores)
    wrong = FakeScorer().score(messages, [TokenEvidence(b"Bye", -0.1)])
    assert wrong[0].logprob == -1000.0 and wrong[0].rank == 1
